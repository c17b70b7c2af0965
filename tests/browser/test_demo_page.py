"""The demo page in a real browser (Debian's Chromium driven by Playwright).

Generate a page, drop the connection mid-stream, resume, and check that the page rendered
after the resume is the page an uninterrupted run renders and the page endpoint returns.
Skipped, with the reason, only when Chromium or Playwright is missing.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.auth import mint_token
from tests.support.server import ROOT, ServiceProcess

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_ENV = "GENSTREAM_TEST_SCREENSHOT"
"""Where the resume test saves its screenshot, relative to the repository (``docs/demo-page.png``
refreshes the docs' picture); by default the test's own temporary directory, so a run
changes no tracked file."""
SECRET = "browser-tests-secret-0123456789abcdef"
PROMPT = "A landing page for a family bakery in Lyon with fresh bread and pastries"
# Playwright's string predicates are eval'd, which the page's CSP forbids: use functions.
RUN_DONE = """(previous) => {
  const s = window.genstreamDemo && genstreamDemo.snapshot();
  return !!s && s.requestId !== previous && s.finished;
}"""
RUN_STREAMING = """([previous, events]) => {
  const s = window.genstreamDemo && genstreamDemo.snapshot();
  return !!s && s.requestId !== previous && !s.finished && s.seqs.length >= events;
}"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh Chromium profile; skipped when Chromium or Playwright is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/_install_chromium (apt-get chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="playwright is not installed: pip install playwright (a test extra)",
    )
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1440, "height": 960},
        )
        try:
            yield context
        finally:
            context.close()


def serve_demo(service_factory: Callable[..., ServiceProcess], **env: str) -> ServiceProcess:
    """A service whose demo page is served, publicly (no token needed for the page)."""
    service = service_factory(
        GENSTREAM_DEMO_TOKEN_DELAY_MS="25", GENSTREAM_SSE_RETRY_MS="300", **env
    )
    assert httpx.get(f"{service.base_url}/", timeout=10).status_code == 200
    return service


def open_demo(browser: Any, service: ServiceProcess) -> tuple[Any, list[str]]:
    """The demo page, loaded, with a list collecting its script errors."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
    page.goto(f"{service.base_url}/")
    page.wait_for_selector("body[data-ready=true]")
    return page, problems


def run(page: Any, previous: str | None = None) -> dict[str, Any]:
    """Click the send button and wait for the new request to end; its snapshot."""
    page.click("#send")
    page.wait_for_function(RUN_DONE, arg=previous, timeout=60_000)
    snapshot: dict[str, Any] = page.evaluate("() => genstreamDemo.snapshot()")
    return snapshot


def api_get(service: ServiceProcess, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{service.base_url}{path}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_dropped_connection_resumes_to_the_uninterrupted_page(
    browser: Any, service_factory: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    service = serve_demo(service_factory)
    page, problems = open_demo(browser, service)
    assert page.get_attribute("#preview", "sandbox") == ""  # no scripts, no origin
    page.fill("#prompt", PROMPT)

    whole = run(page)
    assert whole["terminal"]["type"] == "complete" and whole["drops"] == 0

    # The same prompt again (the demo model is deterministic), dropped after 8 events.
    page.click("#send")
    page.wait_for_function(RUN_STREAMING, arg=[whole["requestId"], 8], timeout=30_000)
    page.click("#drop")
    page.wait_for_function(RUN_DONE, arg=whole["requestId"], timeout=60_000)
    resumed = page.evaluate("() => genstreamDemo.snapshot()")
    request_id = resumed["requestId"]

    assert resumed["drops"] == 1 and resumed["terminal"]["type"] == "complete"
    stored = api_get(service, f"/assistant/requests/{request_id}/events?limit=1000")["events"]
    last = stored[-1]["seq"]
    assert resumed["seqs"] == list(range(1, last + 1))  # every event once, in order
    rows = page.eval_on_selector_all("#timeline li[data-seq]", "l => l.map(e => +e.dataset.seq)")
    assert rows == resumed["seqs"]
    markers = page.eval_on_selector_all("#timeline li.marker", "l => l.map(e => e.textContent)")
    dropped_at = resumed["seqs"][0] - 1
    for marker in markers:
        if marker.startswith("connection dropped after #"):
            dropped_at = int(marker.removeprefix("connection dropped after #").split(";")[0])
    assert 8 <= dropped_at < last - 5, (dropped_at, last)  # mid-stream, with events missed
    assert f"connected, resuming after #{dropped_at}" in markers

    endpoint = api_get(service, f"/assistant/requests/{request_id}/page")
    assert resumed["page"]["components"] == endpoint["components"]
    assert resumed["page"]["text"] == endpoint["text"]
    assert resumed["page"]["at_seq"] == endpoint["at_seq"] == last
    assert resumed["page"]["components"] == whole["page"]["components"]
    rendered = page.evaluate("(c) => genstreamDemo.renderPage(c)", endpoint["components"])
    assert resumed["srcdoc"] == rendered == whole["srcdoc"]
    assert page.get_attribute("#preview", "srcdoc") == rendered
    assert 'data-component="HeroSection"' in rendered and "gs-c gs-streaming" not in rendered

    page.evaluate("() => document.querySelector('#timeline').scrollTo(0, 0)")
    wanted = os.environ.get(SCREENSHOT_ENV)
    screenshot = ROOT / wanted if wanted else tmp_path / "demo-page.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 0

    # Replaying the resumed request (instantly) renders the same page again.
    page.select_option("#past", request_id)
    page.select_option("#speed", "0")
    page.click("#replay-go")
    page.wait_for_selector("body[data-last-run=replay]", timeout=30_000)
    replayed = page.evaluate("() => genstreamDemo.snapshot()")
    assert replayed["requestId"] == request_id and replayed["seqs"] == resumed["seqs"]
    assert replayed["srcdoc"] == rendered

    assert problems == []


def test_rejected_components_are_never_rendered(
    browser: Any, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = serve_demo(service_factory)
    page, problems = open_demo(browser, service)
    page.fill("#prompt", "an unsafe page for kites")
    snapshot = run(page)
    names = {c["name"]: c["status"] for c in snapshot["page"]["components"]}
    assert names["EmbedWidget"] == "rejected"
    endpoint = api_get(service, f"/assistant/requests/{snapshot['requestId']}/page")
    assert snapshot["page"]["components"] == endpoint["components"]
    assert 'data-component="EmbedWidget"' not in snapshot["srcdoc"]
    assert "<script" not in snapshot["srcdoc"] and "widgets.example.com" not in snapshot["srcdoc"]
    assert 'data-component="ContactFooter"' in snapshot["srcdoc"]
    rejected = page.eval_on_selector_all("#timeline li.rejected", "els => els.length")
    assert rejected == 1
    assert problems == []


JS_CLIENT_CHECKS = """async ([requestId, last, unknown]) => {
  const gs = await import("/static/genstream.js");
  const handle = await gs.getRequest(requestId);
  const afterTerminal = await gs.streamAssistantResponse(handle, { lastEventId: last }).done;
  const tail = [];
  const terminal = await gs.streamAssistantResponse(handle, {
    lastEventId: last - 3, onEvent: (e) => tail.push(e.seq),
  }).done;
  let missing = null;
  try {
    await gs.streamAssistantResponse({ requestId: unknown }).done;
  } catch (error) {
    missing = { name: error.name, status: error.status, code: error.code };
  }
  const chat = await gs.interactWithAssistant("How should a tea shop price samples?", {
    mode: "chat",
  });
  return { afterTerminal, tail, terminal: terminal.type, missing, chat: {
    status: chat.status, seqs: chat.events.map((e) => e.seq), requestId: chat.requestId,
  } };
}"""


def test_js_client_ends_on_204_and_raises_problems(
    browser: Any, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = serve_demo(service_factory)
    page, problems = open_demo(browser, service)
    page.select_option("#mode", "chat")
    done = run(page)
    last = done["seqs"][-1]
    unknown = "01a1fc37-a6b5-7377-a036-ea727e2abc5e"
    checks = page.evaluate(JS_CLIENT_CHECKS, [done["requestId"], last, unknown])
    assert checks["afterTerminal"] is None  # 204: the terminal event was seen already
    assert checks["tail"] == [last - 2, last - 1, last] and checks["terminal"] == "complete"
    assert checks["missing"] == {
        "name": "GenstreamError",
        "status": 404,
        "code": "request_not_found",
    }
    stored = api_get(service, f"/assistant/requests/{checks['chat']['requestId']}/events")
    assert checks["chat"]["status"] == "completed"
    assert checks["chat"]["seqs"] == [e["seq"] for e in stored["events"]]
    assert problems == []


def test_field_mode_fills_the_editor_fields_one_by_one(
    browser: Any, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = serve_demo(service_factory)
    page, problems = open_demo(browser, service)
    page.select_option("#mode", "field")
    assert page.is_visible("#fields")
    page.click("#send")
    page.wait_for_selector("body[data-fields-track]", timeout=60_000)
    track = page.get_attribute("body", "data-fields-track")
    fields = api_get(service, f"/tracks/{track}/content")["fields"]
    values = {f["element_id"]: f["value"] for f in fields}
    assert values == {
        "HeroSection-1_custom_title": page.input_value("#f-title"),
        "HeroSection-1_custom_subtitle": page.input_value("#f-subtitle"),
        "HeroSection-1_custom_cta": page.input_value("#f-cta"),
    }
    assert all(values.values())
    # One by one: each field's request was created after the previous one had ended.
    order = [
        "HeroSection-1_custom_title",
        "HeroSection-1_custom_subtitle",
        "HeroSection-1_custom_cta",
    ]
    by_element = {f["element_id"]: f["request_id"] for f in fields}
    requests = [api_get(service, f"/assistant/requests/{by_element[e]}") for e in order]
    for before, after in itertools.pairwise(requests):
        assert before["status"] == "completed"
        assert after["created_at"] >= before["updated_at"]
    assert page.eval_on_selector_all("#fields .field.filled", "els => els.length") == 3
    assert problems == []


def test_with_auth_the_page_asks_for_a_token_and_uses_it(
    browser: Any, service_factory: Callable[..., ServiceProcess]
) -> None:
    # Stream tokens live 1 s: the resume, 1.5 s after the drop, needs a fresh one.
    service = serve_demo(
        service_factory, GENSTREAM_JWT_SECRET=SECRET, GENSTREAM_STREAM_TOKEN_TTL_S="1"
    )
    page, problems = open_demo(browser, service)
    streams: list[int] = []
    page.on(
        "response",
        lambda r: streams.append(r.status) if "/assistant/stream/" in r.url else None,
    )
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    assert "requires a token" in (page.text_content("#error") or "")
    assert page.get_attribute("#auth", "open") is not None

    token = mint_token(SECRET, "alice", ttl=timedelta(minutes=5))
    page.fill("#token", token)
    page.click("#send")
    page.wait_for_function(RUN_STREAMING, arg=[None, 6], timeout=30_000)
    page.click("#drop")  # the resume goes through the request-scoped token of stream_url
    page.wait_for_function(RUN_DONE, arg=None, timeout=60_000)
    snapshot = page.evaluate("() => genstreamDemo.snapshot()")
    assert page.is_hidden("#error")
    assert snapshot["drops"] == 1 and snapshot["terminal"]["type"] == "complete"
    endpoint = api_get(service, f"/assistant/requests/{snapshot['requestId']}/page", token)
    assert snapshot["page"]["components"] == endpoint["components"]
    assert snapshot["seqs"] == list(range(1, endpoint["at_seq"] + 1))
    assert 401 in streams  # the expired stream token, replaced through the Bearer token
    assert problems == []


def test_cancelled_and_failed_generations_end_the_run(
    browser: Any, service_factory: Callable[..., ServiceProcess]
) -> None:
    # A page takes the demo model about 5 s here: past the 2 s generation timeout.
    service = serve_demo(service_factory, GENSTREAM_GENERATION_TIMEOUT_S="2")
    page, problems = open_demo(browser, service)
    page.click("#send")
    page.wait_for_function(RUN_STREAMING, arg=[None, 5], timeout=30_000)
    page.click("#cancel")
    page.wait_for_function(RUN_DONE, arg=None, timeout=30_000)
    cancelled = page.evaluate("() => genstreamDemo.snapshot()")
    assert cancelled["terminal"]["type"] == "cancelled"
    assert page.get_attribute("#request-status", "data-status") == "cancelled"

    failed = run(page, cancelled["requestId"])
    assert failed["terminal"]["type"] == "error" and failed["terminal"]["code"] == "timeout"
    assert page.get_attribute("#request-status", "data-status") == "failed"
    assert "timeout" in (page.text_content("#error") or "")
    stored = api_get(service, f"/assistant/requests/{failed['requestId']}/events")["events"]
    assert failed["seqs"] == [e["seq"] for e in stored]
    assert page.is_enabled("#send") and page.is_disabled("#drop") and page.is_hidden("#typing")
    assert problems == []


def test_install_script_is_idempotent() -> None:
    script = ROOT / "scripts" / "_install_chromium"
    assert script.exists() and shutil.which("bash")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; the script would install it")
    done = subprocess.run([str(script)], capture_output=True, text=True, check=True, timeout=30)
    assert "already installed" in done.stdout
