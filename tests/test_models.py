import pytest
import torch

from rollgraph.config import ModelConfig
from rollgraph.errors import ModelLoadError
from rollgraph.models import load_model
from rollgraph.tokenizer import ByteTokenizer


def test_folder_loads_with_tokenizer(llama_dir):
    m = load_model(ModelConfig(llama_dir))
    assert type(m.model).__name__ == "LlamaForCausalLM"
    assert m.dtype == torch.float32 and not m.random_weights
    assert m.tokenizer is not None
    assert m.tokenizer.encode("hello world") == [203, 204]
    assert m.vocab_size == 300 and m.max_position_embeddings == 512


def test_folder_without_tokenizer_serves_ids(qwen2_dir):
    m = load_model(ModelConfig(qwen2_dir))
    assert type(m.model).__name__ == "Qwen2ForCausalLM"
    assert m.tokenizer is None


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.2-1B", "/no/such/folder", "llama-huge"])
def test_unknown_model_says_what_to_pass(name):
    with pytest.raises(ModelLoadError) as e:
        load_model(ModelConfig(name))
    assert "built-in" in str(e.value) and "llama-tiny" in str(e.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(ModelConfig(str(tmp_path)))


def test_builtin_is_seeded_and_says_random(caplog):
    a = load_model(ModelConfig("llama-tiny"))
    b = load_model(ModelConfig("llama-tiny"))
    c = load_model(ModelConfig("llama-tiny", seed=1))
    wa, wb, wc = (m.model.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.random_weights and "RANDOM weights" in caplog.text


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer(320)
    ids = tok.encode("héllo")
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]) == "héllo"
    assert tok.decode([300, 3 + ord("a")]) == "<|300|>a"


def test_bad_dtype_rejected():
    with pytest.raises(ValueError, match="dtype must be one of"):
        ModelConfig("llama-tiny", dtype="int8")
