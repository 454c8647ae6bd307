"""Typed errors shared by the engine, the server and the client; no torch import.

Every error carries a short machine-readable `code` and a message that says what was wrong and what is allowed. The
server turns them into `{"status": "error", "error": message, "code": code}` frames.
"""

from __future__ import annotations

# Codes a client may see. Kept in one place so tests and docs can enumerate them.
ERROR_CODES = (
    "frame_too_large",  # a frame's declared length is over the server's cap; the connection is closed
    "invalid_json",  # the frame's bytes are not UTF-8 JSON
    "invalid_message",  # JSON, but not an object, or a field is missing or of the wrong type
    "unknown_type",  # the "type" field names no message this server knows
    "invalid_value",  # a field has the right type but is out of its allowed range
    "invalid_token",  # a token id is outside [0, vocab_size)
    "too_long",  # prompt + max_new_tokens exceeds the model's maximum length, or a configured cap
    "no_tokenizer",  # a text prompt was sent to a model served without a tokenizer
    "not_ready",  # the server is still loading
    "overloaded",  # too many connections or queued requests
    "timeout",  # a frame was not completed in time
    "forbidden",  # the peer's user id is not in the server's --allow-uid list
    "internal",  # the model step failed; only this request is affected
    "model_load",  # --model names nothing loadable (CLI only)
    "socket_in_use",  # another live server holds the socket path (CLI only)
)


class RollgraphError(Exception):
    """Base class: an error with a `code` from ERROR_CODES and a human-readable message."""

    code = "internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def to_reply(self) -> dict:
        """The error frame the server sends for this error."""
        return {"status": "error", "error": self.message, "code": self.code}


class RequestError(RollgraphError, ValueError):
    """A request was malformed or out of range; nothing ran, and the server keeps serving."""

    code = "invalid_value"


class ModelLoadError(RollgraphError):
    """`--model` names nothing that can be loaded here; the message says what to pass instead."""

    code = "model_load"


class ServerError(RollgraphError):
    """The server answered with an error frame (raised on the client side)."""
