"""Check an avatar GLB in a real browser: headless Chromium + three.js (tests, CI).

:func:`render_morph_check` serves ``web/avatar_check.html`` (three.js from
``web/node_modules``) and the GLB from a local ``http.server`` bound to 127.0.0.1 only,
opens the page in headless Chromium (``--dump-dom`` with a virtual-time budget, so no
driver is needed) and returns the page's JSON: how many pixels change inside and outside a
screen box when one morph target goes from 0 to 1.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
from pathlib import Path

__all__ = ["WEB_DIR", "CHROMIUM_FLAGS", "find_chromium", "three_installed", "render_morph_check"]

#: the project's web/ folder (the test page, package.json, node_modules)
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
#: headless, offline, no GPU
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary ($CHROMIUM, else chromium, chromium-browser, google-chrome)."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def three_installed() -> bool:
    return (WEB_DIR / "node_modules" / "three" / "build" / "three.module.js").is_file()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """web/ at /, the file ``extra`` at /files/<name>."""

    extra: Path | None = None

    def translate_path(self, path: str) -> str:
        clean = urllib.parse.urlparse(path).path
        if self.extra is not None and clean == f"/files/{self.extra.name}":
            return str(self.extra)
        return super().translate_path(path)

    def log_message(self, *args) -> None:  # quiet
        pass


def render_morph_check(glb: str | os.PathLike, target: str, box, timeout: float = 120.0) -> dict:
    """Render ``glb`` in headless Chromium with morph ``target`` at 0 and 1.

    Args:
        glb: the GLB file.
        target: morph target name.
        box: (6,) x0, y0, z0, x1, y1, z1 in the file's units: the region expected to change.
        timeout: seconds for Chromium.
    Returns:
        The page's result: ``ok``, ``targets`` (count three.js found), ``inside_changed`` /
        ``outside_changed`` (share of pixels changing in / outside the box's screen
        rectangle), ``foreground``, ``renderer``; or ``ok: False`` and ``error``.
    Raises:
        RuntimeError: Chromium or three.js missing, or no result from the page.
    """
    chrome = find_chromium()
    if chrome is None or not three_installed():
        raise RuntimeError("headless Chromium and web/node_modules/three are needed")
    glb = Path(glb).resolve()
    handler = type("H", (_Handler,), {"extra": glb})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(WEB_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        q = urllib.parse.urlencode({"glb": f"/files/{glb.name}", "target": target,
                                    "box": ",".join(f"{float(x):.6g}" for x in box)})
        url = f"http://127.0.0.1:{port}/avatar_check.html?{q}"
        cmd = [chrome, *CHROMIUM_FLAGS, "--virtual-time-budget=60000", "--dump-dom", url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        server.shutdown()
        server.server_close()
    m = re.search(r'<pre id="result">(.*?)</pre>', r.stdout, re.S)
    if not m or m.group(1).strip() == "pending":
        raise RuntimeError(f"no result from the page (chromium exit {r.returncode}): {r.stderr.strip()[-500:]}")
    import html

    return json.loads(html.unescape(m.group(1)))
