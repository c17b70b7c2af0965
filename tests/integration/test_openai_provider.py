"""OpenAIProvider, with the real openai client, against a real fake server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

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
from app.generation.providers.openai import (
    MAX_RETRY_AFTER_S,
    NO_API_KEY,
    OpenAIProvider,
    retry_delay,
)
from tests.fakes.openai_server import (
    Completion,
    Failure,
    FakeOpenAIServer,
    Scripted,
    ScriptedToolCall,
    fake_openai_server,
    refused_base_url,
)

pytestmark = pytest.mark.anyio

FIELD_CONTEXT = {
    "element_id": "HeroSection-7_custom_title",
    "field": "title",
    "business_description": "A family bakery in Lisbon.",
}
PAGE = {
    "components": [
        {
            "index": 0,
            "name": "HeroSection",
            "position": "0",
            "status": "ok",
            "content": "<h1>Hi</h1>\n",
            "children": [],
        }
    ],
    "text": "",
}
# Small enough that a stalled stream fails fast, large enough for a loaded CI machine.
STALL_READ_TIMEOUT_S = 0.3

MakeProvider = Callable[..., OpenAIProvider]


def job(mode: str = "chat", prompt: str = "hello", model: str = "", **context: Any) -> Job:
    return Job(request_id="r", mode=mode, prompt=prompt, context=context, model=model)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with fake_openai_server() as fake:
        yield fake


@pytest.fixture
async def make_provider(server: FakeOpenAIServer) -> AsyncIterator[MakeProvider]:
    """Providers pointed at the fake; every one is closed after the test."""
    made: list[OpenAIProvider] = []

    def make(**overrides: Any) -> OpenAIProvider:
        options: dict[str, Any] = {
            "base_url": server.base_url,
            "api_key": "sk-test",
            "model": "fake-model",
            "connect_timeout_s": 2.0,
            "read_timeout_s": 5.0,
            "max_retries": 0,
            "retry_backoff_s": 0.001,
            **overrides,
        }
        provider = OpenAIProvider(**options)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def collect(provider: OpenAIProvider, j: Job) -> list[ModelOutput]:
    return [output async for output in provider.stream(j)]


async def collect_until_error(
    provider: OpenAIProvider, j: Job
) -> tuple[list[ModelOutput], ProviderError]:
    outputs: list[ModelOutput] = []
    with pytest.raises(ProviderError) as caught:
        async for output in provider.stream(j):
            outputs.append(output)
    return outputs, caught.value


def text_of(outputs: list[ModelOutput]) -> list[str]:
    return [o.text for o in outputs if isinstance(o, Token)]


# --- streaming --------------------------------------------------------------------------


async def test_text_streams_token_by_token_in_order_then_finished_with_usage(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(Completion(tokens=["Hel", "lo", ", ", "world", "!\n"], prompt_tokens=21))
    outputs = await collect(make_provider(), job("chat"))
    assert text_of(outputs) == ["Hel", "lo", ", ", "world", "!\n"]
    assert outputs[-1] == Finished(
        usage=Usage(prompt_tokens=21, completion_tokens=5, total_tokens=26), finish_reason="stop"
    )
    assert all(not isinstance(o, Finished) for o in outputs[:-1])


async def test_finish_reason_is_passed_through(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(Completion(tokens=["cut sh"], finish_reason="length"))
    outputs = await collect(make_provider(), job("chat"))
    assert isinstance(outputs[-1], Finished) and outputs[-1].finish_reason == "length"


async def test_leading_whitespace_is_held_until_text_follows(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(Completion(tokens=["\n", " ", "Hi", " there"]))
    outputs = await collect(make_provider(), job("chat"))
    assert text_of(outputs) == ["\n Hi", " there"]


async def test_tool_call_fragments_reassemble_into_one_call(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    arguments = (
        '{"elementid": "HeroSection-7_custom_title", "output": "Fresh bread, \\"daily\\" ✓"}'
    )
    server.script(
        Completion(tool_calls=[ScriptedToolCall("deliver_website_content", arguments, pieces=9)])
    )
    outputs = await collect(make_provider(), job("field", **FIELD_CONTEXT))
    calls = [o for o in outputs if isinstance(o, ToolCall)]
    assert calls == [
        ToolCall(
            name="deliver_website_content",
            arguments={
                "elementid": "HeroSection-7_custom_title",
                "output": 'Fresh bread, "daily" ✓',
            },
        )
    ]
    assert text_of(outputs) == []
    assert isinstance(outputs[-1], Finished) and outputs[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize("interleave", [False, True])
async def test_parallel_tool_calls_each_reassemble_by_index(
    server: FakeOpenAIServer, make_provider: MakeProvider, interleave: bool
) -> None:
    update = '{"index": 0, "name": "HeroSection", "content": "<h1>Bigger</h1>\\n"}'
    insert = '{"name": "ContactFooter", "position": "1", "content": "<footer/>", "after_index": 0}'
    server.script(
        Completion(
            tokens=["Done."],
            tool_calls=[
                ScriptedToolCall("update_component", update, pieces=4),
                ScriptedToolCall("insert_component", insert, pieces=6),
            ],
            interleave=interleave,
        )
    )
    outputs = await collect(make_provider(), job("edit", "bigger title", page=PAGE))
    assert [o for o in outputs if isinstance(o, ToolCall)] == [
        ToolCall(
            name="update_component",
            arguments={"index": 0, "name": "HeroSection", "content": "<h1>Bigger</h1>\n"},
        ),
        ToolCall(
            name="insert_component",
            arguments={
                "name": "ContactFooter",
                "position": "1",
                "content": "<footer/>",
                "after_index": 0,
            },
        ),
    ]
    assert text_of(outputs) == ["Done."]


# --- what is sent -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "context"),
    [("generate", {}), ("chat", {}), ("edit", {"page": PAGE}), ("field", FIELD_CONTEXT)],
)
async def test_request_carries_usage_option_messages_and_the_modes_tools(
    server: FakeOpenAIServer, make_provider: MakeProvider, mode: str, context: dict[str, Any]
) -> None:
    if mode in ("edit", "field"):
        name = "update_component" if mode == "edit" else "deliver_website_content"
        reply: Scripted = Completion(tool_calls=[ScriptedToolCall(name, '{"index": 0}')])
    else:
        reply = Completion(tokens=["ok"])
    server.script(reply)
    j = job(mode, "the prompt", **context)
    await collect(make_provider(), j)
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    body = request.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "fake-model"
    assert body["messages"] == messages_for(j)
    tools, tool_choice = tools_for(j)
    assert body.get("tools") == tools
    assert body.get("tool_choice") == tool_choice
    if mode == "field":
        assert body["tool_choice"]["function"]["name"] == "deliver_website_content"
    if mode == "edit":
        assert body["tool_choice"] == "required"
    if mode in ("generate", "chat"):
        assert "tools" not in body and "tool_choice" not in body


async def test_a_server_without_keys_works_with_an_empty_api_key(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(Completion(tokens=["local"]))
    assert text_of(await collect(make_provider(api_key=""), job())) == ["local"]
    assert server.requests[0].headers["authorization"] == f"Bearer {NO_API_KEY}"


async def test_the_jobs_model_wins_over_the_providers_default(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(Completion(tokens=["a"]), Completion(tokens=["b"]))
    provider = make_provider(model="default-model")
    await collect(provider, job("chat", model="chosen-model"))
    await collect(provider, job("chat", model=""))
    assert [r.body["model"] for r in server.requests] == ["chosen-model", "default-model"]


# --- failures ---------------------------------------------------------------------------

FAILURES: list[tuple[str, Scripted, str, bool]] = [
    ("stall before any text", Completion(tokens=["late"], stall_after=1), "provider_timeout", True),
    ("no response head in time", Completion(tokens=["x"], delay_s=30), "provider_timeout", True),
    ("429", Failure(429, "slow down", {"Retry-After": "7"}), "rate_limited", True),
    ("500", Failure(500, "boom"), "provider_error", True),
    ("503", Failure(503, "overloaded"), "provider_error", True),
    ("400", Failure(400, "bad request"), "provider_rejected", False),
    ("401", Failure(401, "bad key"), "provider_rejected", False),
    ("404", Failure(404, "no such model"), "provider_rejected", False),
    ("dropped mid-body", Completion(tokens=["x"], drop_after=1), "provider_error", True),
    ("error event mid-body", Completion(tokens=["x"], error_after=1), "provider_error", True),
    (
        "tool arguments not JSON",
        Completion(tool_calls=[ScriptedToolCall("update_component", '{"index": 0, "na')]),
        "malformed_tool_arguments",
        True,
    ),
    (
        "tool arguments not an object",
        Completion(tool_calls=[ScriptedToolCall("update_component", "[1, 2]")]),
        "malformed_tool_arguments",
        True,
    ),
    ("nothing at all", Completion(), "empty_output", True),
    ("only whitespace", Completion(tokens=["\n", "  "]), "empty_output", True),
]


@pytest.mark.parametrize(
    ("reply", "code", "retryable"),
    [pytest.param(reply, code, retryable, id=name) for name, reply, code, retryable in FAILURES],
)
async def test_each_failure_has_its_own_code(
    server: FakeOpenAIServer,
    make_provider: MakeProvider,
    reply: Scripted,
    code: str,
    retryable: bool,
) -> None:
    server.script(reply)
    provider = make_provider(read_timeout_s=STALL_READ_TIMEOUT_S)
    outputs, error = await collect_until_error(provider, job("edit", page=PAGE))
    assert (error.code, error.retryable) == (code, retryable)
    assert error.message
    assert outputs == []
    assert len(server.requests) == 1


async def test_rate_limit_message_carries_retry_after(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(Failure(429, "slow down", {"Retry-After": "7"}))
    _, error = await collect_until_error(make_provider(), job())
    assert error.code == "rate_limited"
    assert "slow down" in error.message and "retry after 7 s" in error.message


async def test_a_refused_connection_is_provider_unreachable(make_provider: MakeProvider) -> None:
    with refused_base_url() as url:
        _, error = await collect_until_error(make_provider(base_url=url, max_retries=1), job())
    assert (error.code, error.retryable) == ("provider_unreachable", True)
    assert "127.0.0.1" in error.message


# --- retries ----------------------------------------------------------------------------


async def test_failures_before_the_first_token_are_retried_then_the_answer_streams_once(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(
        Failure(500, "boom"),
        Failure(429, "slow down", {"Retry-After": "0"}),
        Completion(tokens=["never seen"], stall_after=1),
        Completion(),  # empty output
        Completion(tokens=["Hello", " again"]),
    )
    provider = make_provider(max_retries=4, read_timeout_s=STALL_READ_TIMEOUT_S)
    outputs = await collect(provider, job())
    assert text_of(outputs) == ["Hello", " again"]
    assert isinstance(outputs[-1], Finished)
    assert len(server.requests) == 5
    # Every attempt is the same request.
    assert all(r.body == server.requests[0].body for r in server.requests)


async def test_retries_stop_at_max_retries(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(*[Failure(500, "boom")] * 3, Completion(tokens=["too late"]))
    _, error = await collect_until_error(make_provider(max_retries=2), job())
    assert error.code == "provider_error"
    assert len(server.requests) == 3


async def test_a_rejected_request_is_not_retried(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(Failure(400, "bad request"), Completion(tokens=["never"]))
    _, error = await collect_until_error(make_provider(max_retries=2), job())
    assert error.code == "provider_rejected"
    assert len(server.requests) == 1


async def test_a_server_asking_to_wait_too_long_is_not_retried(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(Failure(429, "later", {"Retry-After": "3600"}), Completion(tokens=["never"]))
    _, error = await collect_until_error(make_provider(max_retries=2), job())
    assert error.code == "rate_limited" and "3600" in error.message
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Completion(tokens=["Hello", " wor", "ld"], stall_after=3), "provider_timeout"),
        (Completion(tokens=["Hello", " wor", "ld"], drop_after=3), "provider_error"),
        (Completion(tokens=["Hello", " wor", "ld"], error_after=3), "provider_error"),
        (
            Completion(
                tokens=["Hello", " wor"],
                tool_calls=[ScriptedToolCall("update_component", "{oops")],
            ),
            "malformed_tool_arguments",
        ),
    ],
    ids=["stall", "drop", "error event", "malformed tool call"],
)
async def test_no_retry_once_text_was_yielded(
    server: FakeOpenAIServer, make_provider: MakeProvider, reply: Scripted, code: str
) -> None:
    server.script(reply, Completion(tokens=["Hello", " world"]))
    provider = make_provider(max_retries=3, read_timeout_s=STALL_READ_TIMEOUT_S)
    outputs, error = await collect_until_error(provider, job("edit", page=PAGE))
    assert text_of(outputs) == ["Hello", " wor"]
    assert error.code == code
    assert len(server.requests) == 1


async def test_one_provider_serves_jobs_one_after_another(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(*(Completion(tokens=[f"answer {n}"]) for n in range(3)))
    provider = make_provider()
    answers = [text_of(await collect(provider, job())) for _ in range(3)]
    assert answers == [["answer 0"], ["answer 1"], ["answer 2"]]


def test_retry_delay_is_exponential_and_honours_retry_after() -> None:
    assert [retry_delay(n, 0.5, None) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(0, 0.5, 3.0) == 3.0
    assert retry_delay(3, 0.5, 1.0) == 4.0
    assert retry_delay(0, 0.5, MAX_RETRY_AFTER_S + 1) is None
