"""The embedded demo model: offline, deterministic, and paced like a real one.

It is a canned generator for trying the service without a model server: the same
prompt always yields the same output, derived from a hash of the prompt, streamed word
by word with a configurable delay.

The words keep a schedule, as a model server's tokens do: word ``n`` is due ``n`` delays
after the stream starts, however late the event loop runs. A real model streams at its
own pace over the network, and tokens it sent while the service was busy wait in the
socket and are read together; the demo model likewise yields overdue words at once
rather than sleeping a full delay after each, which would stretch every generation by
the loop's lag times its length and make a loaded service look slower than it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator
from typing import Any

from app.domain.events import Usage
from app.generation.providers.base import Finished, Job, ModelOutput, Token, ToolCall

_WORD = re.compile(r"\S+\s*|\s+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "the",
        "for",
        "of",
        "to",
        "in",
        "on",
        "with",
        "my",
        "our",
        "your",
        "page",
        "site",
        "make",
        "build",
    ]
)

_SECTIONS: list[tuple[str, str]] = [
    (
        "Testimonials",
        '<section className="testimonials">\n'
        "  <blockquote>“{Subject} changed how we work.” <cite>Alex, customer</cite></blockquote>\n"
        "  <blockquote>“The best {w1} we have tried.” <cite>Sam, partner</cite></blockquote>\n"
        "</section>\n",
    ),
    (
        "PricingTable",
        '<section className="pricing">\n'
        "  <h2>Plans</h2>\n"
        '  <div className="plan"><h3>Starter</h3><p>{price} € / month</p></div>\n'
        '  <div className="plan"><h3>Team</h3><p>{price2} € / month</p></div>\n'
        "</section>\n",
    ),
    (
        "FrequentlyAsked",
        '<section className="faq">\n'
        "  <details><summary>What is {subject}?</summary><p>{Tagline}</p></details>\n"
        "  <details><summary>How do I start?</summary><p>Sign up in a minute.</p></details>\n"
        "</section>\n",
    ),
    (
        "Gallery",
        '<section className="gallery">\n'
        "  <figure><figcaption>{W1} in action</figcaption></figure>\n"
        "  <figure><figcaption>{W2}, up close</figcaption></figure>\n"
        "</section>\n",
    ),
]

_TAGLINES = [
    "{Subject}, made simple.",
    "Everything you need for {subject}, in one place.",
    "{Subject} that people remember.",
    "Bring your {subject} to life.",
]


class DemoProvider:
    """Deterministic offline model for every mode."""

    name = "demo"

    def __init__(self, *, token_delay_ms: float = 15.0) -> None:
        self._delay = max(0.0, token_delay_ms) / 1000.0

    async def aclose(self) -> None:
        """Nothing to release: the demo model runs in process."""

    async def stream(self, job: Job) -> AsyncIterator[ModelOutput]:
        """The canned answer for ``job``, word by word."""
        # The generator (2.5 KB of state) is dropped once the answer is composed, rather
        # than held for the whole stream.
        seed = hashlib.sha256(f"{job.mode}\0{job.prompt}".encode()).digest()
        text, calls = compose(job, random.Random(seed))
        pieces = _WORD.findall(text)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, piece in enumerate(pieces, 1):
            wait = start + n * self._delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif n % 16 == 1:
                await asyncio.sleep(0)  # overdue words: still let the loop run now and then
            yield Token(piece)
        for call in calls:
            yield call
        yield Finished(
            usage=Usage(
                prompt_tokens=len(job.prompt.split()),
                completion_tokens=len(pieces),
                total_tokens=len(job.prompt.split()) + len(pieces),
            )
        )


def compose(job: Job, rng: random.Random) -> tuple[str, list[ToolCall]]:
    """The full demo output for a job: text, plus tool calls in edit mode."""
    words = _keywords(job.prompt)
    subject = " ".join(words[:3]) or "your idea"
    fill = _fill(subject, words, rng)
    if job.mode == "generate":
        return _page(subject, fill, rng, unsafe=UNSAFE_WORD in words), []
    if job.mode == "field":
        return _field_value(job.context, subject, fill), []
    if job.mode == "edit":
        return _edit(job.context, job.prompt)
    return _chat(subject, fill, rng), []


def _keywords(prompt: str) -> list[str]:
    words = [w.strip(".,;:!?\"'()").lower() for w in prompt.split()]
    return [w for w in words if w and w not in _STOPWORDS and w.isalnum()]


def _fill(subject: str, words: list[str], rng: random.Random) -> dict[str, str]:
    pool = [*words, "quality", "speed", "care", "craft", "support"]
    w1, w2, w3 = (pool[i % len(pool)] for i in range(3))
    tagline = rng.choice(_TAGLINES).format(subject=subject, Subject=subject.capitalize())
    return {
        "subject": subject,
        "Subject": subject.capitalize(),
        "w1": w1,
        "w2": w2,
        "w3": w3,
        "W1": w1.capitalize(),
        "W2": w2.capitalize(),
        "tagline": tagline,
        "Tagline": tagline,
        "price": str(rng.choice([9, 12, 19, 29])),
        "price2": str(rng.choice([39, 49, 79, 99])),
    }


UNSAFE_WORD = "unsafe"
"""A prompt with this word gets a component carrying a script, which the parser rejects."""


def _features(fill: dict[str, str]) -> str:
    """A section with nested components: the grid, then one card per feature."""
    cards = "".join(
        f"/// START FeatureCard position={n}\n"
        f"<article><h3>{word}</h3><p>{line}</p></article>\n"
        "/// END FeatureCard\n"
        for n, (word, line) in enumerate(
            [
                (fill["W1"], f"Built around {fill['w1']} from the first day."),
                (fill["W2"], f"{fill['W2']} that grows with you."),
                (fill["w3"].capitalize(), f"Clear, honest {fill['w3']}."),
            ]
        )
    )
    return f'<section className="features">\n  <h2>Why {fill["subject"]}</h2>\n{cards}</section>\n'


def _page(subject: str, fill: dict[str, str], rng: random.Random, *, unsafe: bool) -> str:
    middle = rng.sample(_SECTIONS, k=rng.randint(0, 3))
    parts = [f"Here is a page for {subject}.\n\n"]
    hero = (
        '<section className="hero">\n'
        f"  <h1>{fill['Subject']}</h1>\n"
        f"  <p>{fill['tagline']}</p>\n"
        '  <a className="button" href="#contact">Get started</a>\n'
        "</section>\n"
    )
    blocks = [("HeroSection", hero), ("FeatureGrid", _features(fill))]
    blocks += [(name, source.format(**fill)) for name, source in middle]
    if unsafe:
        blocks.append(
            (
                "EmbedWidget",
                '<div className="widget">\n'
                '  <script src="https://widgets.example.com/embed.js"></script>\n'
                "</div>\n",
            )
        )
    blocks.append(
        (
            "ContactFooter",
            '<footer id="contact">\n'
            f"  <p>Questions about {subject}? Write to hello@example.com.</p>\n"
            "</footer>\n",
        )
    )
    for position, (name, source) in enumerate(blocks):
        parts.append(f"/// START {name} position={position}\n{source}/// END {name}\n")
    parts.append(f"\nThe page has {len(blocks)} sections, top to bottom.\n")
    return "".join(parts)


def _chat(subject: str, fill: dict[str, str], rng: random.Random) -> str:
    openers = ["Good question.", "Happy to help.", "Here is a short answer."]
    return (
        f"{rng.choice(openers)} When it comes to {subject}, start with what your visitors "
        f"need most: {fill['w1']}, then {fill['w2']}. {fill['Tagline']} Keep each section "
        f"short, lead with the benefit, and end with one clear call to action.\n"
    )


def _field_value(context: dict[str, Any], subject: str, fill: dict[str, str]) -> str:
    field = str(context.get("field", "text")).lower()
    business = str(context.get("business_description", "")).strip() or subject
    if field in ("title", "headline", "heading", "name"):
        return f"{business.split('.')[0].strip().capitalize()}: {fill['tagline']}"
    if "button" in field or "cta" in field:
        return "Get started today"
    if "subtitle" in field or "tagline" in field:
        return fill["Tagline"]
    return (
        f"{fill['Tagline']} We bring {fill['w1']} and {fill['w2']} to everything we do "
        f"for {business}."
    )


def _edit(context: dict[str, Any], instruction: str) -> tuple[str, list[ToolCall]]:
    page = context.get("page")
    components = page.get("components") if isinstance(page, dict) else None
    first = components[0] if isinstance(components, list) and components else None
    if not isinstance(first, dict):
        return "There is no page in the context to edit; send the page as context.page.\n", []
    content = str(first.get("content", ""))
    note = f"<!-- edited: {instruction.strip()[:80]} -->\n"
    call = ToolCall(
        name="update_component",
        arguments={
            "index": first.get("index", 0),
            "name": first.get("name", "Component"),
            "content": note + content,
        },
    )
    return f"I updated {first.get('name', 'the first component')} as asked.\n", [call]
