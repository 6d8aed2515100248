"""The demo page in a real headless Chromium, through nginx with deploy/nginx.conf.

What counts is what a browser shows: tokens enter the DOM one by one over the generation, Stop
cancels the upstream generation, a reload resumes the answer without a second generation, a
failure is shown and the prompt comes back.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from loadtests.stack import BIN, DEPLOY_CONF, free_port, nginx, running
from sse_bridge.testing import answer_tokens

ROOT = Path(__file__).parent.parent
ARTEFACTS = ROOT / "results" / "browser"
PACE = 20  # tokens per second: one every 50 ms
# Flags for a root user on a machine with no network: without the background-networking ones,
# Chromium keeps trying to reach Google's hosts.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Records each text node added to the answer (one per token) and when the page saw it. Two
# tokens the browser handed over in one read share a callback, and so a time. Also records when
# Stop was clicked, on the wall clock (ms since the epoch) that the test can convert.
WATCH_ANSWER = """
window.__changes = [];
new MutationObserver((records) => {
    const now = performance.now();
    for (const record of records)
        for (const node of record.addedNodes) window.__changes.push([now, node.textContent]);
}).observe(document.getElementById("answer"), {childList: true});
document.getElementById("stop").addEventListener("click", () => {
    window.__stoppedAt = Date.now();
});
"""
# A `retry:` block that sets an EventSource's reconnection delay to 100 ms.
RETRY_FIRST = b"retry: 100\n\n"
# An EventSource that is never closed, counting its (re)connections.
CONTROL_STREAM = """
window.__controlOpens = 0;
window.__control = new EventSource("/control-stream");
window.__control.onopen = () => { window.__controlOpens += 1; };
"""
# Bounds for polling the fake's records; the assertions carry the real limits.
RECORD_DEADLINE = 10.0
# Where the page keeps an open stream (id, last event rendered, text so far) for a reload.
STORED = "JSON.parse(sessionStorage.getItem('sse_bridge.demo.stream'))"
# The demo's timeline under the answer: each tick's classes, time (ms since Send) and x; the
# markers (first token, reload) likewise; the plot's width and what it says it shows.
TIMELINE = """(() => {
    const plot = document.getElementById("timeline-plot");
    const lines = (selector) => [...plot.querySelectorAll(selector)].map((line) => ({
        cls: line.getAttribute("class"), t: Number(line.dataset.t),
        x: Number(line.getAttribute("x1")), x2: Number(line.getAttribute("x2")),
    }));
    return {
        ticks: lines("line.tick"), ttft: lines("line.ttft"), reload: lines("line.reload"),
        width: plot.viewBox.baseVal.width, resumedAfter: plot.dataset.resumedAfter ?? null,
        hidden: document.getElementById("timeline").hidden,
        caption: document.getElementById("timeline-caption").textContent,
    };
})()"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    # Missing Chromium is a failure, never a skip: .ci/run installs it with apt-get.
    assert found is not None, "Chromium is required for these tests: apt-get install chromium"
    return found


@pytest.fixture(scope="module")
def nginx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nginx")


@pytest.fixture(scope="module")
def site(nginx_dir: Path) -> Iterator[str]:
    port = free_port()
    demo = ("demo", "--tokens-per-second", str(PACE))
    workdir = nginx_dir
    with (
        running(*demo, port=port, ready_path="/"),
        nginx(DEPLOY_CONF.read_text(), bridges=[port], workdir=workdir) as url,
    ):
        yield url


@contextlib.contextmanager
def launched_chromium(*extra_flags: str) -> Iterator[Browser]:
    """Chromium under Playwright with this suite's flags (and any more), closed afterwards."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium(), args=[*CHROMIUM_FLAGS, *extra_flags]
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    yield opened
    context.close()


def open_demo(page: Page, site: str, **fake: Any) -> None:
    query = f"?fake={json.dumps(fake)}" if fake else ""
    page.goto(f"{site}/{query}")
    page.evaluate(WATCH_ANSWER)


def wait_idle(page: Page, timeout: float = 20) -> None:
    page.wait_for_function(
        "document.body.dataset.state === 'idle' && document.getElementById('stats').textContent"
        " || !document.getElementById('error').hidden",
        timeout=timeout * 1000,
    )


def requests_seen(nginx_dir: Path) -> list[str]:
    """The request lines nginx logged ("DELETE /streams/<id> HTTP/1.1" 204), in order."""
    log = nginx_dir / "sse-bridge.access.log"
    lines = log.read_text().splitlines() if log.exists() else []
    # The combined format: 127.0.0.1 - - [time] "<request line>" <status> <bytes> ...
    fields = [line.split('"') for line in lines]
    return [f"{parts[1]} {parts[2].split()[0]}" for parts in fields]


def wait_logged(nginx_dir: Path, request: str) -> None:
    """Until nginx has logged `request` (it logs a request once it has ended)."""
    deadline = time.monotonic() + RECORD_DEADLINE
    while request not in (seen := requests_seen(nginx_dir)):
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)


def fake_records(site: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = httpx.get(f"{site}/_fake/requests").json()
    return [r for r in records if r["path"] == "/api/chat"]


def wait_for_end(site: str, before: int) -> dict[str, Any]:
    """The fake's record of the first chat after the first `before`, once it has an outcome."""
    deadline = time.monotonic() + RECORD_DEADLINE
    while True:
        records = fake_records(site)[before:]
        if records and records[0]["outcome"] is not None:
            return records[0]
        assert time.monotonic() < deadline, records
        time.sleep(0.02)


@pytest.mark.timing
def test_tokens_enter_the_page_one_by_one(page: Page, site: str) -> None:
    tokens = 30
    open_demo(page, site, num_tokens=tokens)
    page.click("#send")
    wait_idle(page)
    assert page.inner_text("#answer") == "".join(answer_tokens(tokens))
    assert page.is_hidden("#error")
    stats = page.inner_text("#stats")
    assert f"{tokens} tokens in" in stats
    assert "time to first token" in stats
    changes: list[tuple[float, str]] = page.evaluate("window.__changes")
    times = [at for at, _ in changes]
    # Every token entered the DOM, in order, and the changes span the generation (29 x 50 ms),
    # nearly all at their own time: a busy machine may hand the page two tokens in one read.
    assert [text for _, text in changes] == answer_tokens(tokens)
    assert (times[-1] - times[0]) / 1000 >= 0.8 * (tokens - 1) / PACE
    together = sum(b - a < 1000 / PACE / 4 for a, b in itertools.pairwise(times))
    assert together <= 2
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "demo-finished.png"), full_page=True)
    assert (ARTEFACTS / "demo-finished.png").stat().st_size > 10_000


def check_ticks(ticks: list[dict[str, Any]], width: float) -> list[float]:
    """Ticks in arrival order, left to right inside the plot; their x."""
    xs = [tick["x"] for tick in ticks]
    assert [tick["t"] for tick in ticks] == sorted(tick["t"] for tick in ticks)
    assert xs == sorted(xs)
    assert all(tick["x"] == tick["x2"] for tick in ticks)
    assert all(0 < x < width for x in xs)
    return xs


def test_the_timeline_draws_one_tick_per_event(page: Page, site: str) -> None:
    # One tick per event: every token and the final event (N + 1 for N tokens).
    tokens = 30
    open_demo(page, site, num_tokens=tokens)
    assert page.evaluate(TIMELINE)["hidden"]
    page.click("#send")
    page.wait_for_function(
        "document.querySelectorAll('#timeline-plot line.tick').length >= 5", timeout=10_000
    )
    live = page.evaluate(TIMELINE)
    assert not live["hidden"]
    assert len(live["ticks"]) < tokens + 1  # drawn as the events arrive, not at the end
    wait_idle(page)
    drawn = page.evaluate(TIMELINE)
    ticks = drawn["ticks"]
    assert [tick["cls"] for tick in ticks] == ["tick token"] * tokens + ["tick end"]
    xs = check_ticks(ticks, drawn["width"])
    # Spread over the generation like the tokens (29 x 50 ms), not one block: a busy machine
    # may hand the page two tokens in one read, as the test above allows.
    assert xs[-1] - xs[0] >= 0.5 * drawn["width"]
    assert max(len(list(group)) for _, group in itertools.groupby(xs)) <= 3
    gaps = [b - a for a, b in itertools.pairwise(tick["t"] for tick in ticks[:tokens])]
    assert sum(gap < 1000 / PACE / 4 for gap in gaps) <= 2
    # The time to first token is marked where the first token's tick is, and is the one shown.
    (ttft,) = drawn["ttft"]
    assert ttft["t"] == ticks[0]["t"]
    assert ttft["x"] == pytest.approx(xs[0], abs=0.01)
    # Rounded as the page rounds (toFixed, half away from zero; Python's format rounds half
    # to even, so 20.5 ms read "21" on the page and "20" here).
    shown = page.evaluate("t => t.toFixed(0)", ttft["t"])
    assert f"time to first token {shown} ms" in page.inner_text("#stats")
    assert drawn["reload"] == []
    assert drawn["caption"].startswith(f"{tokens + 1} events · last at ")
    # A second answer starts a new timeline.
    page.click("#send")
    wait_idle(page)
    assert len(page.evaluate(TIMELINE)["ticks"]) == tokens + 1


@pytest.mark.timing
def test_stop_cancels_the_upstream_generation(page: Page, site: str, nginx_dir: Path) -> None:
    open_demo(page, site, num_tokens=400)
    before = len(fake_records(site))
    page.click("#send")
    page.wait_for_function("window.__changes.length >= 3", timeout=10_000)
    stream_id = page.evaluate(STORED)["id"]
    page.click("#stop")
    wait_idle(page)
    # The page asked the bridge to stop the generation (a closed request would leave it running
    # for the resume grace) and showed the stream's own end, with nothing left to resume.
    wait_logged(nginx_dir, f"DELETE /streams/{stream_id} HTTP/1.1 204")
    stats = page.inner_text("#stats")
    assert stats.startswith("Stopped. time to first token"), stats
    assert page.is_hidden("#error")
    assert page.evaluate(STORED) is None
    assert page.is_enabled("#prompt")
    assert page.is_enabled("#send")
    record = wait_for_end(site, before)
    assert record["outcome"] == "cancelled"
    assert record["cancelled_phase"] == "streaming"
    assert record["tokens_sent"] < 100
    # The promise: the generation stops within 1 s of the click. Measured from the page's own
    # stamp of the click to the fake's stamp of the cancellation, not around the test's calls to
    # Playwright and its polling. The fake stamps time.monotonic() (CLOCK_MONOTONIC, one clock
    # for the whole machine on Linux), the page Date.now(): one offset converts between them.
    offset = time.time() - time.monotonic()
    clicked_at = page.evaluate("window.__stoppedAt") / 1000 - offset
    # Date.now() counts whole milliseconds: a cancellation within one of the click may read as
    # a hair before it.
    assert -0.002 < record["ended_at"] - clicked_at < 1.0, record["ended_at"] - clicked_at


def test_stop_on_the_eventsource_reader_cancels_the_upstream_generation(
    page: Page, site: str
) -> None:
    # The page cannot know an EventSource stream's id: it closes the source, and the demo
    # server stops the generation (else it would run on for the bridge's resume grace, 30 s).
    open_demo(page, site, num_tokens=400)
    before = len(fake_records(site))
    page.select_option("#reader", "eventsource")
    page.click("#send")
    page.wait_for_function("window.__changes.length >= 3", timeout=10_000)
    page.click("#stop")
    wait_idle(page)
    assert page.inner_text("#stats").startswith("Stopped.")
    record = wait_for_end(site, before)
    assert record["outcome"] == "cancelled"
    assert record["tokens_sent"] < 100


def test_a_reload_resumes_the_answer(page: Page, site: str, nginx_dir: Path) -> None:
    tokens = 60
    # The answer without a reload, for comparison (the fake answers the same prompt alike).
    open_demo(page, site, num_tokens=tokens)
    page.click("#send")
    wait_idle(page)
    uninterrupted = page.inner_text("#answer")
    assert uninterrupted == "".join(answer_tokens(tokens))

    open_demo(page, site, num_tokens=tokens)
    before = len(fake_records(site))
    page.click("#send")
    page.wait_for_function("window.__changes.length >= 10", timeout=10_000)
    stored = page.evaluate(STORED)
    page.reload()
    # The timeline starts again with the reload marked (the ticks before it are gone).
    resumed = page.evaluate(TIMELINE)
    assert resumed["resumedAfter"] is not None
    assert len(resumed["reload"]) == 1
    # The text so far is back at once, and the rest follows from where the page left off.
    assert page.inner_text("#answer").startswith(stored["answer"])
    assert len(stored["answer"]) >= len("".join(answer_tokens(10)))
    wait_idle(page)
    assert page.inner_text("#answer") == uninterrupted
    assert page.is_hidden("#error")
    stats = page.inner_text("#stats")
    assert stats.startswith("Resumed after a reload."), stats
    assert f"{tokens} tokens in" in stats
    assert page.evaluate(STORED) is None
    # The timeline shows the events that arrived after the reload, each once, after the reload
    # marker; the time to first token is the one measured before the reload.
    drawn = page.evaluate(TIMELINE)
    after = int(drawn["resumedAfter"])
    assert stored["n"] <= after < tokens
    ticks = drawn["ticks"]
    assert [tick["cls"] for tick in ticks] == ["tick token"] * (tokens - after) + ["tick end"]
    xs = check_ticks(ticks, drawn["width"])
    (reload,) = drawn["reload"]
    assert reload["t"] <= ticks[0]["t"]
    assert reload["x"] <= xs[0]
    (ttft,) = drawn["ttft"]
    assert ttft["t"] == pytest.approx(stored["firstToken"], abs=0.051)
    assert ttft["x"] < reload["x"]
    assert drawn["caption"].startswith(f"Resumed after a reload (after event {after})")
    # It resumed the stream after the last event it had rendered, and the fake ran one
    # generation for the whole answer, to its end.
    wait_logged(nginx_dir, f"GET /streams/{stored['id']} HTTP/1.1 200")
    assert 10 <= stored["n"] < tokens
    record = wait_for_end(site, before)
    assert record["outcome"] == "completed"
    assert record["tokens_sent"] == tokens
    assert len(fake_records(site)) == before + 1


def test_a_stream_that_cannot_be_resumed_is_explained(page: Page, site: str) -> None:
    open_demo(page, site)
    before = len(fake_records(site))
    state = {"id": "A" * 22, "n": 4, "prompt": "Why?", "answer": "Hello! This", "thinking": ""}
    page.evaluate(
        f"sessionStorage.setItem('sse_bridge.demo.stream', {json.dumps(json.dumps(state))})"
    )
    page.reload()
    wait_idle(page)
    assert page.inner_text("#answer") == "Hello! This"
    assert "cannot be resumed" in page.inner_text("#error")
    assert "Resumed" not in page.inner_text("#stats")
    assert page.evaluate(STORED) is None
    assert page.is_enabled("#send")
    assert len(fake_records(site)) == before


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ('{"fail_after": 8}', "an error was encountered while running the model"),
        ('{"fail_after": 8, "failure": "close"}', "upstream connection lost mid-stream"),
    ],
)
def test_an_upstream_failure_is_shown_and_the_prompt_comes_back(
    page: Page, site: str, fault: str, message: str
) -> None:
    open_demo(page, site)
    page.select_option("#fault", fault)
    page.click("#send")
    wait_idle(page)
    assert page.is_visible("#error")
    assert message in page.inner_text("#error")
    assert page.inner_text("#answer") == "".join(answer_tokens(8))
    assert page.is_enabled("#prompt")
    assert page.is_enabled("#send")
    assert page.is_disabled("#stop")


def test_eventsource_shows_the_same_stream(page: Page, site: str) -> None:
    tokens = 12
    open_demo(page, site, num_tokens=tokens)
    before = len(fake_records(site))
    # Each stream starts with a short reconnection delay of its own, so that an EventSource left
    # open would ask again within 100 ms, whatever the browser's default delay.
    opened: list[str] = []

    def with_short_retry(route: Route) -> None:
        opened.append(route.request.url)
        response = route.fetch()
        route.fulfill(response=response, body=RETRY_FIRST + response.body())

    page.route("**/api/chat/events?*", with_short_retry)
    page.select_option("#reader", "eventsource")
    page.click("#send")
    wait_idle(page)
    assert page.inner_text("#answer") == "".join(answer_tokens(tokens))
    assert page.is_hidden("#error")
    assert len(page.evaluate("window.__changes")) == tokens
    # The page closed the EventSource on the final event, so it does not reconnect and ask
    # again. A control EventSource, opened now with the same delay and never closed, must
    # reconnect twice: by then the reader would have reconnected too.
    page.route(
        "**/control-stream",
        lambda route: route.fulfill(
            status=200, content_type="text/event-stream", body=RETRY_FIRST + b"data: x\n\n"
        ),
    )
    page.evaluate(CONTROL_STREAM)
    page.wait_for_function("window.__controlOpens >= 3", timeout=10_000)
    page.evaluate("window.__control.close()")
    assert len(opened) == 1, opened
    assert len(fake_records(site)) == before + 1


def test_the_probe_timeline_renders_in_chromium(page: Page, site: str, tmp_path: Path) -> None:
    # What `sse-bridge probe --plot` wrote about the tested nginx chain, opened as a file.
    plot = tmp_path / "timeline.html"
    tokens = 12
    data = json.dumps(
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "x"}],
            "fake": {"num_tokens": tokens},
        }
    )
    # A process of its own: Playwright's sync API holds this thread's event loop.
    args = ["probe", f"{site}/api/chat", "-d", data, "--streams", "2", "--json"]
    probed = subprocess.run(
        [str(BIN), *args, "--plot", str(plot)], capture_output=True, text=True, timeout=60
    )
    assert f"timeline: {plot}" in probed.stderr
    summary = json.loads(probed.stdout)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(plot.as_uri())
    # Every event has its tick, drawn with a size, left to right in arrival order.
    boxes = page.evaluate(
        """[...document.querySelectorAll("svg g.stream")].map((row) =>
            [...row.querySelectorAll("line.tick")].map((tick) => {
                const box = tick.getBoundingClientRect();
                return [Number(tick.dataset.tMs), box.x, box.height];
            }))"""
    )
    assert len(boxes) == 2
    # Each stream: its tokens and the final event.
    assert sum(len(row) for row in boxes) == summary["events"] == 2 * (tokens + 1)
    for row in boxes:
        assert all(height > 10 for _, _, height in row)
        assert [x for _, x, _ in row] == sorted(x for _, x, _ in row)
        assert [t for t, _, _ in row] == sorted(t for t, _, _ in row)
        assert row[-1][1] - row[0][1] > 100  # spread, not one block
    # The first event marked across each row, where its first tick is (a vertical line's box
    # has no width, so Playwright would not call it visible).
    markers = page.evaluate(
        """[...document.querySelectorAll("svg g.stream line.ttfe")].map((line) => {
            const box = line.getBoundingClientRect();
            return [box.x, box.height];
        })"""
    )
    assert len(markers) == 2
    for (x, height), row in zip(markers, boxes, strict=True):
        # The lower half of the band and below it: the headers mark has the upper half.
        assert height > 15
        assert x == pytest.approx(row[0][1], abs=1)
    headline = page.locator("svg text.verdict").text_content()
    assert headline == f"verdict: {summary['verdict']} ({summary['reason']})"
    assert page.locator("#report").inner_text().startswith(f"probe {site}/api/chat")
    assert requested == [plot.as_uri()]
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "probe-timeline.png"), full_page=True)
