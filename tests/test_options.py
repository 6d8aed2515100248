"""The options objects: one default, one check and one meaning of "off" per option, everywhere."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from pathlib import Path
from typing import Any

import anyio
import click
import pytest
from click.testing import CliRunner

from sse_bridge import SSEBridgeMiddleware, create_proxy
from sse_bridge._cli.main import main
from sse_bridge._core.options import Spec, check, option, required, spec_of
from sse_bridge._core.validate import check_count
from sse_bridge._middleware.options import BridgeOptions
from sse_bridge._sidecar.options import ServerOptions, SidecarOptions
from sse_bridge.testing import FakeOllama, FakeOllamaConfig
from tests._servers import serve
from tests._wire import fetch

README = Path(__file__).parent.parent / "README.md"


async def app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def fields_of(cls: type[Any]) -> dict[str, Any]:
    return {item.name: item.default for item in dataclasses.fields(cls)}


@pytest.mark.parametrize(
    ("function", "options", "extra"),
    [
        (SSEBridgeMiddleware.__init__, BridgeOptions, {"self", "app", "metrics"}),
        (create_proxy, SidecarOptions, set()),
    ],
)
def test_each_signature_takes_every_option_with_its_one_default(
    function: Any, options: type[Any], extra: set[str]
) -> None:
    parameters = inspect.signature(function).parameters
    missing = set(fields_of(options)) - set(parameters)
    unknown = set(parameters) - extra - set(fields_of(options))
    assert not missing, f"{function.__qualname__} lacks the keyword(s) {sorted(missing)}"
    assert not unknown, f"{function.__qualname__} takes {sorted(unknown)}, which are no options"
    for name, default in fields_of(options).items():
        if default is dataclasses.MISSING:
            assert parameters[name].default is inspect.Parameter.empty
        else:
            assert parameters[name].default == default, name


def serve_params() -> dict[str, click.Option]:
    command = main.commands["serve"]
    return {param.name: param for param in command.params if isinstance(param, click.Option)}


def test_serve_offers_every_option_the_command_line_can_carry_with_its_default() -> None:
    params = serve_params()
    offered = set()
    for cls in (SidecarOptions, ServerOptions):
        for item in dataclasses.fields(cls):
            spec = spec_of(item)
            if spec.cli == "":
                continue
            name = (spec.cli or item.name).replace("-", "_")
            offered.add(name)
            param = params[name]
            assert param.help == spec.help
            assert param.envvar == "SSE_BRIDGE_" + name.upper()
            if item.default is dataclasses.MISSING:
                assert param.required
            elif item.default is None and spec.cli_off:
                assert param.default == spec.cli_off
            else:
                assert param.default == item.default, name
    assert offered == set(params)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-streams", "0"], "0 is not in the range x>=1"),
        (["--metrics-port", "70000"], "70000 is not in the range 0<=x<=65535"),
        (["--log-format", "xml"], "'xml' is not one of 'text', 'json'"),
        (["--api-key", ""], "--api-key must not be empty"),
    ],
)
def test_the_command_line_refuses_what_the_options_refuse(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", "--upstream", "http://h", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_none_is_the_older_spelling_of_off_and_becomes_zero() -> None:
    middleware = SSEBridgeMiddleware(app, keepalive=None)
    assert middleware.options.keepalive == 0
    sidecar = create_proxy(
        upstream="http://127.0.0.1:9", commit_after=None, read_timeout=None, metrics_port=None
    )
    proxy = sidecar.proxy
    assert proxy.commit_after == 0
    # 0 (off) reaches httpx as None: no read timeout at all.
    assert proxy.timeouts["read"] is None
    assert (
        create_proxy(upstream="http://127.0.0.1:9", read_timeout=0).proxy.timeouts["read"] is None
    )
    assert create_proxy(upstream="http://127.0.0.1:9", read_timeout=2).proxy.timeouts["read"] == 2


def test_options_are_frozen_and_sequences_become_tuples() -> None:
    options = SidecarOptions(
        upstream="http://h",
        cors_origins=["http://a"],
        commit_paths=["/x"],
    )
    assert options.cors_origins == ("http://a",)
    assert options.commit_paths == ("/x",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_streams = 5  # type: ignore[misc]
    assert BridgeOptions(ndjson_types=["Application/X-NDJSON"]).ndjson_types == (
        "application/x-ndjson",
    )


def test_the_worker_hand_off_keeps_every_option() -> None:
    options = SidecarOptions(
        upstream="http://127.0.0.1:11434",
        dialect="openai",
        keepalive=3,
        cors_origins=("http://a", "http://b"),
        api_key="k",
        resume="memory",
        metrics=True,
        metrics_port=9100,
        log_format="json",
    )
    assert SidecarOptions.from_json(options.to_json()) == options


@pytest.mark.parametrize("name", ["dialect", "resume"])
def test_objects_cannot_travel_to_worker_processes(name: str) -> None:
    def custom(obj: Any) -> list[Any]:
        return []

    class Store:
        record = follow = stop = finished_at = None

    value: Any = custom if name == "dialect" else Store()
    options = SidecarOptions(upstream="http://h", **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be a name, not an object"):
        options.to_json()


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        (Spec("", "seconds", meaning="m"), -1, "x must be a finite number of seconds >= 0 (m)"),
        (Spec("", "seconds"), float("inf"), "x must be a finite number of seconds"),
        (Spec("", "seconds"), True, "x must be a finite number of seconds"),
        (Spec("", "count", minimum=1, meaning="m"), 0, "x must be an integer >= 1 (m)"),
        (Spec("", "count", minimum=1), 2.0, "x must be an integer >= 1"),
        # bool is an int subclass: True would be taken for 1.
        (Spec("", "count", minimum=1), True, "x must be an integer >= 1"),
        (Spec("", "count", minimum=0), False, "x must be an integer >= 0"),
        (Spec("", "port"), True, "x must be an integer >= 0"),
        (Spec("", "port", meaning="off"), -1, "x must be an integer >= 0 (off), got -1"),
        # An integer too large for a float is no number of seconds either.
        (Spec("", "seconds"), 10**400, "x must be a finite number of seconds"),
        (Spec("", "port", meaning="off"), 65536, "x must be a TCP port (0-65535; 0: off)"),
        (Spec("", "port"), -1, "x must be an integer >= 0"),
        (Spec("", "flag"), 2, "x must be True or False, got 2"),
        (Spec("", "flag"), "yes", "x must be True or False, got 'yes'"),
        (Spec("", "text", meaning="m"), b"k", "x must be a string or None, got b'k'"),
        (Spec("", "texts", meaning="a list of ys"), b"y", "x must be a list of ys, not one string"),
        (Spec("", "choice", choices=("a", "b")), "c", "x must be 'a' or 'b', not 'c'"),
        (Spec("", "text", meaning="give one"), "", "x must not be empty: give one"),
        (Spec("", "texts", meaning="a list of ys"), "y", "x must be a list of ys, not one string"),
        (
            Spec("", "texts", meaning="a list of ys"),
            [b"y"],
            "x must be a list of ys (strings), got b'y'",
        ),
    ],
)
def test_each_kind_of_option_refuses_a_bad_value(spec: Spec, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check("x", value, spec)


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (Spec("", "seconds"), 0),
        (Spec("", "seconds"), 2.5),
        (Spec("", "count", minimum=1), 1),
        (Spec("", "port"), 0),
        (Spec("", "port"), 65535),
        (Spec("", "flag"), False),
        (Spec("", "flag"), 0),
        (Spec("", "flag"), 1),
        (Spec("", "choice", choices=("a",)), "a"),
        (Spec("", "text"), None),
        (Spec("", "texts"), ("a", "b")),
        (Spec("", "object"), object()),
    ],
)
def test_each_kind_of_option_takes_a_good_value(spec: Spec, value: Any) -> None:
    check("x", value, spec)


def test_an_optional_count_takes_none_and_says_so_when_refusing() -> None:
    check_count("n", None, 1, "m", optional=True)
    with pytest.raises(ValueError, match=re.escape("n must be None or an integer >= 1 (m), got 0")):
        check_count("n", 0, 1, "m", optional=True)
    with pytest.raises(ValueError, match=re.escape("n must be an integer >= 1 (m), got None")):
        check_count("n", None, 1, "m")


def test_an_option_is_a_field_with_its_default_and_spec() -> None:
    spec = Spec("help", "count")

    @dataclasses.dataclass
    class Made:
        needed: int = required(spec)
        given: int = option(3, spec)

    needed, given = dataclasses.fields(Made)
    assert (needed.default, given.default) == (dataclasses.MISSING, 3)
    assert spec_of(needed) is spec_of(given) is spec
    with pytest.raises(TypeError, match=r"^option defaults are immutable: use a tuple$"):
        option([], spec)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry": -1}, "retry must be an integer >= 0 (the reconnection time in milliseconds)"),
        ({"retry": True}, "retry must be an integer >= 0"),
        ({"resume": "nope"}, "resume must be 'memory', a redis://host:port/db URL, or off"),
    ],
)
def test_the_middleware_options_refuse(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        BridgeOptions(**options)


def test_a_retry_of_zero_is_taken() -> None:
    assert BridgeOptions(retry=0).retry == 0


def test_the_readme_table_lists_every_serve_option_with_its_default() -> None:
    rows = re.findall(r"^\| (`--.+?) \| (.+?) \| (.+?) \|", README.read_text(), re.M)
    listed: dict[str, str] = {}
    for names, _env, defaults in rows:
        flags = re.findall(r"`(--[a-z-]+)`", names)
        values = [value.strip().strip("`") for value in defaults.split(", ")]
        assert len(values) == len(flags), names
        listed.update(zip(flags, values, strict=True))
    params = serve_params()
    offered = {f"--{name.replace('_', '-')}" for name in params}
    assert not offered - set(listed), f"README's serve table lacks {sorted(offered - set(listed))}"
    assert not set(listed) - offered, f"README lists {sorted(set(listed) - offered)}, not offered"
    for name, param in params.items():
        shown = listed[f"--{name.replace('_', '-')}"]
        default = param.default
        if param.required:
            assert shown == "(required)"
        elif param.is_flag:
            assert shown == ("on" if default else "off"), name
        elif default is None or default == ():
            assert shown == "none", name
        elif isinstance(default, tuple):
            assert shown.split() == list(default), name
        else:
            assert shown == f"{default:g}" if isinstance(default, float) else str(default), name


def test_the_readme_table_lists_every_middleware_option_with_its_default() -> None:
    section = README.read_text().split("### Options", 1)[1].split("\n###", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (.+?) \|", section, re.M))
    defaults = fields_of(BridgeOptions)
    # metrics is an object the middleware records in, not an option of the stream.
    expected = {*defaults, "metrics"}
    assert not expected - set(rows), (
        f"README's middleware table lacks {sorted(expected - set(rows))}"
    )
    assert not set(rows) - expected, f"README lists {sorted(set(rows) - expected)}, not options"
    for name, default in defaults.items():
        if isinstance(default, tuple):
            assert re.findall(r"`([^`]+)`", rows[name]) == list(default), name
        else:
            assert rows[name].strip("`") == repr(default).replace("'", '"'), name


@pytest.mark.parametrize("path", ["/streams?x=1", "/streams?", "streams", "", b"/streams", None])
def test_the_resume_path_is_a_bare_path(path: Any) -> None:
    # A query would be cut off the request path before routing: the endpoints would never match.
    with pytest.raises(ValueError, match="resume_path must be a path such as '/streams'"):
        BridgeOptions(resume="memory", resume_path=path)


def test_the_resume_path_takes_any_absolute_path() -> None:
    assert BridgeOptions(resume="memory", resume_path="/api/v1/streams").resume_path == (
        "/api/v1/streams"
    )


@pytest.mark.anyio
async def test_older_spellings_are_still_taken() -> None:
    # None for no CORS origins, 0 and 1 for the flags: accepted before the options objects.
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=2))
    with serve(fake) as upstream:
        sidecar = create_proxy(upstream=upstream, dialect="ollama", cors_origins=None, event_ids=1)  # type: ignore[arg-type]
        with serve(sidecar) as url:
            response = await fetch(
                f"{url}/api/chat",
                body=b'{"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}',
                headers={"accept": "text/event-stream", "origin": "http://app.example"},
            )
    assert response.status == 200
    assert "access-control-allow-origin" not in response.headers
    assert b"\nid: " in response.body, response.body
    middleware = SSEBridgeMiddleware(app, event_ids=1)  # type: ignore[arg-type]
    assert middleware.options.event_ids is True
    assert SidecarOptions(upstream="http://h", cors_origins=None).cors_origins == ()  # type: ignore[arg-type]


def fastapi_with_a_bad_option() -> Any:
    from fastapi import FastAPI

    bad = FastAPI()
    bad.add_middleware(SSEBridgeMiddleware, dialect="ollama", keepalive=-1)
    return bad


def test_a_bad_middleware_option_is_logged_when_starlette_builds_the_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # add_middleware only stores the options: Starlette builds the middleware at the app's first
    # message, the lifespan startup, which uvicorn's default --lifespan auto hides when it fails.
    bad = fastapi_with_a_bad_option()
    with (
        caplog.at_level(logging.ERROR, logger="sse_bridge"),
        pytest.raises(ValueError, match="keepalive"),
    ):
        bad.build_middleware_stack()
    (record,) = [r for r in caplog.records if r.name == "sse_bridge"]
    assert record.getMessage() == (
        "SSEBridgeMiddleware cannot be built: keepalive must be a finite number of seconds >= 0 "
        "(0 or None sends no keepalives), got -1"
    )


@pytest.mark.anyio
async def test_uvicorn_with_lifespan_on_refuses_to_start_with_a_bad_middleware_option() -> None:
    import uvicorn

    config = uvicorn.Config(
        fastapi_with_a_bad_option(), port=0, lifespan="on", log_level="critical"
    )
    server = uvicorn.Server(config)
    with anyio.fail_after(10), pytest.raises(SystemExit) as exited:
        await server.serve()
    assert exited.value.code == 3
    assert not server.started


def refused(message: str) -> Any:
    """The whole message, word for word: what a user reads is the option's documentation."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize("jitter", [-0.1, 1.01, 1.5, 2, True, "0.2", float("nan"), None])
def test_a_retry_jitter_that_is_not_a_fraction_is_refused_in_words(jitter: Any) -> None:
    message = f"retry_jitter must be a fraction from 0 to 1 (0.2: retry +-20 %), got {jitter!r}"
    with refused(message):
        BridgeOptions(retry=1000, retry_jitter=jitter)


@pytest.mark.parametrize("jitter", [0, 0.0, 0.2, 1, 1.0])
def test_a_retry_jitter_from_zero_to_one_is_taken(jitter: float) -> None:
    assert BridgeOptions(retry=1000, retry_jitter=jitter).retry_jitter == jitter


def test_a_resume_owner_that_is_not_a_function_is_refused_in_words() -> None:
    with refused(
        "resume_owner must be a function of the scope that returns the owner's id "
        "(a string) or None, not 'x-user'"
    ):
        BridgeOptions(resume="memory", resume_owner="x-user")  # type: ignore[arg-type]


class _StoreWithoutOwners:
    """A store of the protocol's first version: it cannot keep who owns a stream."""

    def record(self, stop: object) -> None: ...
    def follow(self) -> None: ...
    def stop(self) -> None: ...
    def finished_at(self) -> None: ...


class _StoreWithOwners(_StoreWithoutOwners):
    def bound_to(self) -> None: ...


def test_an_owner_needs_a_store_that_keeps_owners() -> None:
    with refused(
        "resume_owner binds streams to owners, which this store cannot keep: "
        "a store of your own needs the bound_to method (docs/resume.md)"
    ):
        BridgeOptions(resume=_StoreWithoutOwners(), resume_owner=lambda scope: None)  # type: ignore[arg-type]


@pytest.mark.parametrize("store", ["memory", _StoreWithOwners()], ids=["named", "own"])
def test_an_owner_function_is_taken_with_a_store_that_keeps_owners(store: Any) -> None:
    def owner(scope: Any) -> str | None:
        return None

    assert BridgeOptions(resume=store, resume_owner=owner).resume_owner is owner


def test_a_store_that_keeps_no_owners_is_taken_without_an_owner_function() -> None:
    store: Any = _StoreWithoutOwners()
    assert BridgeOptions(resume=store).resume is store


@pytest.mark.parametrize("path", ["/", "//", "///"])
def test_the_resume_path_is_not_the_root(path: str) -> None:
    with refused(
        f"resume_path must be a path such as '/streams', not the root {path!r}: "
        "every request would be taken for a resume"
    ):
        BridgeOptions(resume="memory", resume_path=path)
