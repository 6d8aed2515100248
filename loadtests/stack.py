"""Start the pieces of a deployment on free loopback ports, wait for them, and stop them.

Used by `loadtests/run.py` and by the test suite: the fake Ollama and the bridge as real
`sse-bridge` processes, and nginx with `deploy/nginx.conf` (or a naive config) rendered with
free ports, a private working directory and, for its TLS listener, a throwaway self-signed
certificate.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

# free_port is the tests' too (`from loadtests.stack import free_port`).
from sse_bridge._testing.loopback import accepts, wait_until
from sse_bridge._testing.loopback import free_port as free_port

BIN = Path(sys.executable).parent / "sse-bridge"
DEADLINE = 15.0
DEPLOY_CONF = Path(__file__).parent.parent / "deploy" / "nginx.conf"
# The response header `expose_upstream` adds: which bridge nginx sent a request to.
UPSTREAM_HEADER = "X-Upstream-Addr"

# The negative control: what many setups have. nginx speaks HTTP/1.0 to the upstream and
# buffers responses (both defaults before 1.29.7), with no directive to say otherwise.
NAIVE_CONF = """
events {}
http {
    server {
        listen 127.0.0.1:8080;
        location / {
            proxy_pass http://127.0.0.1:8001;
        }
    }
}
"""


class StackError(RuntimeError):
    """A piece of the stack did not start."""


def _wait(ready: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    """Poll `ready` until it is true, within DEADLINE; StackError if `process` exits first."""

    def alive_and_ready() -> bool:
        if process.poll() is not None:
            raise StackError(f"{process.args!r} exited: {process.communicate()!r}")
        return ready()

    try:
        wait_until(alive_and_ready, timeout=DEADLINE, interval=0.05)
    except TimeoutError:
        raise StackError(what) from None


def wait_http(url: str, process: subprocess.Popen[str]) -> None:
    """Poll `url` until it answers below 500, with a bounded deadline (never a fixed sleep)."""

    def answers() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(url, timeout=1).status_code < 500
        return False

    _wait(answers, process, f"{url} did not become ready")


def wait_port(port: int, process: subprocess.Popen[str]) -> None:
    _wait(lambda: accepts(port), process, f"nothing listened on port {port}")


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
    process.communicate(timeout=DEADLINE)


@contextlib.contextmanager
def running(
    *args: str,
    ready_path: str = "/healthz",
    port: int | None = None,
    command: Sequence[str] = (str(BIN),),
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run `sse-bridge <args> --port <port>`; yield its URL and process; stop it."""
    port = port or free_port()
    process = subprocess.Popen(
        [*command, *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + ready_path, process)
        yield url, process
    finally:
        stop(process)


@contextlib.contextmanager
def fake_ollama(*options: str) -> Iterator[str]:
    """`sse-bridge fake-ollama <options>` on a free port; yield its URL; stop it."""
    with running("fake-ollama", *options, "--log-level", "warning", ready_path="/") as (url, _):
        yield url


@contextlib.contextmanager
def bridges(upstream: str, *options: str, count: int = 2) -> Iterator[list[int]]:
    """`count` `sse-bridge serve --dialect ollama <options>` in front of `upstream`; yield their
    ports; stop them."""
    ports = [free_port() for _ in range(count)]
    args = ("serve", "--upstream", upstream, "--dialect", "ollama", "--log-level", "warning")
    with contextlib.ExitStack() as stack:
        for port in ports:
            stack.enter_context(running(*args, *options, port=port))
        yield ports


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise StackError("nginx is required: apt-get install nginx")
    return found


def _replace(pattern: str, replacement: str, text: str) -> str:
    new, count = re.subn(pattern, replacement, text)
    if not count:
        raise StackError(f"the nginx config no longer has {pattern!r}: update loadtests/stack.py")
    return new


def round_robin(conf: str) -> str:
    """`conf` with nginx's default round robin in place of `least_conn`.

    Consecutive requests then alternate between the bridges (across nginx's workers too, as the
    upstream block has a shared `zone`): what the resume tests need to land each request on the
    other bridge.
    """
    return _replace(r"\n[ \t]*least_conn;[^\n]*", "", conf)


def expose_upstream(conf: str, header: str = UPSTREAM_HEADER) -> str:
    """`conf` with a response header naming the bridge (`127.0.0.1:<port>`) nginx picked."""
    return _replace(
        r"(\n([ \t]*)proxy_pass http://sse_bridge;)",
        rf"\1\n\2add_header {header} $upstream_addr always;",
        conf,
    )


# The TLS listener of deploy/nginx.conf, in either syntax: "listen 443 ssl http2;" (before nginx
# 1.25.1) or "listen 443 ssl;" with "http2 on;". Directives only, never the comments that show
# the other syntax.
TLS_LISTEN = r"(?m)^([ \t]*)listen 443 ssl( http2)?;"
HTTP2_ON = r"(?m)^([ \t]*)http2 on;"


def has_tls(conf: str) -> bool:
    return re.search(TLS_LISTEN, conf) is not None


def without_http2(conf: str) -> str:
    """`conf` with HTTP/2 off on its TLS listener: browsers then speak HTTP/1.1 over TLS."""
    if re.search(HTTP2_ON, conf):
        return _replace(HTTP2_ON, r"\1http2 off;", conf)
    return _replace(r"(?m)^([ \t]*listen 443 ssl) http2;", r"\1;", conf)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for 127.0.0.1 (one day, EC P-256), made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError("openssl is required for the TLS listener: apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    made = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE)
    if made.returncode != 0:
        raise StackError(f"openssl failed: {made.stderr}")
    return cert, key


def render(
    conf: str,
    *,
    listen: int,
    bridges: Sequence[int],
    workdir: Path,
    tls: tuple[int, Path, Path] | None = None,
) -> str:
    """The config with its ports and paths swapped for free ones under `workdir`.

    `tls` (port, certificate, key) replaces the TLS listener's port and certificate paths; a
    config with a TLS listener needs it.
    """
    conf = _replace(r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{listen};", conf)
    if has_tls(conf):
        if tls is None:
            raise StackError("the config has a TLS listener: give render() a port and certificate")
        port, cert, key = tls
        conf = _replace(TLS_LISTEN, rf"\1listen 127.0.0.1:{port} ssl\2;", conf)
        conf = _replace(r"(?m)^([ \t]*)ssl_certificate [^;]+;", rf"\1ssl_certificate {cert};", conf)
        conf = _replace(
            r"(?m)^([ \t]*)ssl_certificate_key [^;]+;", rf"\1ssl_certificate_key {key};", conf
        )
    if "upstream sse_bridge" in conf:
        servers = "".join(
            f"server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n        " for port in bridges
        )
        conf = _replace(r"(?:server 127\.0\.0\.1:800\d[^;]*;\s*)+", servers, conf)
    else:
        conf = _replace(
            r"proxy_pass http://127\.0\.0\.1:8001;",
            f"proxy_pass http://127.0.0.1:{bridges[0]};",
            conf,
        )
    conf = conf.replace("/var/log/nginx/", f"{workdir}/")
    temp = "".join(
        f"    {name}_temp_path {workdir}/{name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return _replace(r"http \{\n", "http {\n" + temp, conf)


@dataclass(frozen=True)
class Edge:
    """A running nginx: its plain listener and, if the config has one, its TLS listener."""

    http: str  # http://127.0.0.1:<port>
    https: str | None  # https://127.0.0.1:<port>
    certificate: Path | None  # the self-signed certificate the TLS listener presents
    workdir: Path  # its logs: sse-bridge.access.log, sse-bridge.error.log


@contextlib.contextmanager
def nginx_edge(conf: str, *, bridges: Sequence[int], workdir: Path) -> Iterator[Edge]:
    """Run nginx with `conf` in front of the bridges' ports; yield its listeners; stop it.

    A TLS listener in `conf` gets a free port and a throwaway self-signed certificate for
    127.0.0.1, made in `workdir`.
    """
    # nginx reads `-c` relative to `-p`: a relative workdir handed to both would name itself twice.
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    listen = free_port()
    tls = None
    if has_tls(conf):
        cert, key = self_signed(workdir / "tls")
        tls = (free_port(), cert, key)
    path = workdir / "nginx.conf"
    path.write_text(render(conf, listen=listen, bridges=bridges, workdir=workdir, tls=tls))
    directives = f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/main-error.log;"
    command = [nginx_binary(), "-p", str(workdir), "-c", str(path), "-g", directives]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=DEADLINE)
    if check.returncode != 0:
        raise StackError(f"nginx -t failed: {check.stderr}")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(listen, process)
        if tls is not None:
            wait_port(tls[0], process)
        yield Edge(
            http=f"http://127.0.0.1:{listen}",
            https=None if tls is None else f"https://127.0.0.1:{tls[0]}",
            certificate=None if tls is None else tls[1],
            workdir=workdir,
        )
    finally:
        stop(process, signal.SIGQUIT)  # Graceful: finish open requests, then exit.


@contextlib.contextmanager
def nginx(conf: str, *, bridges: Sequence[int], workdir: Path) -> Iterator[str]:
    """Run nginx with `conf` in front of the bridges' ports; yield its plain base URL; stop it."""
    with nginx_edge(conf, bridges=bridges, workdir=workdir) as edge:
        yield edge.http
