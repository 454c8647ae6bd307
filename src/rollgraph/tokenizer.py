"""Tokenizers behind one small interface: a byte-level one for built-in architectures, and a wrapper for HF ones.

The engine knows nothing about text; only the CLI, the server and the benchmark turn text into ids and back.
"""

from __future__ import annotations

from typing import Protocol


class Tokenizer(Protocol):
    """What rollgraph needs of a tokenizer."""

    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0-2 are <bos>, <eos>, <pad>; byte b is id b + 3.

    Built-in architectures have larger vocabularies than 259; their other ids (a random model makes plenty) decode
    to `<|id|>` so that no output is silently dropped.
    """

    OFFSET = 3

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 256 + self.OFFSET:
            raise ValueError(f"a byte tokenizer needs vocab_size >= 259, got {vocab_size}")
        self.vocab_size = vocab_size
        self.bos_token_id = 0
        self.eos_token_ids = (1,)
        self.pad_token_id = 2

    def encode(self, text: str) -> list[int]:
        return [self.bos_token_id] + [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        out: list[str] = []
        run = bytearray()
        for i in ids:
            if self.OFFSET <= i < 256 + self.OFFSET:
                run.append(i - self.OFFSET)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run.clear()
            if i >= 256 + self.OFFSET:
                out.append(f"<|{i}|>")
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer:
    """A transformers tokenizer; special tokens are added as the model's own tokenizer config says."""

    def __init__(self, tok) -> None:
        self._tok = tok
        self.bos_token_id = tok.bos_token_id
        eos = tok.eos_token_id
        self.eos_token_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)
