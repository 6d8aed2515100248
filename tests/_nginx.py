"""Run a real nginx with deploy/nginx.conf (or a naive config) on free loopback ports."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests._processes import DEADLINE, free_port

DEPLOY_CONF = Path(__file__).parent.parent / "deploy" / "nginx.conf"

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


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    # A missing nginx is a failure, never a skip: .ci/run installs it with apt-get.
    assert found is not None, "nginx is required for these tests: apt-get install nginx"
    return found


def _replace(pattern: str, replacement: str, text: str) -> str:
    new, count = re.subn(pattern, replacement, text)
    assert count, f"deploy/nginx.conf no longer has {pattern!r}: update tests/_nginx.py"
    return new


def render(conf: str, *, listen: int, bridges: Sequence[int], workdir: Path) -> str:
    """The config with its ports and paths swapped for free ones under `workdir`."""
    conf = _replace(r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{listen};", conf)
    servers = "".join(f"server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in bridges)
    if "upstream sse_bridge" in conf:
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


@contextlib.contextmanager
def nginx(conf: str, *, bridges: Sequence[int], workdir: Path) -> Iterator[str]:
    """Run nginx with `conf` in front of the bridges' ports; yield its base URL; stop it."""
    listen = free_port()
    path = workdir / "nginx.conf"
    path.write_text(render(conf, listen=listen, bridges=bridges, workdir=workdir))
    directives = f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/main-error.log;"
    command = [nginx_binary(), "-p", str(workdir), "-c", str(path), "-g", directives]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=DEADLINE)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(listen, process)
        yield f"http://127.0.0.1:{listen}"
    finally:
        process.send_signal(signal.SIGQUIT)  # Graceful: finish open requests, then exit.
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
        process.communicate(timeout=DEADLINE)


def _wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.02)
    raise AssertionError(f"nginx did not listen on {port}")
