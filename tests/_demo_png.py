"""Draw docs/demo.png from the real demo page in Chromium: `bash scripts/demo-png`.

The picture is the page `sse-bridge demo` serves (the packaged demo.html, the demo app, the fake
Ollama at its default pace) in headless Chromium, once the sample answer has finished: answer,
timeline and figures. It carries the SHA-256 of the page it was drawn from in a PNG text chunk,
and tests/test_demo.py compares that with today's page, so a page that changes without a new
picture fails the tests.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zlib
from pathlib import Path

from sse_bridge._cli.demo import PAGE, demo_app
from sse_bridge.testing import FakeOllama, FakeOllamaConfig, serve_in_thread

PICTURE = Path(__file__).parent.parent / "docs" / "demo.png"
KEY = b"sse-bridge-demo-page-sha256"
VIEWPORT = {"width": 1280, "height": 720}
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def page_hash() -> str:
    """The SHA-256 of the demo page as the package ships it."""
    return hashlib.sha256(PAGE).hexdigest()


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks, (type, data), in order; ValueError if it is not one."""
    if not png.startswith(SIGNATURE):
        raise ValueError("not a PNG")
    found, at = [], len(SIGNATURE)
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        found.append((kind, data))
        at += 12 + length
    return found


def text_of(png: bytes) -> dict[bytes, str]:
    """The keyword -> text pairs of a PNG's tEXt chunks."""
    pairs = (data.split(b"\0", 1) for kind, data in chunks(png) if kind == b"tEXt")
    return {key: value.decode("latin-1") for key, value in pairs}


def with_text(png: bytes, key: bytes, value: str) -> bytes:
    """The PNG with a tEXt chunk ``key`` = ``value`` right after its header chunk."""
    data = key + b"\0" + value.encode("latin-1")
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data))
    (_, header), *_ = chunks(png)
    end_of_header = len(SIGNATURE) + 12 + len(header)
    return png[:end_of_header] + chunk + png[end_of_header:]


def draw(path: Path = PICTURE) -> None:
    """Serve the demo, let Chromium play its sample answer to the end, and save the picture."""
    from tests.test_browser import launched_chromium, wait_idle

    fake = FakeOllama(FakeOllamaConfig())
    with (
        serve_in_thread(fake) as upstream,
        serve_in_thread(demo_app(upstream)) as url,
        launched_chromium() as browser,
    ):
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        page.goto(f"{url}/")
        page.click("#send")
        wait_idle(page)
        png = page.screenshot(full_page=True)
    path.write_bytes(with_text(png, KEY, page_hash()))


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else PICTURE)
    print(f"drew {sys.argv[1] if len(sys.argv) > 1 else PICTURE} from the page {page_hash()}")
