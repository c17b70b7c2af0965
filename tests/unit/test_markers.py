"""The incremental marker parser."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.events import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    Payload,
    ResponseChunk,
    StoredEvent,
    encode_payload,
    event_type,
)
from app.domain.markers import MarkerLimits, MarkerParser, ParseBudgetExceeded, merge_deltas
from app.domain.projections import ComponentView, fold_page

T0 = datetime(2026, 11, 21, tzinfo=UTC)

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


normalized = merge_deltas


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
    assert parser.feed("ld\n//") == [ResponseChunk(delta="ld\n")]  # "//" may become a marker
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


def test_component_size_limit_rejects() -> None:
    events = parse(
        ["/// START A\n" + "x" * 50 + "\n/// END A\n"], MarkerLimits(max_component_chars=8)
    )
    assert events[-1] == ContentBlockStop(
        index=0, size=8, status="rejected", reason="the component is longer than 8 characters"
    )
    assert "".join(e.delta for e in events if isinstance(e, ContentBlockDelta)) == "x" * 8


def test_marker_text_in_the_middle_of_a_line_is_text_however_it_is_split() -> None:
    """Regression: text streamed before a line's end made a later '/// START' in the same
    line look like a marker when it arrived in the next chunk."""
    text = "see foo /// START Hero\n/// END Hero\n"
    whole = parse([text])
    assert normalized(parse(["see foo ", "/// START Hero\n/// END Hero\n"])) == whole
    assert not any(isinstance(e, ContentBlockStart) for e in whole)


def test_component_source_streams_line_by_line() -> None:
    parser = MarkerParser()
    assert parser.feed("/// START A\n<p>half") == [
        ContentBlockStart(index=0, name="A", position="0")
    ]
    assert parser.feed(" done</p>\n<b>") == [ContentBlockDelta(index=0, delta="<p>half done</p>\n")]


@pytest.mark.parametrize(
    "line",
    [
        "<script>alert(1)</script>",
        "< SCRIPT src=x>",
        '<a href="javascript:alert(1)">x</a>',
        '<a href="JavaScript :void(0)">x</a>',
        '<img src=x onerror="steal()">',
        "<button onClick={() => go()}>Go</button>",
        "<div dangerouslySetInnerHTML={{__html: x}} />",
    ],
)
def test_script_injection_stops_the_component_as_rejected(line: str) -> None:
    text = (
        f"/// START Hero\n<h1>ok</h1>\n{line}\nafter\n"
        "/// START Child\nx\n/// END Child\n/// END Hero\ntail\n"
    )
    events = parse([text])
    assert events[:2] == [
        ContentBlockStart(index=0, name="Hero", position="0"),
        ContentBlockDelta(index=0, delta="<h1>ok</h1>\n"),
    ]
    stop = events[2]
    assert isinstance(stop, ContentBlockStop)
    assert stop.status == "rejected" and stop.reason and stop.reason.startswith("script injection")
    # Nothing of the rejected component, nor of its children, follows; the text after does.
    assert events[3:] == [ResponseChunk(delta="tail\n")]


@pytest.mark.parametrize(
    "line",
    ["const one = 1;", "<p>Call us on weekdays</p>", "<p>scripted = false</p>", "<a href='/x'>"],
)
def test_ordinary_source_is_not_mistaken_for_injection(line: str) -> None:
    events = parse([f"/// START Hero\n{line}\n/// END Hero\n"])
    assert events[-1] == ContentBlockStop(index=0, size=len(line) + 1)


# --- folding the events gives back the components exactly ------------------------------

names = st.from_regex(r"[A-Z][A-Za-z0-9]{0,8}", fullmatch=True)
positions = st.from_regex(r"[a-z0-9_-]{1,6}", fullmatch=True)
source_lines = st.text(
    alphabet=st.characters(blacklist_characters="\n\r/<", blacklist_categories=["Cs"]),
    max_size=30,
).map(lambda s: s + "\n")


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> list[dict[str, object]]:
    count = draw(st.integers(min_value=0 if depth else 1, max_value=3 if depth < 2 else 0))
    return [
        {
            "name": draw(names),
            "position": draw(positions),
            "lines": draw(st.lists(source_lines, max_size=4)),
            "children": draw(trees(depth + 1)) if depth < 2 else [],
        }
        for _ in range(count)
    ]


def render(tree: list[dict[str, object]]) -> str:
    out = []
    for node in tree:
        out.append(f"/// START {node['name']} position={node['position']}\n")
        out.extend(node["lines"])  # type: ignore[arg-type]
        out.append(render(node["children"]))  # type: ignore[arg-type]
        out.append(f"/// END {node['name']}\n")
    return "".join(out)


def expected(tree: list[dict[str, object]]) -> list[tuple[object, ...]]:
    nodes = [
        (node["position"], node["name"], "".join(node["lines"]), expected(node["children"]))  # type: ignore[arg-type]
        for node in tree
    ]
    return sorted(nodes, key=lambda n: position_sort_key(str(n[0])))


def position_sort_key(position: str) -> tuple[int, int, str]:
    return (0, int(position), "") if position.isdigit() else (1, 0, position)


def folded(components: list[ComponentView]) -> list[tuple[object, ...]]:
    return [(c.position, c.name, c.content, folded(c.children)) for c in components]


@settings(max_examples=150, deadline=None)
@given(
    trees(), st.lists(st.integers(min_value=0, max_value=2000), max_size=10), st.text(max_size=20)
)
def test_folding_any_chunking_gives_back_the_components(
    tree: list[dict[str, object]], cuts: list[int], prose: str
) -> None:
    prose = prose.replace("/", "")
    text = f"{prose}\n{render(tree)}{prose}"
    points = sorted({c % (len(text) + 1) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    payloads = parse(chunks)
    assert normalized(payloads) == parse([text])
    events = [
        StoredEvent(id=n, request_id="r", seq=n, type=event_type(p), at=T0, data=encode_payload(p))
        for n, p in enumerate(payloads, 1)
    ]
    page = fold_page("r", events)
    assert folded(page.components) == expected(tree)
    assert page.text == f"{prose}\n{prose}"
    assert all(c.status == "ok" for c in page.components)


def test_accepted_text_is_the_input_less_what_was_rejected() -> None:
    parser = MarkerParser()
    clean = "Intro\n/// START A\n<p>a</p>\n/// END A\n"
    unsafe = "/// START B\n<p>ok</p>\n<script>x()</script>\n/// START C\nc\n/// END C\n/// END B\n"
    parser.feed(clean + unsafe + "bye\n")
    parser.finish()
    assert parser.accepted_text == clean + "/// START B\n<p>ok</p>\n/// END B\nbye\n"
    assert "<script" not in parser.accepted_text
