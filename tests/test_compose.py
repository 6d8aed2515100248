"""deploy/compose.yaml without Docker: every bridge would start, and waits for what it needs.

No Docker engine runs here, so `docker compose config` cannot. The file is read with the small
YAML reader of tests/test_deploy_files.py (PyYAML is not a dependency, and that reader refuses
what it does not understand), and each bridge service's command line and environment, on top of
the Dockerfile's `ENV` and `ENTRYPOINT`, go through the real `sse-bridge serve` option parsing
and checks, stopped just before it would listen. So a rule of `serve` (a metrics port, a resume
URL, a choice) that a compose value breaks fails here, and so does an `SSE_BRIDGE_*` name that
`serve` does not read, which click would otherwise ignore without a word.
"""

from __future__ import annotations

import re
import shlex
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
from click.testing import CliRunner

from sse_bridge._cli import server
from sse_bridge._cli.main import main
from sse_bridge._sidecar.options import ServerOptions, SidecarOptions
from tests.test_deploy_files import DEPLOY, compose

DOCKERFILE = DEPLOY / "Dockerfile"


def dockerfile() -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's `ENV` variables and its `ENTRYPOINT` (exec form)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                name, _, value = pair.partition("=")
                env[name] = value
        elif line.startswith("ENTRYPOINT "):
            entrypoint = [part.strip(' "') for part in line[11:].strip("[] ").split(",")]
    return env, entrypoint


def serve_envvars() -> set[str]:
    """Every environment variable `sse-bridge serve` reads."""
    command = main.get_command(click.Context(main), "serve")
    assert command is not None
    return {
        param.envvar
        for param in command.params
        if isinstance(param, click.Option) and isinstance(param.envvar, str)
    }


def bridges() -> dict[str, dict[str, Any]]:
    found = {
        name: service
        for name, service in compose()["services"].items()
        if "build" in service and service["build"]["dockerfile"] == "deploy/Dockerfile"
    }
    assert sorted(found) == ["bridge-1", "bridge-2"]
    return found


def start(
    service: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[ServerOptions, SidecarOptions]:
    """What `sse-bridge serve` would run with in this service's container, or a failure."""
    image_env, entrypoint = dockerfile()
    assert entrypoint == ["sse-bridge", "serve"]
    environment = {**image_env, **{k: str(v) for k, v in service["environment"].items()}}
    command = service.get("command", [])
    started: list[tuple[ServerOptions, SidecarOptions]] = []

    def record(server_options: ServerOptions, options: SidecarOptions) -> None:
        started.append((server_options, options))

    monkeypatch.setattr(server, "serve", record)
    # Only the container's variables: none of this machine's SSE_BRIDGE_* may leak in.
    clean: dict[str, str | None] = dict.fromkeys(serve_envvars())
    result = CliRunner().invoke(main, ["serve", *command], env={**clean, **environment})
    assert result.exit_code == 0, result.output
    (options,) = started
    return options


def test_every_variable_a_bridge_sets_is_one_serve_reads() -> None:
    known = serve_envvars()
    for name, service in bridges().items():
        unknown = {key for key in service["environment"] if key.startswith("SSE_BRIDGE_")} - known
        assert not unknown, f"{name}: sse-bridge serve reads no {sorted(unknown)}"


def test_each_bridge_starts_with_the_options_the_stack_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    for name, service in bridges().items():
        server_options, options = start(service, monkeypatch)
        assert server_options.host == "0.0.0.0", name
        assert server_options.port == 8000, name
        # Prometheus scrapes the metrics port (deploy/prometheus.yml): the metrics must be on.
        assert options.metrics, name
        assert options.metrics_port == 9100, name
        upstream = urlsplit(options.upstream)
        assert upstream.hostname in services, f"{name}: no service {upstream.hostname}"
        assert isinstance(options.resume, str), name
        redis = urlsplit(options.resume)
        assert redis.scheme == "redis", name
        assert redis.hostname in services, f"{name}: no service {redis.hostname}"
        # A bridge that finds Redis away at start exits: it waits for Redis to answer, and
        # starts again after it has stopped.
        assert service["depends_on"][redis.hostname] == {"condition": "service_healthy"}, name
        assert "healthcheck" in services[redis.hostname]
        assert upstream.hostname in service["depends_on"], name
        assert service["restart"] in {"always", "unless-stopped", "on-failure"}, name
        # Docker's stop timeout above the bridge's --grace, so streams end cleanly (Dockerfile).
        stop_grace = int(service["stop_grace_period"].removesuffix("s"))
        assert stop_grace > options.grace, name


def test_the_nginx_service_rewrites_lines_the_config_has() -> None:
    (nginx,) = [s for s in compose()["services"].values() if s.get("image", "").startswith("nginx")]
    expressions = re.findall(r"-e '([^']*)'", nginx["command"])
    assert len(expressions) == 5
    conf = (DEPLOY / "nginx.conf").read_text()
    for expression in expressions:
        if expression.startswith("s/"):
            pattern = expression.split("/")[1]
        else:
            pattern = expression.strip("/").removesuffix("/d")
        assert re.search(pattern.replace(".", r"\."), conf, re.M), expression


def test_the_header_says_to_pull_the_model_first() -> None:
    header = (DEPLOY / "compose.yaml").read_text().split("\nx-bridge", 1)[0]
    model = re.search(r'"model":"([^"]+)"', header)
    assert model is not None
    assert f"exec ollama ollama pull {model[1]}" in header
    assert "Prometheus" in header
    assert "Grafana" in header
