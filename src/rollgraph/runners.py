"""Pick the runner for a loaded model: rollgraph's native Llama-family runner, or transformers' own forward.

Both offer prefill / decode / full over the same contract (see llama.LlamaRunner). The transformers fallback keeps
its own dynamic cache, so only its cache-free `full` step (the original design's) can be captured in a graph.
"""

from __future__ import annotations

import logging

import torch

from rollgraph import llama
from rollgraph.errors import ModelLoadError
from rollgraph.models import LoadedModel

logger = logging.getLogger(__name__)


def make_runner(
    model: LoadedModel,
    max_batch: int,
    max_seq_len: int,
    runner: str = "auto",
    attention: str = "auto",
    matmul: str = "auto",
):
    """The native runner where the architecture allows (or `runner="native"` demands), else the HF fallback."""
    why_not = llama.supports(model.hf_config, max_seq_len)
    if runner == "hf" or (runner == "auto" and why_not):
        if why_not and runner == "auto":
            logger.warning("native runner unavailable (%s): using transformers' forward; only seed graphs", why_not)
        return HFRunner(model.model, max_seq_len)
    if why_not:
        raise ModelLoadError(f"--runner native cannot run this model: {why_not}; use --runner auto or hf")
    try:
        return llama.LlamaRunner(model.model, max_batch, max_seq_len, attention=attention, matmul=matmul)
    except RuntimeError as exc:  # --attention triton or --matmul triton where it cannot run
        raise ModelLoadError(str(exc)) from None


class HFRunner:
    """transformers' model with its DynamicCache, batch 1; exact-length work, so prefill padding is cropped."""

    graph_phases = frozenset({"full"})
    compilable = False

    def __init__(self, hf_model: torch.nn.Module, max_seq_len: int) -> None:
        from transformers import DynamicCache

        self.model, self.max_seq_len, self.max_batch = hf_model, max_seq_len, 1
        self.vocab_size = hf_model.config.get_text_config().vocab_size
        self._new_cache = lambda: DynamicCache(config=hf_model.config)
        self.cache = None
        self.weight_bytes = sum(p.numel() * p.element_size() for p in hf_model.parameters())

    def prefill(self, tokens: torch.Tensor, start: int, last_index: torch.Tensor, write_kv=None) -> torch.Tensor:
        n = int(last_index[0]) + 1  # exact length: this runner's cache cannot hold padding
        if start == 0:
            self.cache = self._new_cache()
        else:
            self._crop_to(start)
        out = self.model(input_ids=tokens[:, :n], past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float()

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, kv_len: int, write_kv=None) -> torch.Tensor:
        self._crop_to(int(positions[0]))
        out = self.model(input_ids=tokens[:, None], past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float()

    def _crop_to(self, n: int) -> None:
        """Forget cached positions >= n (a negative crop means the same in every transformers 5 release)."""
        extra = self.cache.get_seq_length() - n
        if extra > 0:
            self.cache.crop(-extra)

    def full(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits[:, -1].float()
