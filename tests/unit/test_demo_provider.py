"""The embedded demo model: deterministic, and shaped like the real thing per mode."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from app.domain.events import ContentBlockStart, ContentBlockStop
from app.domain.markers import MarkerParser
from app.generation.providers.base import Finished, Job, Token, ToolCall
from app.generation.providers.demo import DemoProvider

pytestmark = pytest.mark.anyio


def job(mode: str, prompt: str, **context: object) -> Job:
    return Job(request_id="r", mode=mode, prompt=prompt, context=dict(context), model="demo")


async def run(j: Job) -> tuple[str, list[object]]:
    text, others = [], []
    async for out in DemoProvider(token_delay_ms=0).stream(j):
        if isinstance(out, Token):
            text.append(out.text)
        else:
            others.append(out)
    return "".join(text), others


@pytest.mark.parametrize("prompt", ["a bakery in Lisbon", "bike repair", "x", "Ünïcode café"])
async def test_generate_is_a_page_of_three_to_six_components(prompt: str) -> None:
    text, others = await run(job("generate", prompt))
    parser = MarkerParser()
    events = parser.feed(text) + parser.finish()
    starts = [e for e in events if isinstance(e, ContentBlockStart)]
    stops = [e for e in events if isinstance(e, ContentBlockStop)]
    top_level = [s for s in starts if s.parent is None]
    assert 3 <= len(top_level) <= 6 and parser.errors == []
    # The feature grid always nests its cards.
    (grid,) = [s for s in starts if s.name == "FeatureGrid"]
    assert [s.name for s in starts if s.parent == grid.index] == ["FeatureCard"] * 3
    assert all(s.status == "ok" for s in stops) and len(stops) == len(starts)
    assert isinstance(others[-1], Finished)


async def test_same_prompt_same_output_other_prompt_other_output() -> None:
    a, _ = await run(job("generate", "a bakery in Lisbon"))
    b, _ = await run(job("generate", "a bakery in Lisbon"))
    c, _ = await run(job("generate", "a tattoo studio"))
    assert a == b and a != c


async def test_field_and_chat_and_edit() -> None:
    value, _ = await run(job("field", "title", element_id="Hero-1_custom_title", field="title"))
    assert value.strip() and "///" not in value
    chat, _ = await run(job("chat", "how do I write a headline?"))
    assert chat.strip() and "///" not in chat
    page = {"components": [{"index": 0, "name": "Hero", "content": "<h1>x</h1>"}]}
    _, calls = await run(job("edit", "make it bold", page=page))
    assert isinstance(calls[0], ToolCall) and calls[0].name == "update_component"


async def test_the_documented_unsafe_prompt_yields_a_rejected_component() -> None:
    text, _ = await run(job("generate", "an unsafe demo page"))
    parser = MarkerParser()
    events = parser.feed(text) + parser.finish()
    rejected = [e for e in events if isinstance(e, ContentBlockStop) and e.status == "rejected"]
    assert len(rejected) == 1
    assert rejected[0].reason is not None and "script injection" in rejected[0].reason


async def test_words_keep_their_schedule_when_the_loop_runs_late() -> None:
    """Word n is due n delays after the start: a stalled loop gets the overdue words at
    once, as from a model server's socket, instead of a full delay after each."""
    delay_s = 0.02
    loop = asyncio.get_running_loop()
    start = loop.time()
    times: list[float] = []
    async for out in DemoProvider(token_delay_ms=delay_s * 1000).stream(job("chat", "hello")):
        if isinstance(out, Token):
            times.append(loop.time())
            if len(times) == 2:
                # The service busy elsewhere, blocking its loop, for ten words' time:
                time.sleep(10 * delay_s)  # noqa: ASYNC251
    assert len(times) > 12
    for n, at in enumerate(times, 1):
        assert at >= start + n * delay_s, "never ahead of the schedule"
    after_stall = [b - a for a, b in itertools.pairwise(times[2:11])]
    assert max(after_stall) < delay_s / 2, "the overdue words come together"
