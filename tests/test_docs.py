"""Every shell command and Python snippet in README.md and docs/*.md: run, or listed with why not.

A command is taken from a fenced `sh` block, or from an unlabelled block, when its line starts
with a program (`bash`, `curl`, `sse-bridge`, `pip`, `.venv/bin/...`, `python`, `docker`,
`git`); lines that continue with a backslash belong to it, and a `# comment` after it is not
part of it. A Python snippet is a fenced `python` block. Each one is in exactly one of RUN
(the test that runs it, which must exist) and NOT_RUN (why it cannot run here), so a command
added to the docs fails `test_every_command_and_snippet_is_run_or_listed` until it is one or
the other.

"Run as written" means the command's own text, through bash, with the `sse-bridge` and
`.venv/bin` of this checkout: only ports (8000, 8080, 11434, which may be taken here) become free
ones, a URL outside this machine becomes the local stack's, and a long run takes smaller
numbers. Each RUN entry says which of these it needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadtests.stack import BIN, DEADLINE, DEPLOY_CONF, fake_ollama, nginx_edge, stop, wait_port
from sse_bridge._testing.loopback import free_port
from sse_bridge.testing import answer_tokens, parse_sse

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = re.compile(r"(bash|curl|sse-bridge|pip|\.venv/bin/\S+|python|docker|git|uvicorn)\s")


@dataclass(frozen=True)
class Snippet:
    """One command or Python block of a doc: its key in RUN or NOT_RUN, and its text."""

    doc: str  # relative to the repository
    key: str  # the command (continuations joined), or "python: <its first line>"
    text: str


def _commands(block: str) -> Iterator[str]:
    lines = block.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not PROGRAMS.match(line + " "):
            continue
        command = [line]
        while command[-1].endswith("\\") and index < len(lines):
            command.append(lines[index].strip())
            index += 1
        yield _without_comment("\n".join(command))


def _without_comment(text: str) -> str:
    """The command without a trailing `# comment`; a `#` inside quotes stays."""
    quote = ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and index and text[index - 1] in " \t":
            return text[:index].rstrip()
    return text


def snippets() -> list[Snippet]:
    found = []
    for path in DOCS:
        doc = str(path.relative_to(ROOT))
        seen_python: dict[str, int] = {}
        for match in re.finditer(r"```(\w*)\n(.*?)```", path.read_text(), re.S):
            language, block = match.groups()
            if language == "python":
                first = block.splitlines()[0]
                seen_python[first] = seen_python.get(first, 0) + 1
                number = seen_python[first]
                key = f"python: {first}" + (f" (#{number})" if number > 1 else "")
                found.append(Snippet(doc, key, block))
            elif language in ("sh", "bash", ""):
                found += [Snippet(doc, command, command) for command in _commands(block)]
    return found


def snippet(doc: str, key: str) -> str:
    (text,) = {s.text for s in snippets() if s.doc == doc and s.key == key}
    return text


# (doc, key) -> the test that runs it, "file::name", and how it differs from the doc's text.
RUN: dict[tuple[str, str], tuple[str, str]] = {
    ("README.md", "bash scripts/demo"): (
        "test_docs.py::test_the_demo_script_runs",
        "with --once --port 0 added: it would otherwise serve until Ctrl+C",
    ),
    (
        "README.md",
        "curl -N -H 'Accept: text/event-stream' -d '{}' http://127.0.0.1:8000/api/chat",
    ): ("test_docs.py::test_the_middleware_snippets_answer_the_curl_as_shown", "a free port"),
    ("README.md", "python: from starlette.applications import Starlette"): (
        "test_docs.py::test_the_middleware_snippets_answer_the_curl_as_shown",
        "saved as app.py and run with uvicorn app:app, as the README says",
    ),
    ("README.md", "python: from fastapi import FastAPI"): (
        "test_docs.py::test_the_middleware_snippets_answer_the_curl_as_shown",
        "saved as app.py and run with uvicorn app:app, as the README says",
    ),
    (
        "README.md",
        "python: app.build_middleware_stack()  # builds each middleware once: a bad option "
        "raises ValueError",
    ): (
        "test_readme.py::test_the_startup_check_raises_for_a_bad_option",
        "after the FastAPI snippet, with a good and a bad option",
    ),
    ("README.md", "python: from fastapi import FastAPI (#2)"): (
        "test_readme.py::test_every_other_example_runs",
        "as written",
    ),
    ("README.md", "python: import json"): ("test_readme.py::test_every_other_example_runs", ""),
    ("README.md", "python: from sse_bridge import create_proxy"): (
        "test_readme.py::test_every_other_example_runs",
        "as written",
    ),
    (
        "README.md",
        "python: from sse_bridge.testing import FakeOllama, FakeOllamaConfig, parse_sse",
    ): (
        "test_readme.py::test_every_other_example_runs",
        "as written",
    ),
    (
        "README.md",
        "sse-bridge serve --upstream http://127.0.0.1:11434 --dialect ollama --port 8000",
    ): (
        "test_docs.py::test_the_sidecar_commands_run_as_written",
        "free ports; the upstream is the README's own fake-ollama command",
    ),
    (
        "README.md",
        "curl -N -H 'Accept: text/event-stream' \\\n"
        """-d '{"model":"llama3.2","messages":[{"role":"user","content":"""
        """"Why is the sky blue?"}]}' \\\n"""
        "http://127.0.0.1:8000/api/chat",
    ): ("test_docs.py::test_the_sidecar_commands_run_as_written", "a free port"),
    ("README.md", "sse-bridge fake-ollama --port 11434 --tokens-per-second 20"): (
        "test_docs.py::test_the_sidecar_commands_run_as_written",
        "a free port",
    ),
    (
        "README.md",
        "sse-bridge probe http://127.0.0.1:8000/api/chat \\\n"
        """-d '{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}' --streams 5""",
    ): ("test_docs.py::test_the_sidecar_commands_run_as_written", "a free port"),
    (
        "README.md",
        "sse-bridge probe https://chat.example.com/api/chat -d '...' --http2 --plot timeline.html",
    ): (
        "test_docs.py::test_the_http2_probe_runs_against_nginx_tls",
        "nginx's TLS listener (deploy/nginx.conf) for chat.example.com, a chat for '...', "
        "and --cacert for its throwaway certificate",
    ),
    (
        "docs/ai-sdk.md",
        "sse-bridge serve --upstream http://127.0.0.1:11434 --dialect ai-sdk --model llama3.2 \\\n"
        "--cors-origin http://localhost:3000 --resume memory",
    ): (
        "test_ai_sdk.py::test_the_documented_command_answers_use_chat",
        "the fake's port for 11434, and --port with a free one (8000 may be taken)",
    ),
    ("README.md", ".venv/bin/pytest tests/test_codec.py -q"): (
        "test_docs.py::test_one_test_module_runs",
        "as written",
    ),
    ("README.md", "bash scripts/loadtest --users 100 --duration 30"): (
        "test_loadtests.py::test_the_documented_command_runs_as_written_with_smaller_numbers",
        "12 users for 9 s",
    ),
    ("docs/loadtesting.md", "bash scripts/loadtest --users 100 --duration 30"): (
        "test_loadtests.py::test_the_documented_command_runs_as_written_with_smaller_numbers",
        "12 users for 9 s",
    ),
    (
        "docs/loadtesting.md",
        "python -m loadtests.run --users 100 --duration 30 --results /tmp/ltdoc",
    ): (
        "test_loadtests.py::test_a_hundred_users_stream_through_nginx_and_pass_the_gate",
        "--results in the test's own directory",
    ),
    (
        "docs/loadtesting.md",
        "python -m loadtests.run --users 20 --duration 15 --naive --results /tmp/ltdoc",
    ): (
        "test_loadtests.py::test_the_gate_fails_a_buffering_stack",
        "10 s, and --results in the test's own directory",
    ),
    ("docs/benchmarks.md", ".venv/bin/python benchmarks/bench_stream.py --quick"): (
        "test_benchmarks.py::test_the_quick_benchmark_runs_and_delivers_everything",
        "with --json to read its figures",
    ),
    ("docs/benchmarks.md", ".venv/bin/python benchmarks/probe.py resume --quick"): (
        "test_benchmarks.py::test_the_quick_resume_probe_runs_and_delivers_everything",
        "with --json to read its figures",
    ),
    ("docs/operations.md", "python: from fastapi import FastAPI"): (
        "test_docs.py::test_the_middleware_metrics_snippet_counts_only_streams",
        "with a streaming route added to its app",
    ),
    ("docs/resume.md", "python: from sse_bridge import SSEBridgeMiddleware"): (
        "test_docs.py::test_the_resume_store_snippet_builds_both_stores",
        "after an app to wrap; the Redis store is built, not connected",
    ),
    (
        "docs/benchmarks.md",
        ".venv/bin/python benchmarks/bench_follow.py --followers 100 --events 1000,10000,150000",
    ): (
        "test_sharp_edges.py::test_the_follower_benchmark_runs",
        "3 followers on 10 and 100 events, 5 rounds",
    ),
}

MINUTES = "takes minutes; its --quick form is run by tests/test_benchmarks.py"
MUTATION = (
    "mutation testing: minutes to hours of CPU over one folder, so not part of CI; its figures "
    "and the command behind each are docs/testing.md's table"
)
NOT_RUN: dict[tuple[str, str], str] = {
    ("README.md", "bash scripts/mutate redis"): MUTATION,
    ("docs/testing.md", "bash scripts/mutate redis"): MUTATION,
    (
        "docs/testing.md",
        "bash scripts/mutate 'src/sse_bridge/_core/codec.py' tests/test_codec.py",
    ): MUTATION,
    ("docs/reliability.md", ".venv/bin/python benchmarks/redis_faults.py"): (
        "its 10 s pause; tests/test_redis_faults.py runs the kill and the empty restart"
    ),
    ("docs/reliability.md", ".venv/bin/python benchmarks/bench_storm.py"): (
        "1,000 clients; tests/test_storm.py runs it with 100 and the same checks"
    ),
    ("docs/reliability.md", ".venv/bin/python benchmarks/bench_storm.py --max-streams 2500"): (
        "1,000 clients; tests/test_storm.py runs it with 100 and the same checks"
    ),
    ("docs/reliability.md", ".venv/bin/python benchmarks/bench_idle.py"): (
        "10,000 streams for a minute; tests/test_idle.py runs it with 200 and a 1 s keepalive"
    ),
    ("docs/reliability.md", "bash scripts/soak --minutes 30 --store memory"): (
        "half an hour; tests/test_soak.py runs it for one minute with each store"
    ),
    ("docs/reliability.md", "bash scripts/soak --minutes 30 --store redis"): (
        "half an hour; tests/test_soak.py runs it for one minute with each store"
    ),
    ("docs/reliability.md", ".venv/bin/python benchmarks/bench_sigterm.py"): (
        "a measurement with 300 streams; tests/test_shutdown.py runs its Redis form with 40"
    ),
    ("docs/reliability.md", ".venv/bin/python benchmarks/bench_sigterm.py --resume redis"): (
        "a measurement with 300 streams; tests/test_shutdown.py runs it with 40"
    ),
    (
        "docs/resume.md",
        "python:   app = AuthenticationMiddleware(  "
        "# the app's auth, OUTSIDE the bridge: it runs first",
    ): (
        "a fragment: `api` and `MyBackend` are the reader's own; the same ordering, with a real "
        "auth backend, is tests/test_resume_owner.py::"
        "test_as_middleware_the_owner_comes_from_the_apps_auth_outside_it"
    ),
    (
        "docs/reliability.md",
        "sse-bridge serve --upstream http://127.0.0.1:11434 "
        "--resume 'redis://127.0.0.1:6379/0?max_pending_bytes=16777216'",
    ): "needs Redis on its usual port; tests/test_resume_backlog.py reads the bound from a URL",
    ("docs/reliability.md", ".venv/bin/python benchmarks/bench_stalled.py --clients 20"): (
        "a measurement: a minute of CPU at full load; tests/test_stalled.py checks the cut-off"
    ),
    (
        "docs/reliability.md",
        ".venv/bin/python benchmarks/bench_stalled.py --clients 20 --send-timeout 2",
    ): "a measurement; tests/test_stalled.py checks the same release black box",
    ("README.md", "bash scripts/check"): (
        "the checks themselves: CI runs this very command, and a test cannot run the suite it is in"
    ),
    ("README.md", "pip install 'sse-bridge[http2]'"): (
        "installs into the current environment; scripts/setup already installs h2 (test extra)"
    ),
    ("README.md", ".venv/bin/python benchmarks/bench_stream.py"): MINUTES,
    ("docs/benchmarks.md", ".venv/bin/python benchmarks/bench_stream.py"): MINUTES,
    ("docs/benchmarks.md", ".venv/bin/python benchmarks/bench_stream.py --json results.json"): (
        MINUTES
    ),
    (
        "docs/benchmarks.md",
        ".venv/bin/python benchmarks/bench_stream.py --only sidecar-ollama,tutorial "
        "--skip-capacity",
    ): MINUTES,
    (
        "docs/benchmarks.md",
        ".venv/bin/python benchmarks/bench_stream.py --only sidecar-ollama,workers2 "
        "--capacity-steps 400,800,1200,1600,2000,2400",
    ): "a capacity sweep of many minutes on a machine of its own",
    ("docs/benchmarks.md", "git worktree add /tmp/before 26a2d5f"): (
        "checks out an earlier commit for a before/after run; tests/test_benchmarks.py runs the "
        "server roles on an earlier checkout"
    ),
    ("docs/benchmarks.md", "git worktree add /tmp/before f95838c"): (
        "checks out an earlier commit for a before/after run; tests/test_benchmarks.py runs the "
        "server roles on an earlier checkout"
    ),
    (
        "docs/benchmarks.md",
        ".venv/bin/python benchmarks/bench_stream.py --before /tmp/before --json results.json",
    ): MINUTES,
    ("docs/benchmarks.md", ".venv/bin/python benchmarks/probe.py resume"): (
        "about a minute; its --quick form is run by tests/test_benchmarks.py"
    ),
    ("docs/benchmarks.md", ".venv/bin/python benchmarks/probe.py resume --json FILE"): (
        "about a minute; its --quick form is run by tests/test_benchmarks.py"
    ),
    ("docs/benchmarks.md", ".venv/bin/python benchmarks/probe.py resume --profile memory"): (
        "a profile of about a minute, read by a person"
    ),
    (
        "docs/deploy.md",
        "sse-bridge serve --upstream http://127.0.0.1:11434 --dialect ollama --port 8001 \\\n"
        "--resume redis://127.0.0.1:6379/0",
    ): (
        "needs a real Ollama; tests/test_nginx_resume.py runs two bridges with --resume on a "
        "real redis-server behind deploy/nginx.conf, in front of the fake"
    ),
    (
        "docs/deploy.md",
        "sse-bridge serve --upstream http://127.0.0.1:11434 --dialect ollama --port 8002 \\\n"
        "--resume redis://127.0.0.1:6379/0",
    ): (
        "needs a real Ollama; tests/test_nginx_resume.py runs two bridges with --resume on a "
        "real redis-server behind deploy/nginx.conf, in front of the fake"
    ),
    (
        "docs/deploy.md",
        "curl -s -o /dev/null -w '%{http_version}\\n' https://chat.example.com/healthz",
    ): (
        "a public deployment (traffic goes to 127.0.0.1 only here); tests/test_http2.py checks "
        "the protocol nginx's TLS listener answers in"
    ),
    (
        "docs/deploy.md",
        "sse-bridge probe https://chat.example.com/api/chat \\\n"
        """-d '{"model":"llama3.2","messages":[{"role":"user","content":"""
        """"Count to fifty."}]}' \\\n"""
        "-H 'Authorization: Bearer ...' --streams 5",
    ): (
        "a public deployment with its API key; the same probe runs against nginx's TLS "
        "listener in test_the_http2_probe_runs_against_nginx_tls"
    ),
    (
        "docs/loadtesting.md",
        ".venv/bin/locust -f loadtests/locustfile.py --headless -u 200 -r 20 -t 2m \\\n"
        "--host https://chat.example.com --chat-path /api/chat --model llama3.2 \\\n"
        '--prompt "Count to fifty." --interval-ms 40 --csv results/prod '
        "--html results/prod.html \\\n"
        "--max-ttfe-p95-ms 2000",
    ): (
        "a public deployment for two minutes; scripts/loadtest runs the same locustfile against "
        "the local stack (tests/test_loadtests.py)"
    ),
    (
        "docs/loadtesting.md",
        "python -m loadtests.run --users 200 --duration 40 --results /tmp/ltdoc",
    ): ("the documented figures' heavier rows; the 100-user row runs in tests/test_loadtests.py"),
    (
        "docs/loadtesting.md",
        "python -m loadtests.run --users 300 --duration 40 --results /tmp/ltdoc",
    ): ("the documented figures' heavier rows; the 100-user row runs in tests/test_loadtests.py"),
    ("docs/operations.md", "docker compose -f deploy/compose.yaml up --build"): (
        "no Docker engine here: tests/test_compose.py checks compose.yaml against sse-bridge "
        "serve's options instead"
    ),
    ("docs/operations.md", 'pip install "sse-bridge[metrics]"'): (
        "installs into the current environment; scripts/setup already installs the metrics extra"
    ),
}


def test_every_command_and_snippet_is_run_or_listed() -> None:
    found = {(s.doc, s.key) for s in snippets()}
    assert not set(RUN) & set(NOT_RUN)
    unlisted = found - set(RUN) - set(NOT_RUN)
    assert not unlisted, f"run these in a test (RUN) or say why not (NOT_RUN): {sorted(unlisted)}"
    gone = (set(RUN) | set(NOT_RUN)) - found
    assert not gone, f"no longer in the docs: {sorted(gone)}"
    for test, _ in RUN.values():
        file, name = test.split("::")
        assert re.search(rf"^(async )?def {name}\(", (ROOT / "tests" / file).read_text(), re.M), (
            test
        )
    assert all(reason for reason in NOT_RUN.values())


def test_the_reader_finds_commands_comments_and_continuations() -> None:
    block = "bash a.sh --x 1   # a comment\n# prose\ndata: {}\ncurl -d 'a' \\\n  http://h/\n"
    assert list(_commands(block)) == ["bash a.sh --x 1", "curl -d 'a' \\\nhttp://h/"]


# Running them ------------------------------------------------------------------------------------


def shell(command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`command` through bash, from the repository, with this checkout's sse-bridge first."""
    env = {**os.environ, "PATH": f"{BIN.parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    kwargs.setdefault("cwd", ROOT)
    return subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, check=False, **kwargs
    )


@contextlib.contextmanager
def shell_server(command: str, port: int, cwd: Path = ROOT) -> Iterator[None]:
    """A server `command` (through bash) until the block ends, once it listens on `port`."""
    env = {**os.environ, "PATH": f"{BIN.parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port, process)
        yield
    finally:
        stop(process, signal.SIGINT)


def on_port(command: str, doc_port: int, port: int) -> str:
    """The doc's command with its port (in a URL or after --port) replaced by a free one."""
    replaced = command.replace(f"127.0.0.1:{doc_port}", f"127.0.0.1:{port}")
    return replaced.replace(f"--port {doc_port}", f"--port {port}")


def test_the_demo_script_runs() -> None:
    completed = shell(f"{snippet('README.md', 'bash scripts/demo')} --once --port 0", timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "curl -N -H 'Accept: text/event-stream'" in completed.stdout
    assert re.search(r"time to first token: \d+ ms", completed.stdout), completed.stdout


def test_the_middleware_snippets_answer_the_curl_as_shown(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    curl = "curl -N -H 'Accept: text/event-stream' -d '{}' http://127.0.0.1:8000/api/chat"
    shown = readme.split(curl, 1)[1].split("```", 1)[0].strip()
    assert "uvicorn app:app --port 8000" in readme
    for key in (
        "python: from starlette.applications import Starlette",
        "python: from fastapi import FastAPI",
    ):
        (tmp_path / "app.py").write_text(snippet("README.md", key))
        port = free_port()
        with shell_server(f"uvicorn app:app --port {port}", port, cwd=tmp_path):
            completed = shell(on_port(curl, 8000, port), timeout=DEADLINE)
            # Without the Accept header: the app's NDJSON, unchanged.
            plain = shell(f"curl -s -d '{{}}' http://127.0.0.1:{port}/api/chat", timeout=DEADLINE)
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.strip() == shown, key
        lines = [json.loads(line) for line in plain.stdout.splitlines()]
        assert [line["done"] for line in lines] == [False, False, False, True], key


@pytest.mark.timing
def test_the_sidecar_commands_run_as_written() -> None:
    doc = "README.md"
    fake, bridge = free_port(), free_port()
    keys = [s.key for s in snippets() if s.doc == doc]
    serve = next(k for k in keys if k.startswith("sse-bridge serve"))
    curl = next(k for k in keys if k.startswith("curl -N -H 'Accept: text/event-stream' \\"))
    probe = next(k for k in keys if k.startswith("sse-bridge probe http://"))
    fake_command = on_port(
        snippet(doc, "sse-bridge fake-ollama --port 11434 --tokens-per-second 20"), 11434, fake
    )
    with (
        shell_server(fake_command, fake),
        shell_server(on_port(on_port(serve, 11434, fake), 8000, bridge), bridge),
    ):
        answer = shell(on_port(curl, 8000, bridge), timeout=60)
        probed = shell(on_port(probe, 8000, bridge), timeout=60)
    events = [json.loads(event.data) for event in parse_sse(answer.stdout.encode())]
    assert [event["token"] for event in events[:-1]] == answer_tokens()
    assert events[-1]["finished"] is True
    assert probed.returncode == 0, probed.stdout + probed.stderr
    assert "5 stream(s), status 200" in probed.stdout
    assert "verdict: streaming" in probed.stdout


def test_the_http2_probe_runs_against_nginx_tls(tmp_path: Path) -> None:
    key = "sse-bridge probe https://chat.example.com/api/chat -d '...' --http2 --plot timeline.html"
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    chat["fake"] = {"tokens_per_second": 100, "num_tokens": 20}  # type: ignore[assignment]
    with fake_ollama() as upstream, contextlib.ExitStack() as stack:
        port = free_port()
        stack.enter_context(
            shell_server(
                f"sse-bridge serve --upstream {upstream} --dialect ollama --port {port}", port
            )
        )
        edge = stack.enter_context(
            nginx_edge(DEPLOY_CONF.read_text(), bridges=[port], workdir=tmp_path / "nginx")
        )
        assert edge.https is not None
        command = snippet("README.md", key).replace("https://chat.example.com", edge.https)
        command = command.replace("-d '...'", f"-d '{json.dumps(chat)}'")
        completed = shell(f"{command} --cacert {edge.certificate}", cwd=tmp_path, timeout=60)
    report = completed.stdout
    assert "error" not in report, report + completed.stderr
    assert "protocol             HTTP/2" in report
    assert "events / reads       21 /" in report
    page = (tmp_path / "timeline.html").read_text()
    assert "· 21 events ·" in page
    assert "0 events · inconclusive" not in page


def test_one_test_module_runs() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    completed = subprocess.run(
        ["bash", "-c", snippet("README.md", ".venv/bin/pytest tests/test_codec.py -q")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:]
    assert re.search(r"\d+ passed", completed.stdout)


@pytest.mark.anyio
async def test_the_middleware_metrics_snippet_counts_only_streams() -> None:
    from starlette.responses import StreamingResponse

    from tests._servers import serve
    from tests._wire import fetch

    namespace: dict[str, Any] = {}
    exec(snippet("docs/operations.md", "python: from fastapi import FastAPI"), namespace)
    app = namespace["app"]

    @app.post("/api/chat")  # type: ignore[untyped-decorator]
    async def chat() -> StreamingResponse:
        lines = ['{"response":"a","done":false}\n', '{"response":"","done":true}\n']
        return StreamingResponse(iter(lines), media_type="application/x-ndjson")

    with serve(app) as url:
        for _ in range(3):
            await fetch(f"{url}/metrics/", method="GET", body=b"")
            await fetch(f"{url}/docs", method="GET", body=b"")
        await fetch(f"{url}/api/chat", body=b"{}", headers={"accept": "text/event-stream"})
        scrape = await fetch(f"{url}/metrics/", method="GET", body=b"")
    text = scrape.body.decode()
    assert 'sse_bridge_streams_total{dialect="ollama",outcome="completed"} 1.0' in text


def test_the_resume_store_snippet_builds_both_stores() -> None:
    from sse_bridge import SSEBridgeMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    namespace: dict[str, Any] = {"app": app}
    exec(snippet("docs/resume.md", "python: from sse_bridge import SSEBridgeMiddleware"), namespace)
    outer = namespace["app"]
    assert isinstance(outer, SSEBridgeMiddleware)
    assert isinstance(outer.app, SSEBridgeMiddleware)
    assert type(outer.store).__name__ == "RedisStore"
    assert type(outer.app.store).__name__ == "MemoryStore"
