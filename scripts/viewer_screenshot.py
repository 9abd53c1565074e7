"""Screenshot of `ns-viewer --load-config CONFIG` in headless Chromium (Debian's `chromium`), e.g. for the docs.

Starts nerfstudio's viewer on the run, opens it in the browser, waits until the full-resolution render has settled,
and writes the page as a PNG. Prints one JSON line (output path, seconds) to stdout.

Example:
    uv run python scripts/viewer_screenshot.py outputs/demo/runs/demo/lrm-demo/RUN/config.yml docs/viewer_screenshot.png
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # viser draws with WebGL; without a GPU only the SwiftShader software rasteriser provides it.
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
PANEL_WIDTH = 340
"""Pixels on the right that the control panel covers."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def capture(args: argparse.Namespace, chromium: str, port: int, viewer: subprocess.Popen, log: IO[str]) -> None:
    """Open the viewer served on `port` in Chromium and write the settled page to `args.output`."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=30_000)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        deadline = time.monotonic() + args.timeout
        while True:  # the viewer needs a few seconds to load the model and start serving
            try:
                page.goto(f"http://127.0.0.1:{port}", wait_until="domcontentloaded", timeout=5_000)
                break
            except PlaywrightError:
                if viewer.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"ns-viewer exited with {viewer.returncode}: {log.read()[-2000:]}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"ns-viewer did not serve on port {port} within {args.timeout:.0f} s")
                time.sleep(1.0)

        def region() -> np.ndarray:
            shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"), dtype=np.float32)
            return shot[60:, : args.width - PANEL_WIDTH]

        def resolution() -> str:  # nerfstudio's panel shows the size of the last render
            found = re.search(r"Resolution: (\d+)\D(\d+)px", page.inner_text("body"))
            return found.group(0) if found else ""

        # settled: drawn, and neither the picture nor the render size changed over 3 looks 1 s apart. The viewer
        # draws a small render first and the full-resolution one (seconds on a CPU) after it, so a settled small
        # render only counts once the larger one has had `--full-render-wait` seconds to appear.
        looks = [(region(), resolution())]
        first, since = looks[0][1], time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(1.0)
            looks = [*looks[-2:], (region(), resolution())]
            first = first or looks[-1][1]
            full = looks[-1][1] != first or time.monotonic() - since > args.full_render_wait
            if len(looks) == 3 and looks[-1][0].std() > 5.0 and looks[-1][1] and full:
                same = all(np.abs(a[0] - looks[-1][0]).mean() < 0.05 and a[1] == looks[-1][1] for a in looks)
                if same:
                    break
        else:
            raise SystemExit(f"the render did not settle within {args.timeout:.0f} s")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(page.screenshot())).save(args.output, optimize=True)
        browser.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="config.yml of a run (or of an lrm-reconstruct output)")
    parser.add_argument("output", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=700)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for the viewer and the render")
    parser.add_argument("--full-render-wait", type=float, default=90.0, help="seconds to wait for the full render")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    if not args.config.is_file():
        raise SystemExit(f"{args.config}: no such config")

    start = time.monotonic()
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:  # a pipe nobody reads would fill up and stall the viewer
        viewer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nerfstudio.scripts.viewer.run_viewer",
                "--load-config",
                str(args.config),
                "--viewer.websocket-port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            capture(args, chromium, port, viewer, log)
        finally:
            viewer.terminate()
            try:
                viewer.wait(timeout=30)
            except subprocess.TimeoutExpired:  # bounded: a viewer that ignores SIGTERM is killed
                viewer.kill()
                viewer.wait(timeout=30)
    result = {"output": str(args.output), "seconds": round(time.monotonic() - start, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
