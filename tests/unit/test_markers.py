"""The incremental marker parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.events import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    Payload,
    ResponseChunk,
)
from app.domain.markers import MarkerLimits, MarkerParser, ParseBudgetExceeded

PAGE = (
    "Intro text.\n"
    "/// START HeroSection position=0\n"
    "<h1>Hi</h1>\n"
    "/// END HeroSection\n"
    "between\n"
    "/// START Pricing position=plans\n"
    "<p>9 €</p>\n"
    "/// END Pricing\n"
    "Outro"
)


def parse(chunks: list[str], limits: MarkerLimits | None = None) -> list[Payload]:
    parser = MarkerParser(limits or MarkerLimits())
    out: list[Payload] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    out.extend(parser.finish())
    return out


def normalized(events: list[Payload]) -> list[Payload]:
    """Adjacent deltas merged: the form that does not depend on chunking."""
    out: list[Payload] = []
    for e in events:
        last = out[-1] if out else None
        if isinstance(e, ResponseChunk) and isinstance(last, ResponseChunk):
            out[-1] = ResponseChunk(delta=last.delta + e.delta)
        elif (
            isinstance(e, ContentBlockDelta)
            and isinstance(last, ContentBlockDelta)
            and last.index == e.index
        ):
            out[-1] = ContentBlockDelta(index=e.index, delta=last.delta + e.delta)
        else:
            out.append(e)
    return out


def test_page_in_one_chunk() -> None:
    assert parse([PAGE]) == [
        ResponseChunk(delta="Intro text.\n"),
        ContentBlockStart(index=0, name="HeroSection", position="0"),
        ContentBlockDelta(index=0, delta="<h1>Hi</h1>\n"),
        ContentBlockStop(index=0, size=12),
        ResponseChunk(delta="between\n"),
        ContentBlockStart(index=1, name="Pricing", position="plans"),
        ContentBlockDelta(index=1, delta="<p>9 €</p>\n"),
        ContentBlockStop(index=1, size=11),
        ResponseChunk(delta="Outro"),
    ]


def test_every_two_way_split_gives_the_same_events() -> None:
    whole = parse([PAGE])
    for cut in range(len(PAGE) + 1):
        assert normalized(parse([PAGE[:cut], PAGE[cut:]])) == whole, cut


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(PAGE)), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [PAGE[a:b] for a, b in zip([0, *points], [*points, len(PAGE)], strict=True)]
    assert normalized(parse(chunks)) == parse([PAGE])


def test_text_that_cannot_be_a_marker_streams_at_once() -> None:
    parser = MarkerParser()
    assert parser.feed("Hello wor") == [ResponseChunk(delta="Hello wor")]
    assert parser.feed("//") == []  # might become a marker: held back
    assert parser.feed("/ START A\n") == [ContentBlockStart(index=0, name="A", position="0")]


def test_nested_blocks_carry_their_parent() -> None:
    events = parse(["/// START Outer\n/// START Inner\nx\n/// END Inner\n/// END Outer\n"])
    starts = [e for e in events if isinstance(e, ContentBlockStart)]
    assert [(s.index, s.parent) for s in starts] == [(0, None), (1, 0)]


def test_malformed_markers_are_kept_as_text_and_counted() -> None:
    parser = MarkerParser()
    events = parser.feed("/// START lowercase\n/// END Nothing\n")
    assert events == [ResponseChunk(delta="/// START lowercase\n/// END Nothing\n")]
    assert len(parser.errors) == 2


def test_error_budget_ends_the_parse() -> None:
    with pytest.raises(ParseBudgetExceeded):
        parse(["/// END X\n" * 4], MarkerLimits(error_budget=3))


def test_unclosed_block_is_rejected_at_the_end() -> None:
    events = parse(["/// START Hero\n<p>cut off"])
    assert events[-1] == ContentBlockStop(
        index=0, size=10, status="rejected", reason="the component was not closed by an END marker"
    )


def test_component_size_limit_truncates() -> None:
    events = parse(
        ["/// START A\n" + "x" * 50 + "\n/// END A\n"], MarkerLimits(max_component_chars=8)
    )
    assert events[-1] == ContentBlockStop(
        index=0, size=8, status="rejected", reason="the component is longer than 8 characters"
    )
    assert "".join(e.delta for e in events if isinstance(e, ContentBlockDelta)) == "x" * 8
