"""Shared fixtures: tiny models saved to temp folders through transformers, so loading is tested for real."""

from __future__ import annotations

import pytest
import torch

TINY = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def _save_tiny(path, model_type: str, with_tokenizer: bool, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **TINY, tie_word_embeddings=model_type == "qwen2")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # norm weights away from their initial ones, as in trained models
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    if with_tokenizer:
        _tiny_tokenizer().save_pretrained(path)
    return path


def _tiny_tokenizer():
    """A word-level tokenizer built in memory: real tokenizer files, no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(200)] + ["hello", "world", "the", "a"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return str(_save_tiny(tmp_path_factory.mktemp("llama"), "llama", with_tokenizer=True))


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return str(_save_tiny(tmp_path_factory.mktemp("qwen2"), "qwen2", with_tokenizer=False, seed=1))


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    """An architecture the native runner does not cover, for the transformers fallback."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(2)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=512)).save_pretrained(path)
    return str(path)
