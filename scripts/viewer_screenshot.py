"""Screenshot of `ns-viewer --load-config CONFIG` in headless Chromium (Debian's `chromium`), e.g. for the docs.

Starts nerfstudio's viewer on the run, opens it in the browser, waits until the render has settled (two looks 1 s
apart agree), and writes the page as a PNG. Prints one JSON line (output path, seconds) to stdout.

Example:
    uv run python scripts/viewer_screenshot.py outputs/demo/runs/demo/lrm-tiny/RUN/config.yml docs/viewer_screenshot.png
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="config.yml of a run (or of an lrm-reconstruct output)")
    parser.add_argument("output", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=700)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the viewer and the render")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    if not args.config.is_file():
        raise SystemExit(f"{args.config}: no such config")

    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    start = time.monotonic()
    port = free_port()
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
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
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
                        raise SystemExit(f"ns-viewer exited with {viewer.returncode}: {viewer.stderr.read()[-2000:]}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"ns-viewer did not serve on port {port} within {args.timeout:.0f} s")
                    time.sleep(1.0)

            def region() -> np.ndarray:
                shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"), dtype=np.float32)
                return shot[60:, : args.width - PANEL_WIDTH]

            last = region()
            while time.monotonic() < deadline:
                time.sleep(1.0)
                now = region()
                if now.std() > 5.0 and np.abs(now - last).mean() < 0.05:  # drawn, and no longer refining
                    break
                last = now
            else:
                raise SystemExit(f"the render did not settle within {args.timeout:.0f} s")
            args.output.parent.mkdir(parents=True, exist_ok=True)
            Image.open(io.BytesIO(page.screenshot())).save(args.output, optimize=True)
            browser.close()
    finally:
        viewer.terminate()
        viewer.wait(timeout=30)
    result = {"output": str(args.output), "seconds": round(time.monotonic() - start, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
