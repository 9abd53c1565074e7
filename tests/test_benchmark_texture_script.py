"""scripts/benchmark_texture.py --quick: one JSON document whose textured rows are at least as faithful as vertex
colours at the same face budget (the analytic pattern is finer than the small meshes' vertex spacing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_texture.py"


def test_quick_texture_benchmark_prints_fidelity_json():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    rows = report["rows"]
    assert {(r["budget"], r["texture_resolution"]) for r in rows} == {
        ("full", 0),
        ("full", 128),
        (1000, 0),
        (1000, 128),
    }
    for row in rows:
        assert math.isfinite(row["psnr_vs_nerf"]) and row["psnr_vs_nerf"] > 12, row
        if row["texture_resolution"]:
            assert set(row["seconds"]) == {"cleanup", "unwrap", "bake"} and row["charts"] >= 2
    psnr = {(r["budget"], r["texture_resolution"]): r["psnr_vs_nerf"] for r in rows}
    assert psnr[(1000, 128)] > psnr[(1000, 0)] + 1.0  # a 1000-face mesh keeps the colour only in its texture
    assert report["full_faces"] > 1000 and report["commit"] and report["date"]
