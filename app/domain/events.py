"""Event payloads, the stored-event value, the JSON codec and payload upcasters.

Payloads are frozen msgspec Structs forming one tagged union on ``type``. A payload is
stored as JSON *without* its tag (the tag lives in the ``type`` column) and with a schema
version ``v``; old versions are brought up to date on read by pure upcasters keyed by
``(type, v)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

import msgspec

Mode: TypeAlias = Literal["generate", "edit", "chat", "field"]
MODES: tuple[str, ...] = ("generate", "edit", "chat", "field")

RequestStatus: TypeAlias = Literal["queued", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "running"})


class Payload(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event payload; the tag is the event ``type``."""


class Created(Payload, frozen=True, tag="created"):
    """First event of every request: carries all of its inputs."""

    mode: Mode
    prompt: str
    track_id: str | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    model: str = ""
    parent_request_id: str | None = None
    """The request this one regenerates, if any."""
    user_id: str | None = None
    """Who asked: with it the ``requests`` row can be rebuilt from the log alone."""
    idempotency_key: str | None = None
    """The client's Idempotency-Key, if it sent one."""


class Stage(Payload, frozen=True, tag="stage"):
    """A coarse step of the generation with its progress in percent."""

    stage: str
    progress: int
    message: str = ""


class Status(Payload, frozen=True, tag="status"):
    """A lifecycle status change (queued, running) with an optional queue position."""

    status: str
    message: str = ""
    queue_position: int | None = None


class ResponseChunk(Payload, frozen=True, tag="response_chunk"):
    """Text outside components; ``tokens`` counts model tokens so far."""

    delta: str
    index: int | None = None
    tokens: int = 0


class ContentBlockStart(Payload, frozen=True, tag="content_block_start"):
    """A component opens."""

    index: int
    name: str
    position: str
    parent: int | None = None


class ContentBlockDelta(Payload, frozen=True, tag="content_block_delta"):
    """More source text of an open component."""

    index: int
    delta: str


class ContentBlockStop(Payload, frozen=True, tag="content_block_stop"):
    """A component closes: ``ok``, or ``rejected`` with a reason."""

    index: int
    size: int
    status: Literal["ok", "rejected"] = "ok"
    reason: str | None = None


class Action(Payload, frozen=True, tag="action", omit_defaults=True):
    """Something for the client to apply, e.g. ``set_field``; fields depend on the action."""

    action: str
    element_id: str | None = None
    field: str | None = None
    value: str | None = None
    index: int | None = None
    name: str | None = None
    content: str | None = None
    position: str | None = None
    after_index: int | None = None


class CancelRequested(Payload, frozen=True, tag="cancel_requested"):
    """Someone asked to cancel; the ``cancelled`` event follows."""

    by: str


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts reported by (or estimated for) the model."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ComponentSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One component of a finished page, as listed in ``complete``."""

    index: int
    name: str
    position: str
    status: str
    size: int
    parent: int | None = None


class Complete(Payload, frozen=True, tag="complete"):
    """Terminal: the generation succeeded."""

    content: str
    components: list[ComponentSummary] = msgspec.field(default_factory=list)
    output: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str = ""
    elapsed_ms: int = 0
    finish_reason: str = "stop"


class Error(Payload, frozen=True, tag="error"):
    """Terminal: the generation failed."""

    code: str
    message: str
    retryable: bool = False


class Cancelled(Payload, frozen=True, tag="cancelled"):
    """Terminal: the generation was cancelled."""

    reason: str = ""


AnyPayload: TypeAlias = (
    Created
    | Stage
    | Status
    | ResponseChunk
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | Action
    | CancelRequested
    | Complete
    | Error
    | Cancelled
)

PAYLOAD_TYPES: Mapping[str, type[Payload]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Created,
        Stage,
        Status,
        ResponseChunk,
        ContentBlockStart,
        ContentBlockDelta,
        ContentBlockStop,
        Action,
        CancelRequested,
        Complete,
        Error,
        Cancelled,
    )
}
TERMINAL_TYPES: frozenset[str] = frozenset({"complete", "error", "cancelled"})

# The current schema version of every payload type. Bump a type's entry and register an
# upcaster from the previous version whenever its stored shape changes.
CURRENT_VERSION: Mapping[str, int] = dict.fromkeys(PAYLOAD_TYPES, 1)


def event_type(payload: Payload) -> str:
    """The ``type`` tag of a payload."""
    tag = payload.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def is_terminal(payload: Payload) -> bool:
    """Whether this payload ends its request's stream."""
    return event_type(payload) in TERMINAL_TYPES


def status_after(payload: Payload) -> RequestStatus | None:
    """The request status a payload moves its request to, if it changes it."""
    match payload:
        case Created():
            return "queued"
        case Status(status="running"):
            return "running"
        case Complete():
            return "completed"
        case Error():
            return "failed"
        case Cancelled():
            return "cancelled"
    return None


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One committed row of the log, its payload already upcast to the current version."""

    id: int
    """Global position in the log (monotonic across requests)."""
    request_id: str
    """The request (stream) this event belongs to."""
    seq: int
    """1-based, dense position within the request."""
    type: str
    """The payload's tag."""
    at: datetime
    """Commit-side timestamp, UTC, microsecond precision."""
    data: bytes
    """The payload as JSON, without its tag, at the current schema version."""

    def payload(self) -> AnyPayload:
        """Decode the payload into its Struct."""
        return decode_payload(self.type, self.data)

    @property
    def terminal(self) -> bool:
        """Whether this event ends the stream."""
        return self.type in TERMINAL_TYPES


# --- codec --------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(cls) for name, cls in PAYLOAD_TYPES.items()
}


def encode_payload(payload: Payload) -> bytes:
    """The payload's fields as JSON, without its ``type`` tag (that is stored apart)."""
    raw = _encoder.encode(payload)
    # The tag is always the first key msgspec writes: {"type":"<tag>",...}.
    prefix_len = len(b'{"type":"') + len(event_type(payload)) + 1
    rest = raw[prefix_len:]
    return b"{" + rest[1:] if rest.startswith(b",") else b"{}"


def decode_payload(type_: str, data: bytes) -> AnyPayload:
    """Decode current-version payload JSON of the given type."""
    decoder = _decoders.get(type_)
    if decoder is None:
        raise UnknownEventType(type_)
    result: AnyPayload = decoder.decode(data)
    return result


def format_at(at: datetime) -> str:
    """RFC 3339 UTC timestamp with microseconds, as sent to clients."""
    return _format_utc(at.astimezone(UTC))


@functools.lru_cache(maxsize=64)
def _format_utc(at: datetime) -> str:
    # Remembers its last few answers: the events of one group commit share their
    # timestamp, so a commit's envelopes format it once. Keyed on the UTC time, where
    # equal means the same string (equal local times can differ in zone or fold).
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope_json(event: StoredEvent) -> bytes:
    """The JSON clients receive: ``request_id``, ``seq``, ``type``, ``at``, then the payload.

    Built by splicing the stored payload JSON, so an event is never decoded and
    re-encoded on its way to a client.
    """
    head = (
        f'{{"request_id":"{event.request_id}","seq":{event.seq},'
        f'"type":"{event.type}","at":"{format_at(event.at)}"'
    ).encode()
    body = event.data
    if body == b"{}":
        return head + b"}"
    return head + b"," + body[1:]


class UnknownEventType(ValueError):
    """A stored event has a type this build does not know."""


# --- upcasters ----------------------------------------------------------------------------

Upcaster: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]


class UpcasterRegistry:
    """Pure functions that lift a stored payload from version ``v`` to ``v + 1``."""

    def __init__(self, current: Mapping[str, int]) -> None:
        self._current = dict(current)
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register the step from ``from_version`` to ``from_version + 1``."""

        def add(fn: Upcaster) -> Upcaster:
            self._steps[(type_, from_version)] = fn
            return fn

        return add

    def current_version(self, type_: str) -> int:
        """The version this build writes for ``type_``."""
        try:
            return self._current[type_]
        except KeyError:
            raise UnknownEventType(type_) from None

    def upcast(self, type_: str, v: int, data: bytes) -> bytes:
        """Payload JSON at the current version; unchanged bytes when already current."""
        target = self.current_version(type_)
        if v == target:
            return data
        if v > target:
            raise ValueError(f"{type_} payload v{v} is newer than this build (v{target})")
        fields: dict[str, Any] = msgspec.json.decode(data)
        for step in range(v, target):
            fn = self._steps.get((type_, step))
            if fn is None:
                raise ValueError(f"no upcaster for {type_} v{step} -> v{step + 1}")
            fields = fn(fields)
        return _encoder.encode(fields)


UPCASTERS = UpcasterRegistry(CURRENT_VERSION)


def utcnow() -> datetime:
    """The current time in UTC (the one clock the log uses)."""
    return datetime.now(UTC)
