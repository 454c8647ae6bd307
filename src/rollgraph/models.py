"""Load a causal LM: a local Hugging Face folder, or a built-in architecture with seeded random weights.

Nothing here reaches a network: a name that is neither a folder nor a built-in fails at once with what to pass.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass

import torch

from rollgraph.architectures import BUILTINS
from rollgraph.config import ModelConfig
from rollgraph.errors import ModelLoadError
from rollgraph.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model"}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class LoadedModel:
    """A transformers model in eval mode on its device, with what the engine needs to know about it."""

    name: str
    model: torch.nn.Module
    tokenizer: Tokenizer | None
    device: torch.device
    dtype: torch.dtype
    random_weights: bool

    @property
    def hf_config(self):
        return self.model.config

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    @property
    def max_position_embeddings(self) -> int:
        return int(getattr(self.model.config.get_text_config(), "max_position_embeddings", 1 << 20))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for, but CUDA is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load `cfg.name` as a local folder or a built-in; raise ModelLoadError saying what to pass otherwise."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if os.path.isdir(cfg.name):
        return _load_folder(cfg, device, dtype)
    if cfg.name in BUILTINS:
        return build_builtin(cfg.name, device, dtype, cfg.seed)
    raise ModelLoadError(
        f"--model {cfg.name!r} is neither a local folder nor a built-in architecture. Pass the path of a folder "
        f"holding a Hugging Face model (config.json and weights), or one of: {', '.join(BUILTINS)}. "
        "Nothing is downloaded: hub ids are not fetched.",
        code="model_load",
    )


def build_builtin(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LoadedModel:
    """Build a built-in architecture directly on `device` in `dtype`, its weights drawn from a seeded generator."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = BUILTINS[name]
    hf_cfg = AutoConfig.for_model(spec.model_type, **spec.config)
    start = time.perf_counter()
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    model.eval().requires_grad_(False)
    n = sum(p.numel() for p in model.parameters())
    logger.warning(
        "model %s: RANDOM weights (built-in architecture, seed %d), %.4g M parameters, %s on %s, built in %.1f s",
        name,
        seed,
        n / 1e6,
        str(dtype).removeprefix("torch."),
        device,
        time.perf_counter() - start,
    )
    return LoadedModel(name, model, ByteTokenizer(hf_cfg.vocab_size), device, dtype, random_weights=True)


def _load_folder(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    if not os.path.isfile(os.path.join(cfg.name, "config.json")):
        raise ModelLoadError(f"folder {cfg.name!r} has no config.json: pass a Hugging Face model folder")
    # With accelerate installed, weights go straight to the GPU; without it they pass through host memory.
    direct = device.type == "cuda" and importlib.util.find_spec("accelerate") is not None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.name,
            dtype=dtype,
            device_map=str(device) if direct else None,
            trust_remote_code=cfg.trust_remote_code,
            local_files_only=True,
        )
        model.to(device)
    except (OSError, ValueError) as exc:
        hint = "" if cfg.trust_remote_code else " If the folder ships its own model code, add --trust-remote-code."
        raise ModelLoadError(f"could not load a causal LM from folder {cfg.name!r}: {exc}.{hint}") from exc
    model.eval().requires_grad_(False)
    tokenizer = _load_tokenizer(cfg)
    logger.info(
        "model %s: loaded from folder in %.1f s (%s on %s, tokenizer: %s)",
        cfg.name,
        time.perf_counter() - start,
        str(dtype).removeprefix("torch."),
        device,
        "yes" if tokenizer else "none, token ids only",
    )
    return LoadedModel(cfg.name, model, tokenizer, device, dtype, random_weights=False)


def _load_tokenizer(cfg: ModelConfig) -> Tokenizer | None:
    """The folder's tokenizer, or None: a model without one still serves token ids."""
    from transformers import AutoTokenizer

    files = set(os.listdir(cfg.name))
    if not files & TOKENIZER_FILES:
        logger.info("no tokenizer files in %s: serving token ids only", cfg.name)
        return None
    try:
        tok = AutoTokenizer.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        logger.info("no usable tokenizer in %s (%s): serving token ids only", cfg.name, exc)
        return None
    return HFTokenizer(tok)
