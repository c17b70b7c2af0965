"""What a model provider hands the runner: text tokens, tool calls, and a final report."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

from app.domain.events import Usage


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """The inputs of one generation, as recorded in its ``created`` event."""

    request_id: str
    mode: str
    prompt: str
    context: dict[str, Any]
    model: str


class Token(msgspec.Struct, frozen=True):
    """A piece of model text as the model streamed it."""

    text: str


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A complete tool call the model made."""

    name: str
    arguments: dict[str, Any]


class Finished(msgspec.Struct, frozen=True, kw_only=True):
    """The model's closing report."""

    usage: Usage
    finish_reason: str = "stop"


ModelOutput = Token | ToolCall | Finished


class ProviderError(Exception):
    """A provider failure, mapped to a terminal ``error`` event."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class Provider(Protocol):
    """A source of model output for a job."""

    name: str

    def stream(self, job: Job) -> AsyncIterator[ModelOutput]:
        """Model output for ``job``, token by token, ending with ``Finished``."""
        ...

    async def aclose(self) -> None:
        """Release connections held for the provider."""
        ...
