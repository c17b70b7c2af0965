"""Event payloads, the codec, the client envelope and upcasters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from app.domain import events as ev
from app.domain.events import (
    PAYLOAD_TYPES,
    StoredEvent,
    UpcasterRegistry,
    decode_payload,
    encode_payload,
    envelope_json,
    event_type,
    format_at,
    status_after,
)

SAMPLES: list[ev.Payload] = [
    ev.Created(mode="generate", prompt="p", track_id="t1", context={"a": [1]}, model="m"),
    ev.Stage(stage="generating", progress=10, message="m"),
    ev.Status(status="queued", queue_position=3),
    ev.ResponseChunk(delta="hé\n", tokens=4),
    ev.ContentBlockStart(index=0, name="Hero", position="0", parent=None),
    ev.ContentBlockDelta(index=0, delta="<div>"),
    ev.ContentBlockStop(index=0, size=5, status="rejected", reason="script"),
    ev.Action(action="set_field", element_id="Hero-1_custom_title", field="title", value="v"),
    ev.CancelRequested(by="u"),
    ev.Complete(content="c", components=[], usage=ev.Usage(total_tokens=3), elapsed_ms=5),
    ev.Error(code="timeout", message="m", retryable=True),
    ev.Cancelled(reason="r"),
]


def test_every_type_has_a_sample() -> None:
    assert {event_type(p) for p in SAMPLES} == set(PAYLOAD_TYPES)


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: event_type(p))
def test_codec_round_trip_without_the_tag(payload: ev.Payload) -> None:
    data = encode_payload(payload)
    assert b'"type"' not in data
    assert decode_payload(event_type(payload), data) == payload


def test_fields_are_always_present_except_in_actions() -> None:
    assert msgspec.json.decode(encode_payload(ev.ResponseChunk(delta="x"))) == {
        "delta": "x",
        "index": None,
        "tokens": 0,
    }
    assert msgspec.json.decode(encode_payload(ev.Action(action="noop"))) == {"action": "noop"}


def test_envelope_is_spliced_byte_for_byte() -> None:
    event = StoredEvent(
        id=9,
        request_id="r1",
        seq=3,
        type="stage",
        at=datetime(2026, 11, 21, 3, 4, 5, 6, tzinfo=UTC),
        data=b'{"stage":"generating","progress":10,"message":""}',
    )
    assert envelope_json(event) == (
        b'{"request_id":"r1","seq":3,"type":"stage","at":"2026-11-21T03:04:05.000006Z",'
        b'"stage":"generating","progress":10,"message":""}'
    )
    empty = msgspec.structs.replace(event, data=b"{}")
    assert envelope_json(empty).endswith(b'"at":"2026-11-21T03:04:05.000006Z"}')


def test_timestamps_are_sent_in_utc_whatever_zone_they_were_read_in() -> None:
    # format_at remembers recent answers: equal instants share one, equal wall clocks in
    # different zones must not, and one microsecond on is another.
    noon = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert format_at(noon) == "2026-11-21T12:00:00.000000Z"
    noon_east = noon.replace(tzinfo=timezone(timedelta(hours=2)))
    assert format_at(noon_east) == "2026-11-21T10:00:00.000000Z"
    at = datetime(2026, 11, 21, 23, 59, 59, 999_999, tzinfo=UTC)
    east = at.astimezone(timezone(timedelta(hours=2)))
    assert format_at(east) == format_at(at) == "2026-11-21T23:59:59.999999Z"
    assert format_at(east + timedelta(microseconds=1)) == "2026-11-22T00:00:00.000000Z"


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ev.UnknownEventType):
        decode_payload("mystery", b"{}")


def test_status_transitions() -> None:
    assert status_after(SAMPLES[0]) == "queued"
    assert status_after(ev.Status(status="running")) == "running"
    assert status_after(ev.Status(status="queued")) is None
    assert status_after(SAMPLES[9]) == "completed"
    assert status_after(SAMPLES[10]) == "failed"
    assert status_after(SAMPLES[11]) == "cancelled"
    assert status_after(SAMPLES[1]) is None


def stage_v3_registry() -> UpcasterRegistry:
    """A registry in which ``stage`` went v1 -> v2 (percent renamed) -> v3 (message added)."""
    registry = UpcasterRegistry({**ev.CURRENT_VERSION, "stage": 3})

    @registry.register("stage", 1)
    def rename_percent(fields: dict[str, object]) -> dict[str, object]:
        fields = dict(fields)
        fields["progress"] = fields.pop("percent")
        return fields

    @registry.register("stage", 2)
    def add_message(fields: dict[str, object]) -> dict[str, object]:
        return {**fields, "message": fields.get("message", "")}

    return registry


def test_upcasters_chain_from_a_stored_v1_payload() -> None:
    registry = stage_v3_registry()
    stored_v1 = b'{"stage":"generating","percent":40}'
    upcast = registry.upcast("stage", 1, stored_v1)
    assert decode_payload("stage", upcast) == ev.Stage(stage="generating", progress=40)


def test_current_payloads_pass_through_unchanged() -> None:
    registry = stage_v3_registry()
    data = b'{"stage":"x","progress":1,"message":""}'
    assert registry.upcast("stage", 3, data) is data


def test_missing_or_future_versions_fail_loudly() -> None:
    registry = UpcasterRegistry({"stage": 3})
    with pytest.raises(ValueError, match="no upcaster"):
        registry.upcast("stage", 1, b"{}")
    with pytest.raises(ValueError, match="newer"):
        registry.upcast("stage", 4, b"{}")
