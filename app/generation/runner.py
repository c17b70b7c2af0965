"""Runs one request: its stages, its coalesced model output, and exactly one terminal event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import msgspec

from app.domain.events import (
    Action,
    Cancelled,
    Complete,
    ComponentSummary,
    ContentBlockStart,
    ContentBlockStop,
    Created,
    Error,
    Payload,
    ResponseChunk,
    Stage,
    Status,
    Usage,
    event_type,
)
from app.domain.markers import (
    INJECTION_RE,
    NAME_RE,
    MarkerLimits,
    MarkerParser,
    ParseBudgetExceeded,
)
from app.domain.stats import Histogram
from app.generation.coalesce import coalesce
from app.generation.prompts import FIELD_TOOL
from app.generation.providers.base import Finished, Job, Provider, ProviderError, ToolCall
from app.logcontext import request_id_var
from app.store.log import EventLog, StreamClosed
from app.store.queue import Claim

log = logging.getLogger(__name__)

EDIT_ACTIONS = frozenset({"update_component", "insert_component", "remove_component"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerConfig:
    """How the runner paces and bounds a generation."""

    flush_interval_s: float = 0.05
    flush_max_chars: int = 2_048
    timeout_s: float = 300.0
    node: str = "this node"
    marker_limits: MarkerLimits = field(default_factory=MarkerLimits)


@dataclass(slots=True)
class GenerationStats:
    """What the runners did, for metrics."""

    durations_s: Histogram = field(
        default_factory=lambda: Histogram([0.5, 1, 2, 5, 10, 30, 60, 120, 300])
    )
    first_chunk_s: Histogram = field(
        default_factory=lambda: Histogram([0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10])
    )
    endings: dict[str, int] = field(default_factory=dict)
    errors_by_code: dict[str, int] = field(default_factory=dict)


class Runner:
    """Turns a claimed request into events in the log."""

    def __init__(self, event_log: EventLog, provider: Provider, config: RunnerConfig) -> None:
        self._log = event_log
        self._provider = provider
        self._config = config
        self.stats = GenerationStats()

    async def run(self, claim: Claim, *, cancel_reason: dict[str, str]) -> None:
        """Run a claimed request to its terminal event.

        If the task is cancelled, the reason recorded in ``cancel_reason`` decides the
        ending: a user's cancel ends in ``cancelled``; anything else (shutdown) ends in
        ``error{code: interrupted}``.
        """
        request_id = claim.request_id
        request_id_var.set(request_id)
        created = claim.created.payload() if claim.created is not None else None
        if not isinstance(created, Created):
            log.error("request %s has no created event; not running it", request_id)
            return
        job = Job(
            request_id=request_id,
            mode=created.mode,
            prompt=created.prompt,
            context=created.context,
            model=created.model,
        )
        try:
            await self._log.append(
                request_id,
                [
                    Status(status="running", message=f"running on {self._config.node}"),
                    Stage(stage="generating", progress=10, message="the model is writing"),
                ],
            )
        except StreamClosed:
            return  # cancelled while it waited in the queue
        started = time.monotonic()
        log.info("generation started (mode %s)", job.mode)
        try:
            async with asyncio.timeout(self._config.timeout_s):
                ending = await self._generate(job, created, started)
        except asyncio.CancelledError:
            reason = cancel_reason.pop(request_id, None)
            ending = [
                Cancelled(reason=reason)
                if reason is not None
                else Error(
                    code="interrupted",
                    message="the service stopped during the generation; regenerate to retry",
                    retryable=True,
                )
            ]
        except TimeoutError:
            ending = [
                Error(
                    code="timeout",
                    message=f"the generation took longer than {self._config.timeout_s:g} s",
                    retryable=True,
                )
            ]
        except ParseBudgetExceeded as exc:
            ending = [Error(code="parse_error", message=str(exc), retryable=True)]
        except ProviderError as exc:
            ending = [Error(code=exc.code, message=exc.message, retryable=exc.retryable)]
        except StreamClosed:
            return  # another writer (a cancel) already ended it
        except Exception:
            log.exception("generation of %s failed", request_id)
            ending = [
                Error(code="internal", message="the generation failed unexpectedly", retryable=True)
            ]
        with contextlib.suppress(StreamClosed):
            await self._log.append(request_id, ending)
        self._record(ending[-1], time.monotonic() - started)

    def _record(self, ending: Payload, elapsed_s: float) -> None:
        kind = event_type(ending)
        self.stats.durations_s.observe(elapsed_s)
        self.stats.endings[kind] = self.stats.endings.get(kind, 0) + 1
        if isinstance(ending, Error):
            codes = self.stats.errors_by_code
            codes[ending.code] = codes.get(ending.code, 0) + 1
        log.info("generation ended: %s after %.2f s", kind, elapsed_s)

    async def _generate(self, job: Job, created: Created, started: float) -> list[Payload]:
        parser = MarkerParser(self._config.marker_limits) if job.mode == "generate" else None
        text: list[str] = []
        tokens = 0
        usage = Usage()
        finish_reason = "stop"
        actions: list[Payload] = []
        delivered: str | None = None
        components: dict[int, ComponentSummary] = {}
        source = self._provider.stream(job)
        async for flush in coalesce(
            source,
            interval_s=self._config.flush_interval_s,
            max_chars=self._config.flush_max_chars,
        ):
            tokens += flush.tokens
            if flush.text and not text:
                self.stats.first_chunk_s.observe(time.monotonic() - started)
            batch: list[Payload] = []
            if flush.text:
                text.append(flush.text)
                produced: list[Payload] = (
                    parser.feed(flush.text) if parser else [ResponseChunk(delta=flush.text)]
                )
                batch.extend(_with_tokens(produced, tokens))
            for other in flush.others:
                if isinstance(other, Finished):
                    usage, finish_reason = other.usage, other.finish_reason
                elif isinstance(other, ToolCall) and job.mode == "field":
                    if other.name == FIELD_TOOL:
                        delivered = str(other.arguments.get("output") or "")
                elif isinstance(other, ToolCall):
                    actions.extend(_tool_action(job, other))
            _note_components(batch, components)
            if batch:
                await self._log.append(job.request_id, batch)
        if parser is not None and (tail := parser.finish()):
            _note_components(tail, components)
            await self._log.append(job.request_id, _with_tokens(tail, tokens))
        # A generated page's content leaves out what the parser rejected.
        content = parser.accepted_text if parser is not None else "".join(text)
        output: str | None = None
        if job.mode == "field":
            # The tool call's value, or the plain answer of a model that ignored the tool.
            output = (delivered if delivered is not None else content).strip()
            if not output:
                raise ProviderError(
                    "empty_output", "the model returned no value for the field", retryable=True
                )
            actions.append(
                Action(
                    action="set_field",
                    # Always the element the request named, never one the model returned.
                    element_id=str(job.context.get("element_id", "")),
                    field=str(job.context.get("field", "")),
                    value=output,
                )
            )
        elapsed_ms = int((time.monotonic() - started) * 1000)
        return [
            *actions,
            Stage(stage="finalizing", progress=95, message="assembling the result"),
            Complete(
                content=content,
                components=sorted(components.values(), key=lambda c: c.index),
                output=output,
                usage=usage,
                model=created.model,
                elapsed_ms=elapsed_ms,
                finish_reason=finish_reason,
            ),
        ]


def _with_tokens(payloads: list[Payload], tokens: int) -> list[Payload]:
    return [
        ResponseChunk(delta=p.delta, index=p.index, tokens=tokens)
        if isinstance(p, ResponseChunk)
        else p
        for p in payloads
    ]


def _note_components(batch: list[Payload], components: dict[int, ComponentSummary]) -> None:
    for payload in batch:
        if isinstance(payload, ContentBlockStart):
            components[payload.index] = ComponentSummary(
                index=payload.index,
                name=payload.name,
                position=payload.position,
                status="streaming",
                size=0,
                parent=payload.parent,
            )
        elif isinstance(payload, ContentBlockStop) and payload.index in components:
            c = components[payload.index]
            components[payload.index] = msgspec.structs.replace(
                c, status=payload.status, size=payload.size
            )


def _tool_action(job: Job, call: ToolCall) -> list[Payload]:
    if job.mode != "edit" or call.name not in EDIT_ACTIONS:
        return []
    args = call.arguments
    content, name = args.get("content"), args.get("name")
    required = {
        "update_component": ("index", "content"),
        "insert_component": ("name", "content"),
        "remove_component": ("index",),
    }[call.name]
    if missing := [key for key in required if args.get(key) is None]:
        raise ProviderError(
            "malformed_tool_arguments",
            f"the model's {call.name} lacks {', '.join(missing)}",
            retryable=True,
        )
    if isinstance(content, str) and (found := INJECTION_RE.search(content)) is not None:
        raise ProviderError(
            "unsafe_output",
            f"the model's {call.name} carries script injection ({found.group(0)!r})",
            retryable=True,
        )
    if name is not None and (not isinstance(name, str) or NAME_RE.fullmatch(name) is None):
        raise ProviderError(
            "malformed_tool_arguments",
            f"the model's {call.name} names an invalid component {name!r}",
            retryable=True,
        )

    def integer(key: str) -> int | None:
        value = args.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def text(key: str) -> str | None:
        return str(args[key]) if args.get(key) is not None else None

    return [
        Action(
            action=call.name,
            index=integer("index"),
            name=text("name"),
            content=text("content"),
            position=text("position"),
            after_index=integer("after_index"),
        )
    ]
