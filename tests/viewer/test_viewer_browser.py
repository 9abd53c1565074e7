"""The real nerfstudio viewer, as `ns-train lrm-tiny` starts it with its trainer, in a headless Chromium: it draws the reconstruction, redraws
it when another object is picked in the page's dropdown, and again after training steps.

The docs screenshot comes from scripts/viewer_screenshot.py (tested here too), whose Chromium flags these tests share.
"""

import io
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_trainer_config
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORT = {"width": 1100, "height": 700}
FAILURE_SCREENSHOT = Path("/tmp/lrm_viewer_test_failure.png")
SCREENSHOT_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "viewer_screenshot.py"
sys.path.insert(0, str(SCREENSHOT_SCRIPT.parent))
from viewer_screenshot import CHROMIUM_ARGS, free_port  # scripts/ is not a package

pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def render_region(page, width: int) -> np.ndarray:
    """The part of the page where the viewer draws the render (left of the control panel), as float RGB."""
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"), dtype=np.float32)
    return shot[60:, :width]


def settled_render(page, width: int, before: np.ndarray | None, timeout: float) -> np.ndarray:
    """The render region once it differs from `before` (if given) and two looks 1 s apart agree (the viewer goes
    from a low-resolution to a full-resolution render, then stops)."""
    deadline = time.monotonic() + timeout
    last = render_region(page, width)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = render_region(page, width)
        # no `before`: wait for a drawing at all (the empty scene is a flat dark grey)
        # renders are deterministic (no jitter at eval), so 0.3 grey levels on average is a redraw, not noise: a
        # barely trained model draws similar fog for different objects
        changed = now.std() > 5.0 if before is None else np.abs(now - before).mean() > 0.3
        if changed and np.abs(now - last).mean() < 0.05:
            return now
        last = now
    Image.fromarray(last.astype(np.uint8)).save(FAILURE_SCREENSHOT)
    raise AssertionError(
        f"the render did not {'appear' if before is None else 'change'} within {timeout:.0f} s "
        f"(last look: {FAILURE_SCREENSHOT})"
    )


@pytest.fixture()
def trainer(procedural_dataset, tmp_path):
    """nerfstudio's own Trainer with its live viewer, as `ns-train lrm-tiny --vis viewer` builds it (not yet run)."""
    from nerfstudio.engine.trainer import Trainer
    from nerfstudio.utils.writer import GLOBAL_BUFFER

    torch.manual_seed(0)
    config = tiny_trainer_config(procedural_dataset)
    config.vis = "viewer"
    config.output_dir = tmp_path / "outputs"
    config.viewer.websocket_port = free_port()
    config.viewer.quit_on_train_completion = True  # train() returns; the viser server keeps serving
    config.max_num_iterations = 2000  # an upper bound: the test stops training once the viewer has redrawn
    config.steps_per_save = 10**6
    for group in config.optimizers.values():  # lrm-tiny warms up over 100 steps: the weights would barely move
        group["scheduler"].warm_up_end = 1
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**6
    config.set_timestamp()
    config.get_base_dir().mkdir(parents=True)  # as ns-train's main() does before building the trainer
    config.save_config()
    trainer = Trainer(config, local_rank=0, world_size=1)
    trainer.setup()
    trainer._init_viewer_state()  # train() draws the camera frustums again; drawn now, they are in every screenshot
    trainer.viewer_state.control_panel._max_res.value = 128  # keeps each CPU render to about a second
    # The viewer redraws during training every train_util / (1 - train_util) x (render time / step time) steps, from
    # rates in nerfstudio's global event buffer: drop rates that earlier in-process trainers left there, and give
    # rendering half the time (the default 0.9 can space redraws beyond this test's 40 steps on a busy CPU).
    GLOBAL_BUFFER.get("events", {}).clear()
    trainer.viewer_state.train_util = 0.5
    yield trainer
    trainer.viewer_state.viser_server.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); CI installs it")
def test_viewer_renders_follows_training_and_the_dropdown(trainer, tmp_path):
    from playwright.sync_api import sync_playwright

    state, pipeline, config = trainer.viewer_state, trainer.pipeline, trainer.config
    assert config.viewer.websocket_host == "127.0.0.1"
    url = f"http://127.0.0.1:{config.viewer.websocket_port}"
    width = VIEWPORT["width"] - 340  # the control panel covers the right of the canvas
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(20_000)
            page.goto(url, wait_until="domcontentloaded")
            page.locator("canvas").first.wait_for(state="visible")
            wait_for(lambda: len(state.render_statemachines) > 0, 20, "the browser to connect")

            # 1. The untrained reconstruction of the default object is drawn.
            untrained = settled_render(page, width, None, timeout=60)

            # 2. Training moves the weights; the viewer's own schedule (spaced by measured render and step times)
            #    redraws with the re-predicted triplane while training runs. Stopped once that is seen.
            training = threading.Thread(target=trainer.train, daemon=True)
            training.start()
            try:
                wait_for(lambda: pipeline.model._display_step > 0, 120, "a redraw from re-predicted weights")
            finally:
                trainer.stop_training = True
                training.join(timeout=120)
            trained = settled_render(page, width, untrained, timeout=40)
            page.screenshot(path=tmp_path / "trained.png")

            # 3. Picking another object in the page's dropdown shows that object.
            before_ref = pipeline.datamanager.display_ref
            target = pipeline.datamanager.list_objects()["train"][0]
            page.get_by_label("Object", exact=True).click()
            page.get_by_role("option", name=f"train/{target}", exact=True).click()
            wait_for(lambda: pipeline.datamanager.display_ref == target, 20, "the display object to switch")
            assert before_ref != target
            other = settled_render(page, width, trained, timeout=40)
            assert other.std() > 5.0
            page.screenshot(path=tmp_path / "other_object.png")
            assert target in page.content()  # the source-image panel names the new object

            # 4. An upload whose file name is MDX code: the status names it as text, nothing runs in the page.
            evil = "{globalThis.X=1}.png"
            page.locator("input[type=file]").set_input_files(
                files=[{"name": evil, "mimeType": "image/png", "buffer": b"not an image"}]
            )
            wait_for(lambda: evil in pipeline.viewer_controls.status, 30, "the upload's status")
            page.get_by_text(f"Upload rejected: {evil}: not an image", exact=False).first.wait_for(state="visible")
            assert page.evaluate("globalThis.X") is None
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); CI installs it")
def test_screenshot_script_shows_a_saved_run(procedural_dataset, tmp_path):
    """scripts/viewer_screenshot.py (the README's docs-screenshot command): ns-viewer on a saved run, in Chromium."""
    import json
    import subprocess

    from lrm_run_helpers import save_tiny_run

    config = save_tiny_run(procedural_dataset, tmp_path / "run")
    out = tmp_path / "shot.png"
    script = SCREENSHOT_SCRIPT
    proc = subprocess.run([sys.executable, str(script), str(config), str(out), "--width", "800", "--height", "500",
                           "--full-render-wait", "20"],
                          capture_output=True, text=True, timeout=400, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["output"] == str(out)
    shot = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
    assert shot.shape == (500, 800, 3)
    assert shot[60:, : 800 - 340].std() > 5.0  # the render area is drawn, not the empty dark scene

    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "nope.yml"), str(out)],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert missing.returncode != 0 and "nope.yml: no such config" in missing.stderr
