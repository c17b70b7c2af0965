"""What the model is told per mode: messages, tool schemas and tool_choice."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from app.domain.events import ContentBlockStart, ContentBlockStop
from app.domain.markers import MarkerParser
from app.generation.prompts import messages_for, page_json, tools_for
from app.generation.providers.base import Job

PAGE = {
    "request_id": "0190d6a0-0000-7000-8000-000000000000",
    "at_seq": 9,
    "components": [
        {
            "index": 0,
            "name": "HeroSection",
            "position": "0",
            "status": "ok",
            "content": '<section className="hero"><h1>Café “Lisboa”</h1></section>\n',
            "children": [],
        }
    ],
    "text": "Here is a page.\n",
}
FIELD_CONTEXT = {
    "element_id": "HeroSection-7_custom_title",
    "field": "title",
    "business_description": "A family bakery in Lisbon, baking since 1952.",
    "current_value": "Welcome",
    "field_type": "heading",
}


def job(mode: str, prompt: str = "do it", **context: Any) -> Job:
    return Job(request_id="r", mode=mode, prompt=prompt, context=context, model="m")


def function_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or []]


def parameters(tools: list[dict[str, Any]] | None, name: str) -> dict[str, Any]:
    (tool,) = [t for t in tools or [] if t["function"]["name"] == name]
    assert tool["type"] == "function"
    schema: dict[str, Any] = tool["function"]["parameters"]
    return schema


@pytest.mark.parametrize(
    ("mode", "context"),
    [("generate", {}), ("chat", {}), ("edit", {"page": PAGE}), ("field", FIELD_CONTEXT)],
)
def test_every_mode_is_one_system_message_then_the_user_message(
    mode: str, context: dict[str, Any]
) -> None:
    messages = messages_for(job(mode, "make it shine", **context))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)
    assert "make it shine" in messages[1]["content"]
    json.dumps(messages)  # the wire shape: plain JSON all the way down


def test_generate_describes_the_marker_grammar_and_the_forbidden_constructs() -> None:
    system = messages_for(job("generate", "a bakery"))[0]["content"]
    assert "/// START ComponentName position=N" in system
    assert "/// END ComponentName" in system
    assert "^[A-Z][A-Za-z0-9]{0,63}$" in system
    assert "^[a-z0-9_-]{1,32}$" in system
    assert "nest" in system.lower()
    for forbidden in ("<script>", "javascript:", "dangerouslySetInnerHTML", "event handler"):
        assert forbidden in system


def test_the_marker_lines_in_the_generate_prompt_parse_as_markers() -> None:
    # The example the model is shown must be one our own parser accepts.
    system = messages_for(job("generate"))[0]["content"]
    example = re.search(r"^/// START.*?^/// END \w+$", system, re.S | re.M)
    assert example is not None
    parser = MarkerParser()
    events = parser.feed(example.group(0).replace("=N", "=0") + "\n") + parser.finish()
    starts = [e for e in events if isinstance(e, ContentBlockStart)]
    stops = [e for e in events if isinstance(e, ContentBlockStop)]
    assert parser.errors == [] and [s.name for s in starts] == ["ComponentName"]
    assert [s.status for s in stops] == ["ok"]


@pytest.mark.parametrize("mode", ["generate", "chat"])
def test_text_modes_offer_no_tools(mode: str) -> None:
    assert tools_for(job(mode)) == (None, None)


def test_edit_shows_the_page_json_and_requires_the_three_edit_tools() -> None:
    j = job("edit", "make the headline shorter", page=PAGE)
    user = messages_for(j)[1]["content"]
    assert page_json(PAGE) in user
    assert json.loads(page_json(PAGE)) == PAGE
    assert "make the headline shorter" in user
    tools, choice = tools_for(j)
    assert function_names(tools) == ["update_component", "insert_component", "remove_component"]
    assert choice == "required"
    update = parameters(tools, "update_component")
    assert update["properties"]["index"]["type"] == "integer"
    assert set(update["required"]) == {"index", "name", "content"}
    insert = parameters(tools, "insert_component")
    assert set(insert["required"]) == {"name", "position", "content"}
    assert insert["properties"]["after_index"]["type"] == "integer"
    assert parameters(tools, "remove_component")["required"] == ["index"]


def test_edit_without_a_page_still_asks_with_an_empty_page() -> None:
    user = messages_for(job("edit", "add a footer"))[1]["content"]
    assert '"components":[]' in user and "add a footer" in user


def test_field_carries_its_context_and_forces_deliver_website_content() -> None:
    j = job("field", "catchier please", **FIELD_CONTEXT)
    system, user = (m["content"] for m in messages_for(j))
    assert "deliver_website_content" in system
    for value in FIELD_CONTEXT.values():
        assert value in user
    tools, choice = tools_for(j)
    assert function_names(tools) == ["deliver_website_content"]
    assert choice == {"type": "function", "function": {"name": "deliver_website_content"}}
    schema = parameters(tools, "deliver_website_content")
    types = {name: spec["type"] for name, spec in schema["properties"].items()}
    assert types == {"elementid": "string", "output": "string"}
    assert set(schema["required"]) == {"elementid", "output"}


def test_field_optional_context_is_left_out_when_absent() -> None:
    context = {k: FIELD_CONTEXT[k] for k in ("element_id", "field", "business_description")}
    user = messages_for(job("field", **context))[1]["content"]
    assert "HeroSection-7_custom_title" in user and "A family bakery" in user
    assert "Current value" not in user and "Field type" not in user
