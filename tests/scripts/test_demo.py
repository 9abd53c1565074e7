"""`lrm-demo` end to end with tiny numbers: every artefact it prints exists, and a re-run reuses data and run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from lrm_run_helpers import tool


def demo(data: Path, out: Path) -> str:
    cmd = [tool("lrm-demo"), "--data", str(data), "--output-dir", str(out), "--num-objects", "6", "--num-views", "6",
           "--resolution", "32", "--max-iterations", "3", "--no-viewer", "--mesh-resolution", "32",
           "--turntable-frames", "2", "--turntable-resolution", "24", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "400"}  # one table row per line, so that paths can be read back
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env, check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-5000:]
    return text


def printed_artefacts(text: str) -> dict[str, Path]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 4 and cells[2].startswith("/"):
            rows[cells[1]] = Path(cells[2])
    return rows


@pytest.mark.slow
def test_demo_end_to_end_and_resume(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    text = demo(data, out)
    artefacts = printed_artefacts(text)
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["artefacts"]) <= set(artefacts)
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
    assert "Reusing the dataset" in again and "Reusing the finished training run" in again
    assert printed_artefacts(again)["checkpoint"] == artefacts["checkpoint"]
