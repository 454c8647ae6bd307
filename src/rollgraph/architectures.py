"""Built-in architectures: the real shapes of well-known models, for machines that have no weights.

Each entry is a transformers config; `models.build_builtin` makes the model with seeded random weights.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Builtin:
    """A named architecture: its transformers model_type, config fields and what it is for."""

    model_type: str
    config: dict
    note: str


_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

BUILTINS: dict[str, Builtin] = {
    "llama-tiny": Builtin(
        "llama",
        dict(
            vocab_size=320,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
        ),
        "tiny Llama for CPU tests",
    ),
    "qwen2-tiny": Builtin(
        "qwen2",
        dict(
            vocab_size=320,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True,
        ),
        "tiny Qwen2 (QKV bias, tied embeddings) for CPU tests",
    ),
    "llama-3.2-1b": Builtin(
        "llama",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_parameters=_LLAMA3_ROPE,
            tie_word_embeddings=True,
        ),
        "Llama 3.2 1B shape (GQA, llama3 RoPE, tied embeddings)",
    ),
    "llama-2-7b": Builtin(
        "llama",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
        ),
        "Llama 2 7B shape (multi-head attention)",
    ),
    "qwen2-0.5b": Builtin(
        "qwen2",
        dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True,
        ),
        "Qwen2 0.5B shape (QKV bias, GQA, tied embeddings)",
    ),
    "mistral-7b": Builtin(
        "mistral",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=32768,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
            sliding_window=None,
        ),
        "Mistral 7B v0.2+ shape (GQA, no sliding window)",
    ),
}


def param_count(b: Builtin) -> int:
    """Parameters of a built-in architecture, computed from its shape (no model is built)."""
    c = b.config
    h, inter, layers, vocab = (
        c["hidden_size"],
        c["intermediate_size"],
        c["num_hidden_layers"],
        c["vocab_size"],
    )
    head_dim = c.get("head_dim", h // c["num_attention_heads"])
    q = c["num_attention_heads"] * head_dim
    kv = c["num_key_value_heads"] * head_dim
    attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if b.model_type == "qwen2" else 0)
    per_layer = attn + 3 * h * inter + 2 * h
    embed = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return layers * per_layer + embed + h
