"""The ``sse-bridge`` command: thin click wrappers around keyword-only functions."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from typing import Any, TypeVar

import click

from sse_bridge._core.options import Options, spec_of
from sse_bridge._sidecar.options import ServerOptions, SidecarOptions

F = TypeVar("F", bound=Callable[..., Any])
OptionsT = TypeVar("OptionsT", bound=Options)


def _option(
    name: str, *, flag: bool = False, prefix: str = "SSE_BRIDGE_", **kwargs: Any
) -> Callable[[F], F]:
    """A click option that also reads <prefix><NAME> and shows its default in --help."""
    decls = [f"--{name}/--no-{name}"] if flag else [f"--{name}"]
    envvar = _envvar(name, prefix)
    option: Callable[[F], F] = click.option(
        *decls, envvar=envvar, show_envvar=True, show_default=True, **kwargs
    )
    return option


def _envvar(name: str, prefix: str = "SSE_BRIDGE_") -> str:
    return prefix + name.upper().replace("-", "_")


SECONDS = click.FloatRange(min=0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sse-bridge")
def main() -> None:
    """Stream NDJSON (Ollama and friends) to browsers as unbuffered Server-Sent Events."""


def _from_options(*classes: type[Options]) -> Callable[[F], F]:
    """The click options of these options classes' fields, in their order, from their specs."""
    items = [item for cls in classes for item in _offered(cls)]
    # The required ones first, where --help is read first; the rest in their classes' order.
    items.sort(key=lambda item: item.default is not MISSING)

    def decorate(command: F) -> F:
        for item in reversed(items):
            command = _option(_flag_name(item), **_click_settings(item))(command)
        return command

    return decorate


def _offered(cls: type[Options]) -> list[Field[Any]]:
    """The fields of ``cls`` the command line offers (an object, say, it does not)."""
    return [item for item in fields(cls) if spec_of(item).cli != ""]


def _flag_name(item: Field[Any]) -> str:
    return spec_of(item).cli or item.name.replace("_", "-")


def _click_settings(item: Field[Any]) -> dict[str, Any]:
    spec = spec_of(item)
    settings: dict[str, Any] = {"help": spec.help}
    if item.default is MISSING:
        settings["required"] = True
    elif item.default is None and spec.cli_off:
        settings["default"] = spec.cli_off
    else:
        settings["default"] = item.default
    kind = spec.kind
    if kind == "seconds":
        settings["type"] = SECONDS
    elif kind == "count":
        settings["type"] = click.IntRange(min=spec.minimum)
    elif kind == "port":
        settings["type"] = click.IntRange(0, 65535)
    elif kind == "flag":
        settings["flag"] = True
    elif kind == "choice" or spec.cli_choices:
        settings["type"] = click.Choice(spec.cli_choices or spec.choices)
    elif kind == "texts":
        settings["multiple"] = True
    return settings


def _options_from_click(cls: type[OptionsT], values: dict[str, Any]) -> OptionsT:
    """``cls`` made from the values click parsed for its fields (taken out of ``values``)."""
    chosen: dict[str, Any] = {}
    for item in _offered(cls):
        spec = spec_of(item)
        value = values.pop(_flag_name(item).replace("-", "_"))
        if (
            value is None
            and spec.kind == "text"
            and os.environ.get(_envvar(_flag_name(item))) == ""
        ):
            # click takes an empty variable for an unset one: SSE_BRIDGE_API_KEY= would turn
            # the API key off without a word. Empty is refused as the flag's "" is.
            value = ""
        chosen[item.name] = None if spec.cli_off and value == spec.cli_off else value
    return cls(**chosen)


@main.command()
@_from_options(SidecarOptions, ServerOptions)
def serve(**values: Any) -> None:
    """Run the bridge as a reverse proxy in front of an NDJSON server such as Ollama."""
    from sse_bridge._cli.server import serve as run

    try:
        server = _options_from_click(ServerOptions, values)
        options = _options_from_click(SidecarOptions, values)
    except ValueError as exc:
        raise click.UsageError(_in_flags(str(exc), SidecarOptions, ServerOptions)) from None
    try:
        run(server, options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _in_flags(message: str, *classes: type[Options]) -> str:
    """An option's message in this command's terms: it starts with the option's name."""
    name, space, rest = message.partition(" ")
    for cls in classes:
        for item in _offered(cls):
            if item.name == name:
                return f"--{_flag_name(item)}{space}{rest}"
    return message


def _fake(name: str, **kwargs: Any) -> Callable[[F], F]:
    return _option(name, prefix="SSE_BRIDGE_FAKE_", **kwargs)


@main.command("fake-ollama")
@_fake("host", default="127.0.0.1", help="Interface to listen on.")
@_fake("port", default=11434, type=click.IntRange(0, 65535), help="Port to listen on.")
@_fake("tokens-per-second", default=20.0, type=SECONDS, help="Token pace; 0: as fast as possible.")
@_fake(
    "load-delay", default=0.0, type=SECONDS, help="Seconds before any header, like a model load."
)
@_fake("num-tokens", type=click.IntRange(min=0), help="Answer length; default: the whole sample.")
@_fake("fail-after", type=click.IntRange(min=0), help="Fail after this many tokens.")
@_fake(
    "failure",
    default="error",
    type=click.Choice(["error", "close"]),
    help="error: an Ollama error line; close: drop the connection.",
)
@_fake("malformed-every", type=click.IntRange(min=1), help="A non-JSON line after every Nth token.")
@_fake("think", flag=True, default=False, help="Send thinking chunks before the answer.")
@_fake("stall-after", type=click.IntRange(min=0), help="Go silent after this many tokens...")
@_fake("stall-seconds", default=0.0, type=SECONDS, help="...for this many seconds.")
@_fake(
    "log-level", default="info", type=click.Choice(["warning", "info", "debug"]), help="Log level."
)
def fake_ollama(**options: Any) -> None:
    """Run the embedded fake Ollama: paced tokens and injectable faults, no model needed.

    A request may override any option with a top-level "fake" object in its JSON body, e.g.
    {"model": "llama3.2", "prompt": "hi", "fake": {"fail_after": 3}}.
    """
    import uvicorn

    from sse_bridge._testing.fake import FakeOllama, FakeOllamaConfig

    server = {key: options.pop(key) for key in ("host", "port", "log_level")}
    try:
        config = FakeOllamaConfig(**options)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    uvicorn.run(FakeOllama(config), **server)


def _demo(name: str, **kwargs: Any) -> Callable[[F], F]:
    return _option(name, prefix="SSE_BRIDGE_DEMO_", **kwargs)


@main.command()
@_demo("host", default="127.0.0.1", help="Interface for both servers (keep it on loopback).")
@_demo(
    "port", default=8000, type=click.IntRange(0, 65535), help="The bridge's port (if taken, any)."
)
@_demo("upstream-port", default=0, type=click.IntRange(0, 65535), help="The fake's port; 0: any.")
@_demo("model", default="llama3.2", help="Model name sent to the fake upstream.")
@_demo("prompt", default="Why stream tokens?", help="The question asked.")
@_demo("tokens-per-second", default=20.0, type=SECONDS, help="The fake model's pace.")
@_demo("once", flag=True, default=False, help="Exit after the sample answer instead of serving.")
def demo(**options: Any) -> None:
    """See tokens stream: the fake Ollama and the bridge on loopback, and one answer live."""
    import sys

    import anyio

    from sse_bridge._cli.demo import run_demo

    answer = anyio.run(lambda: run_demo(**options, out=sys.stdout))
    if answer.error or not answer.tokens:
        raise SystemExit(1)


def _header(value: str) -> tuple[str, str]:
    name, colon, rest = value.partition(":")
    if not colon or not name.strip():
        raise click.BadParameter(f"headers look like 'Name: value', not {value!r}")
    return name.strip(), rest.strip()


@main.command()
@click.argument("url")
@click.option(
    "--method", "-X", default=None, help="HTTP method.  [default: POST with --data, else GET]"
)
@click.option("--data", "-d", default=None, help="Request body (for example Ollama JSON).")
@click.option("--header", "-H", multiple=True, help="A request header 'Name: value'; repeatable.")
@click.option(
    "--interval-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The upstream's pace between events, if known; else the mean gap stands in for it.",
)
@click.option(
    "--streams",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Concurrent streams.",
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds per stream.",
)
@click.option(
    "--http2",
    is_flag=True,
    help="Offer HTTP/2 (ALPN on https://, prior knowledge on http://); needs sse-bridge[http2].",
)
@click.option("--insecure", "-k", is_flag=True, help="Do not check the server's TLS certificate.")
@click.option(
    "--cacert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Trust the certificates in this PEM file (a self-signed server's, say).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write each stream's timeline of event arrivals to this .svg or .html file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def probe(
    url: str,
    method: str | None,
    data: str | None,
    header: tuple[str, ...],
    interval_ms: float | None,
    streams: int,
    timeout: float,
    http2: bool,
    insecure: bool,
    cacert: str | None,
    plot: str | None,
    as_json: bool,
) -> None:
    """Find buffering on the way to URL: read streams as they arrive and judge them.

    Exits 0 when events arrive one by one (streaming), 1 when they arrive together (buffered),
    2 when the figures do not tell (inconclusive, including errors).
    """
    import sys
    from pathlib import Path

    import anyio

    from sse_bridge._probe.client import probe as run_probe
    from sse_bridge._probe.timeline import timeline_format

    if plot is not None:
        try:
            timeline_format(plot)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--plot'") from None
        if not Path(plot).resolve().parent.is_dir():
            raise click.BadParameter(f"no directory to write {plot} in", param_hint="'--plot'")
    headers = [_header(value) for value in header]
    if data is not None and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("content-type", "application/json"))
    try:
        result = anyio.run(
            lambda: run_probe(
                url,
                method=method or ("POST" if data is not None else "GET"),
                body=(data or "").encode(),
                headers=headers,
                streams=streams,
                interval=None if interval_ms is None else interval_ms / 1000,
                deadline=timeout,
                http2=http2,
                insecure=insecure,
                cacert=cacert,
            )
        )
    except (ValueError, ImportError) as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(_probe_output(result, as_json=as_json, plot=plot))


def _probe_hints(result: Any) -> list[str]:
    """The library's advice in this command's terms: its messages name keyword arguments."""
    from sse_bridge._probe.analysis import PACE_UNKNOWN
    from sse_bridge._probe.client import UNTRUSTED

    hints = []
    if any(UNTRUSTED in (stream.error or "") for stream in result.streams):
        hints.append("trust the server's issuer with --cacert FILE, or skip the check with -k")
    if result.analysis.reason == PACE_UNKNOWN:
        hints.append("give the upstream's pace between events with --interval-ms")
    return hints


def _probe_output(result: Any, *, as_json: bool, plot: str | None) -> int:
    """Print the probe's figures, write its timeline; the exit status.

    A frame of its own: coverage's tracer (CPython 3.11) loses the lines that follow anyio.run()
    in the frame that called it.
    """
    import json

    from sse_bridge._probe.analysis import format_report
    from sse_bridge._probe.timeline import write_timeline

    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
    else:
        click.echo(format_report(result))
        for hint in _probe_hints(result):
            click.echo(f"hint: {hint}", err=True)
    if plot is not None:
        try:
            write_timeline(result, plot)
        except OSError as exc:
            click.echo(f"Error: cannot write the timeline: {exc}", err=True)
            return 2
        click.echo(f"timeline: {plot}", err=True)
    exit_status: int = result.exit_status
    return exit_status
