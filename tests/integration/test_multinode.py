"""Several service processes on one PostgreSQL log: live streams across nodes, shared work,
limits that hold across nodes, and a dead node's requests ended by a live one."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import POSTGRES_URL
from tests.support.invariants import assert_well_formed
from tests.support.server import ServiceProcess
from tests.support.sse_client import read_stream, runner_of

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("backend", ["postgresql"] if POSTGRES_URL else [], indirect=True),
]

NODE = {"GENSTREAM_LEASE_S": "2", "GENSTREAM_LEASE_RENEW_S": "0.5", "GENSTREAM_RUNNERS": "1"}


async def node_name(client: httpx.AsyncClient, service: ServiceProcess) -> str:
    return str((await client.get(f"{service.base_url}/health")).json()["node"])


@pytest.fixture
async def cluster(service_factory: Any) -> Any:
    a = service_factory("cluster", GENSTREAM_DEMO_TOKEN_DELAY_MS="30", **NODE)
    b = service_factory("cluster", GENSTREAM_DEMO_TOKEN_DELAY_MS="30", **NODE)
    async with httpx.AsyncClient(timeout=60) as client:
        names = {await node_name(client, a): a, await node_name(client, b): b}
        assert len(names) == 2
        yield client, names


async def test_a_stream_on_one_node_follows_a_generation_on_the_other(cluster: Any) -> None:
    client, nodes = cluster
    first = next(iter(nodes.values()))
    rid = (await client.post(f"{first.base_url}/assistant/request", json={"prompt": "p"})).json()[
        "request_id"
    ]
    runner, seen = await runner_of(client, first.base_url, rid)
    reader = next(s for name, s in nodes.items() if name != runner)
    rest = await read_stream(
        client, f"{reader.base_url}/assistant/stream/{rid}", last_event_id=seen
    )
    stored = (await client.get(f"{reader.base_url}/assistant/requests/{rid}/events")).json()
    assert rest.events == stored["events"][seen:]
    assert_well_formed(stored["events"], rid)
    assert rest.events[-1]["type"] == "complete"


async def test_the_queue_is_shared_and_limits_hold_across_nodes(cluster: Any) -> None:
    client, nodes = cluster
    a, b = nodes.values()
    posts = await asyncio.gather(
        *(
            client.post(f"{(a, b)[n % 2].base_url}/assistant/request", json={"prompt": f"{n}"})
            for n in range(12)
        )
    )
    admitted = [p.json()["request_id"] for p in posts if p.status_code == 201]
    assert len(admitted) == 5, "the default active limit of 5 holds across both nodes"
    assert {p.status_code for p in posts} == {201, 429}
    runners = set()
    for rid in admitted:
        events = (await read_stream(client, f"{b.base_url}/assistant/stream/{rid}")).events
        assert_well_formed(events, rid)
        runners.add(next(e["message"] for e in events if e.get("status") == "running"))
    assert runners == {f"running on {name}" for name in nodes}, "both nodes took work"


async def test_cancel_on_one_node_stops_the_runner_on_the_other(cluster: Any) -> None:
    client, nodes = cluster
    first = next(iter(nodes.values()))
    rid = (await client.post(f"{first.base_url}/assistant/request", json={"prompt": "x"})).json()[
        "request_id"
    ]
    runner, _ = await runner_of(client, first.base_url, rid)
    other = next(s for name, s in nodes.items() if name != runner)
    cancel = await client.post(f"{other.base_url}/assistant/requests/{rid}/cancel")
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    events = (await read_stream(client, f"{nodes[runner].base_url}/assistant/stream/{rid}")).events
    assert_well_formed(events, rid)
    assert events[-1]["type"] == "cancelled"


async def test_a_dead_nodes_generation_is_ended_by_a_live_node(cluster: Any) -> None:
    client, nodes = cluster
    first = next(iter(nodes.values()))
    rid = (await client.post(f"{first.base_url}/assistant/request", json={"prompt": "y"})).json()[
        "request_id"
    ]
    runner, seen = await runner_of(client, first.base_url, rid)
    survivor = next(s for name, s in nodes.items() if name != runner)
    nodes[runner].kill()
    rest = await read_stream(
        client, f"{survivor.base_url}/assistant/stream/{rid}", last_event_id=seen
    )
    ending = rest.events[-1]
    assert ending["type"] == "error" and ending["code"] == "interrupted"
    stored = (await client.get(f"{survivor.base_url}/assistant/requests/{rid}/events")).json()
    assert_well_formed(stored["events"], rid)
