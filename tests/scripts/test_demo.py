"""`lrm-demo` end to end with tiny numbers: every artefact it prints exists, and a re-run reuses data and run."""

from __future__ import annotations

import json
import subprocess
from copy import deepcopy
from pathlib import Path

import pytest
from lrm_run_helpers import tool


def demo(data: Path, out: Path) -> str:
    cmd = [tool("lrm-demo"), "--data", str(data), "--output-dir", str(out), "--num-objects", "6", "--num-views", "6",
           "--resolution", "32", "--max-iterations", "3", "--no-viewer", "--mesh-resolution", "32",
           "--turntable-frames", "2", "--turntable-resolution", "24", "--workers", "1", "--texture-resolution", "64"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-5000:]
    return text


def printed_artefacts(text: str) -> dict[str, Path]:
    """Rows of the printed "where everything is" table; long paths are folded over several lines (width 120)."""
    rows: dict[str, str] = {}
    last = None
    for line in text.split("where everything is", 1)[-1].splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) != 4:
            continue
        if cells[1]:
            last = cells[1]
            rows[last] = cells[2]
        elif last is not None:
            rows[last] += cells[2]
    return {name: Path(path) for name, path in rows.items()}


@pytest.mark.slow
def test_demo_end_to_end_and_resume(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    text = demo(data, out)
    artefacts = printed_artefacts(text)
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["artefacts"]) <= set(artefacts), text[-3000:]
    assert {name: str(path) for name, path in artefacts.items()}.items() >= summary["artefacts"].items()
    for name in ("dataset", "training config", "checkpoint", "metrics", "held-out mesh glb", "held-out turntable",
                 "held-out triplane", "held-out config"):  # fmt: skip
        assert name in artefacts, name
    for name, path in artefacts.items():
        assert path.exists(), f"{name}: {path}"
    metrics = json.loads(artefacts["metrics"].read_text())["metrics"]
    assert {"psnr", "ssim", "background_psnr", "num_views"} <= set(metrics)
    assert metrics["num_objects"] >= 1
    assert "PSNR" in text

    again = demo(data, out)
    flat = " ".join(again.split())  # nerfstudio's console wraps long lines at 120 columns
    assert "Reusing the dataset" in flat and "Reusing the finished training run" in flat
    assert printed_artefacts(again)["checkpoint"] == artefacts["checkpoint"]


def test_demo_refuses_data_made_with_other_settings(tmp_path, capsys):
    """A data folder written with other generator settings is named, not silently reused or overwritten."""
    from lrm_nerfstudio.generate.generate import GenerateConfig
    from lrm_nerfstudio.generate.generate import main as generate
    from lrm_nerfstudio.scripts.demo import DemoConfig, main

    data = tmp_path / "data"
    generate(GenerateConfig(output=data, num_objects=3, num_views=3, resolution=16, workers=1, progress=False))
    before = (data / "dataset.json").read_text()
    config = DemoConfig(data=data, output_dir=tmp_path / "out", num_objects=3, num_views=3, resolution=16, workers=1)
    assert main(config) == 2
    printed = "".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "madewithadifferentgeneratorconfig" in printed and str(data / "000000") in printed
    assert "passanother--data" in printed
    assert (data / "dataset.json").read_text() == before
    assert not (tmp_path / "out" / "runs").exists()


def test_demo_trains_the_registered_lrm_demo_method():
    """`lrm-demo` trains the registered `lrm-demo` method unchanged: its trainer config is the registered one with
    only where and how long it runs set. So `ns-train lrm-demo --data data/lrm-demo` trains the demo's model."""
    from nerfstudio.plugins.registry import discover_methods

    from lrm_nerfstudio.scripts.demo import DemoConfig, trainer_config

    methods, _ = discover_methods()
    expected = deepcopy(methods["lrm-demo"])
    expected.output_dir = Path("outputs/demo/runs")
    expected.experiment_name = "demo"
    expected.vis = "viewer+tensorboard"
    expected.viewer.websocket_port = 7007
    expected.viewer.quit_on_train_completion = True
    expected.pipeline.datamanager.data = Path("data/lrm-demo")
    demo = trainer_config(DemoConfig())
    assert demo == expected
    # the recipe itself, as the README and experiments/TRAINING.md describe it, and unlike lrm-tiny's
    model, dm = demo.pipeline.model, demo.pipeline.datamanager
    assert (model.transformer.inner_dim, model.transformer.triplane_low_res) == (128, 8)
    assert (dm.objects_per_batch, dm.target_views_per_object, dm.patch_size, dm.patch_sampling) == (16, 1, 16, "stride")
    assert demo.max_num_iterations == 1200 and demo.optimizers["decoder"]["scheduler"].max_steps == 1200
    tiny = methods["lrm-tiny"].pipeline
    assert (tiny.model.transformer.inner_dim, tiny.datamanager.objects_per_batch) == (256, 4)
    # a shorter budget fits the schedule to it, and smaller data bounds the patches; nothing else moves
    short = trainer_config(DemoConfig(max_iterations=40, resolution=8))
    assert short.optimizers["encoder"]["scheduler"].max_steps == 40
    assert short.optimizers["encoder"]["scheduler"].warm_up_end == 4
    assert short.pipeline.datamanager.patch_size == 8 and short.pipeline.model == demo.pipeline.model


def test_demo_refuses_bad_mesh_options_before_training(tmp_path, capsys):
    from lrm_nerfstudio.scripts.demo import DemoConfig, main

    assert main(DemoConfig(data=tmp_path / "data", output_dir=tmp_path / "out", texture_resolution=-2)) == 2
    assert "--texture-resolution must be 0" in "".join(capsys.readouterr().out.split("\n"))
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
