"""No input yields a 5xx: random bodies, headers and IDs against a real server."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.server import ServiceProcess

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"prompt": st.text(max_size=80)},
        optional={
            "mode": st.sampled_from(["generate", "chat", "field", "edit"]) | st.text(max_size=8),
            "track_id": st.none() | st.text(max_size=20),
            "context": json_values,
        },
    ),
    json_values,
)
# Header values as HTTP clients can send them (no surrounding spaces: h11 refuses those).
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        tmp_path_factory.mktemp("fuzz") / "fuzz.db",
        {
            "GENSTREAM_DEMO_TOKEN_DELAY_MS": "0",
            "GENSTREAM_RATE_PER_MINUTE": "100000",
            "GENSTREAM_MAX_ACTIVE_PER_USER": "1000",
        },
    )
    process.start()
    yield process
    process.stop()


def assert_handled(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, key=st.none() | header_text)
def test_any_request_body(service: ServiceProcess, body: Any, key: str | None) -> None:
    headers = {} if key is None else {"Idempotency-Key": key}
    for path in ["/assistant/request", "/assistant/generate"]:
        if path.endswith("generate") and not isinstance(body, dict):
            continue
        response = httpx.post(f"{service.base_url}{path}", json=body, headers=headers, timeout=30)
        assert_handled(response)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_json(service: ServiceProcess, raw: bytes) -> None:
    response = httpx.post(
        f"{service.base_url}/assistant/request",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_handled(response)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    request_id=st.text(min_size=1, max_size=50),
    last_event_id=st.none() | header_text,
    query=st.dictionaries(
        st.sampled_from(["after", "limit", "at", "speed", "from", "snapshot", "last_event_id"]),
        header_text,
        max_size=3,
    ),
)
def test_any_id_parameter_and_last_event_id(
    service: ServiceProcess, request_id: str, last_event_id: str | None, query: dict[str, str]
) -> None:
    quoted = urllib.parse.quote(request_id, safe="")
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    for path in [
        "/assistant/stream/{}",
        "/assistant/replay/{}",
        "/assistant/requests/{}",
        "/assistant/requests/{}/events",
        "/assistant/requests/{}/page",
        "/tracks/{}/content",
    ]:
        response = httpx.get(
            f"{service.base_url}{path.format(quoted)}", params=query, headers=headers, timeout=30
        )
        assert_handled(response)
    cancel = httpx.post(f"{service.base_url}/assistant/requests/{quoted}/cancel", timeout=30)
    assert_handled(cancel)
