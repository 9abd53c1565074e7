"""`lrm-demo` end to end with tiny numbers: every artefact it prints exists, and a re-run reuses data and run."""

from __future__ import annotations

import json
import subprocess
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


def test_demo_refuses_bad_mesh_options_before_training(tmp_path, capsys):
    from lrm_nerfstudio.scripts.demo import DemoConfig, main

    assert main(DemoConfig(data=tmp_path / "data", output_dir=tmp_path / "out", texture_resolution=-2)) == 2
    assert "--texture-resolution must be 0" in "".join(capsys.readouterr().out.split("\n"))
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
