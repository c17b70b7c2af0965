"""What a chat model is told per mode: the messages, and the tools it may (or must) call.

Pure: no I/O and no client types. Messages and tools are plain dicts in the Chat
Completions wire shape, so any OpenAI-compatible server takes them as they are.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

from app.domain.markers import NAME_RE, POSITION_RE
from app.generation.providers.base import Job

Message: TypeAlias = dict[str, Any]
Tool: TypeAlias = dict[str, Any]
ToolChoice: TypeAlias = str | dict[str, Any]

FIELD_TOOL = "deliver_website_content"
EDIT_TOOLS = ("update_component", "insert_component", "remove_component")

GENERATE_SYSTEM = f"""\
You build web pages as a sequence of React/JSX components.

Write every component between two marker lines, each marker alone on its own line:

/// START ComponentName position=N
...the component's JSX source...
/// END ComponentName

Rules for markers:
- ComponentName matches ^{NAME_RE.pattern}$ (PascalCase, letters and digits only).
- N is the component's place on the page and matches ^{POSITION_RE.pattern}$: use 0, 1, 2, ...
  top to bottom.
- The END line repeats the name of the START line it closes.
- Components may nest: a START inside an open component opens a child of it; close the
  child before its parent.
- Write nothing outside markers except one or two short sentences of prose before or
  after the components. No Markdown code fences.

Rules for component source:
- Plain JSX markup with className attributes; no imports, no exports.
- Never use <script> tags, inline event handlers (onClick=, onload=, ...), javascript: URLs
  or dangerouslySetInnerHTML. A component containing any of these is rejected.
"""

CHAT_SYSTEM = """\
You are a helpful assistant for people building and editing websites. Answer in plain
text, clearly and briefly. Do not write component markers or code fences unless asked for
code.
"""

EDIT_SYSTEM = f"""\
You edit an existing web page made of components. The user message holds the page as JSON
(components with their index, name, position, status, source content and children) and an
instruction. Carry out the instruction only by calling the tools:
- update_component replaces the whole source of the component with that index;
- insert_component adds a new component at a position, optionally after a given index;
- remove_component deletes the component with that index.
Call as many tools as the instruction needs. Component names match ^{NAME_RE.pattern}$.
Never use <script> tags, inline event handlers, javascript: URLs or
dangerouslySetInnerHTML. You may add one short sentence of text saying what you changed.
"""

FIELD_SYSTEM = f"""\
You write the content of one field of a website in a visual editor. Write it for the
business described, in the language of that description, ready to publish: no quotes
around it, no Markdown, no placeholders. Deliver it by calling {FIELD_TOOL} exactly once,
with the element ID you were given and the text as output.
"""


def messages_for(job: Job) -> list[Message]:
    """The chat messages that ask the model for ``job``'s output."""
    if job.mode == "generate":
        return _pair(GENERATE_SYSTEM, job.prompt)
    if job.mode == "edit":
        return _pair(EDIT_SYSTEM, _edit_request(job))
    if job.mode == "field":
        return _pair(FIELD_SYSTEM, _field_request(job))
    return _pair(CHAT_SYSTEM, job.prompt)


def tools_for(job: Job) -> tuple[list[Tool] | None, ToolChoice | None]:
    """The tools offered for ``job`` and the ``tool_choice``; ``(None, None)`` for text modes."""
    if job.mode == "edit":
        return [UPDATE_COMPONENT, INSERT_COMPONENT, REMOVE_COMPONENT], "required"
    if job.mode == "field":
        return [DELIVER_WEBSITE_CONTENT], {"type": "function", "function": {"name": FIELD_TOOL}}
    return None, None


def page_json(page: object) -> str:
    """The page as it is shown to the model in edit mode."""
    return json.dumps(page, ensure_ascii=False, separators=(",", ":"))


def _pair(system: str, user: str) -> list[Message]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _edit_request(job: Job) -> str:
    page = job.context.get("page")
    shown = page_json(page) if page is not None else '{"components":[],"text":""}'
    return f"The page:\n{shown}\n\nInstruction:\n{job.prompt}"


def _field_request(job: Job) -> str:
    ctx = job.context
    lines = [
        f"Element ID: {ctx.get('element_id', '')}",
        f"Field: {ctx.get('field', '')}",
    ]
    if ctx.get("field_type"):
        lines.append(f"Field type: {ctx['field_type']}")
    lines.append(f"Business description: {ctx.get('business_description', '')}")
    if ctx.get("current_value"):
        lines.append(f"Current value: {ctx['current_value']}")
    lines.append(f"Instruction: {job.prompt}")
    return "\n".join(lines)


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> Tool:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


_INDEX = {"type": "integer", "description": "The component's index in the page JSON."}
_NAME = {"type": "string", "description": "PascalCase component name."}
_CONTENT = {"type": "string", "description": "The component's complete JSX source."}

UPDATE_COMPONENT = _function(
    "update_component",
    "Replace the source of an existing component.",
    {"index": _INDEX, "name": _NAME, "content": _CONTENT},
    ["index", "name", "content"],
)
INSERT_COMPONENT = _function(
    "insert_component",
    "Add a new component to the page.",
    {
        "name": _NAME,
        "position": {"type": "string", "description": "Place on the page, e.g. 0, 1, 2."},
        "content": _CONTENT,
        "after_index": {"type": "integer", "description": "Insert after this component."},
    },
    ["name", "position", "content"],
)
REMOVE_COMPONENT = _function(
    "remove_component",
    "Delete a component from the page.",
    {"index": _INDEX},
    ["index"],
)
DELIVER_WEBSITE_CONTENT = _function(
    FIELD_TOOL,
    "Deliver the finished content of the website field.",
    {
        "elementid": {"type": "string", "description": "The element ID you were given."},
        "output": {"type": "string", "description": "The field's content, ready to publish."},
    },
    ["elementid", "output"],
)
