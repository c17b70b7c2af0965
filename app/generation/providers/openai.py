"""Any OpenAI-compatible Chat Completions server as a provider: streaming, tools, retries.

The only module that imports ``openai``. The client's own retries are off: it would retry
a request whose stream already delivered text, and the user would see that text twice.
Here a failed attempt is retried only while nothing has been yielded yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.parse import urlsplit

import openai
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolUnionParam,
)

from app.domain.events import Usage
from app.generation.prompts import messages_for, tools_for
from app.generation.providers.base import (
    Finished,
    Job,
    ModelOutput,
    ProviderError,
    Token,
    ToolCall,
)

# A server asking us to wait longer than this is not worth waiting for inside one
# generation: the error goes to the user (with the server's delay) instead.
MAX_RETRY_AFTER_S = 30.0
NO_API_KEY = "no-key"


class OpenAIProvider:
    """Streams a job's output from an OpenAI-compatible ``/chat/completions`` endpoint."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        max_retries: int = 2,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self.model = model
        self._max_retries = max(0, max_retries)
        self._backoff_s = max(0.0, retry_backoff_s)
        self._server = _server_of(base_url)
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        # The read timeout bounds every socket read, so a stream that stalls between two
        # chunks fails after read_timeout_s just like a server that never answers.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            # Local servers (llama.cpp, Ollama, vLLM) take no key, but the client insists on
            # one; a server that does check keys answers 401 -> provider_rejected.
            api_key=api_key or NO_API_KEY,
            timeout=openai.Timeout(read_timeout_s, connect=connect_timeout_s),
            max_retries=0,
        )

    async def aclose(self) -> None:
        """Close the HTTP client and its pooled connections."""
        await self._client.close()

    async def stream(self, job: Job) -> AsyncIterator[ModelOutput]:
        """Model output for ``job``; failures before the first output are retried."""
        attempt = 0
        while True:
            emitted = False
            try:
                async with contextlib.aclosing(self._attempt(job)) as outputs:
                    async for output in outputs:
                        emitted = emitted or not isinstance(output, Finished)
                        yield output
                return
            except ProviderError as exc:
                if emitted or not exc.retryable or attempt >= self._max_retries:
                    raise
                retry_after = exc.retry_after_s if isinstance(exc, RateLimited) else None
                delay = retry_delay(attempt, self._backoff_s, retry_after)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(self, job: Job) -> AsyncGenerator[ModelOutput, None]:
        tools, tool_choice = tools_for(job)
        try:
            stream = await self._client.chat.completions.create(
                model=job.model or self.model,
                messages=cast(list[ChatCompletionMessageParam], messages_for(job)),
                stream=True,
                stream_options={"include_usage": True},
                tools=cast(list[ChatCompletionToolUnionParam], tools) if tools else openai.omit,
                tool_choice=(
                    cast(ChatCompletionToolChoiceOptionParam, tool_choice)
                    if tool_choice
                    else openai.omit
                ),
            )
        except openai.OpenAIError as exc:
            raise self._request_failure(exc) from exc
        reply = _Reply()
        try:
            async with stream:
                async for chunk in stream:
                    for text in reply.take(chunk):
                        yield Token(text)
        except openai.OpenAIError as exc:
            raise self._stream_failure(exc) from exc
        except json.JSONDecodeError as exc:
            raise ProviderError(
                "provider_error", f"the model server sent unreadable data: {exc}", retryable=True
            ) from exc
        for call in reply.tool_calls():
            yield call
        if not reply.visible and not reply.calls:
            raise ProviderError(
                "empty_output", "the model ended without writing anything", retryable=True
            )
        yield Finished(usage=reply.usage(), finish_reason=reply.finish_reason or "stop")

    def _request_failure(self, exc: openai.OpenAIError) -> ProviderError:
        """Map a failure to get a response at all."""
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(
                "provider_timeout",
                f"the model server did not answer in time (connect {self._connect_timeout_s:g} s,"
                f" read {self._read_timeout_s:g} s)",
                retryable=True,
            )
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError(
                "provider_unreachable",
                f"cannot connect to the model server at {self._server}",
                retryable=True,
            )
        if isinstance(exc, openai.APIStatusError):
            return _status_failure(exc)
        return ProviderError("provider_error", f"the model request failed: {exc}", retryable=True)

    def _stream_failure(self, exc: openai.OpenAIError) -> ProviderError:
        """Map a failure while the response streams (the connection was already up)."""
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(
                "provider_timeout",
                f"the model stream stalled for more than {self._read_timeout_s:g} s",
                retryable=True,
            )
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError(
                "provider_error", "the model server dropped the stream", retryable=True
            )
        message = exc.message if isinstance(exc, openai.APIError) else str(exc)
        return ProviderError(
            "provider_error", f"the model server reported an error: {message}", retryable=True
        )


def _server_of(base_url: str) -> str:
    """``scheme://host:port`` of ``base_url``: enough to act on, with no credentials or path."""
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def retry_delay(attempt: int, backoff_s: float, retry_after_s: float | None) -> float | None:
    """Seconds to wait before retry ``attempt + 1``: exponential, at least ``Retry-After``.

    None when the server asks for a wait longer than ``MAX_RETRY_AFTER_S``.
    """
    delay = backoff_s * 2.0**attempt
    if retry_after_s is None:
        return delay
    if retry_after_s > MAX_RETRY_AFTER_S:
        return None
    return max(delay, retry_after_s)


class RateLimited(ProviderError):
    """HTTP 429, with the server's ``Retry-After`` when it gave one."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__("rate_limited", message, retryable=True)
        self.retry_after_s = retry_after_s


def _status_failure(exc: openai.APIStatusError) -> ProviderError:
    status = exc.status_code
    detail = exc.message
    if status == 429:
        retry_after = _retry_after_s(exc.response.headers)
        hint = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(f"the model server is rate limiting: {detail}{hint}", retry_after)
    if status == 408:
        return ProviderError(
            "provider_timeout", f"the model server timed out: {detail}", retryable=True
        )
    if status >= 500:
        return ProviderError("provider_error", f"the model server failed: {detail}", retryable=True)
    if status in (401, 403):
        detail += " (check OPENAI_API_KEY)"
    return ProviderError(
        "provider_rejected", f"the model server rejected the request: {detail}", retryable=False
    )


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait: ``retry-after-ms``, or ``Retry-After`` (seconds or date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass
class _PendingCall:
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Reply:
    """One streamed completion, assembled chunk by chunk."""

    visible: bool = False
    calls: dict[int, _PendingCall] = field(default_factory=dict)
    finish_reason: str | None = None
    reported: Usage | None = None
    deltas: int = 0
    _held: str = ""

    def take(self, chunk: ChatCompletionChunk) -> list[str]:
        """Record ``chunk``; the text it lets through."""
        if chunk.usage is not None:
            self.reported = Usage(
                prompt_tokens=chunk.usage.prompt_tokens,
                completion_tokens=chunk.usage.completion_tokens,
                total_tokens=chunk.usage.total_tokens,
            )
        out: list[str] = []
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # we never ask for n > 1
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            # A refusal is the model's answer too; the user should see it.
            text = (delta.content or "") + (delta.refusal or "")
            if text:
                self.deltas += 1
                out.extend(self._let_through(text))
            for piece in delta.tool_calls or ():
                self.deltas += 1
                call = self.calls.setdefault(piece.index, _PendingCall())
                if piece.function is not None:
                    call.name += piece.function.name or ""
                    call.arguments.append(piece.function.arguments or "")
        return out

    def _let_through(self, text: str) -> list[str]:
        # Leading whitespace is held back until real text follows, so that a model that
        # only says "\n" still counts as empty output and can be retried.
        if self.visible:
            return [text]
        self._held += text
        if not self._held.strip():
            return []
        self.visible = True
        held, self._held = self._held, ""
        return [held]

    def tool_calls(self) -> list[ToolCall]:
        """Every tool call, by index; all of them or, if one is malformed, an error."""
        result = []
        for index in sorted(self.calls):
            call = self.calls[index]
            raw = "".join(call.arguments).strip() or "{}"
            try:
                arguments: Any = json.loads(raw)
            except json.JSONDecodeError:
                arguments = None
            if not call.name or not isinstance(arguments, dict):
                raise ProviderError(
                    "malformed_tool_arguments",
                    f"the model called {call.name or 'a tool'!r} with arguments that are not "
                    f"a JSON object: {raw[:200]!r}",
                    retryable=True,
                )
            result.append(ToolCall(name=call.name, arguments=arguments))
        return result

    def usage(self) -> Usage:
        """The server's token counts, or an estimate when it sent none."""
        if self.reported is not None:
            return self.reported
        return Usage(completion_tokens=self.deltas, total_tokens=self.deltas)
