"""scripts/benchmark.py --quick runs end to end and prints one JSON document with finite positive measurements."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.timeout(600)
def test_quick_benchmark_prints_complete_json():
    # < 1 min on an idle 2-core machine; the timeout leaves room for a loaded one
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "2"],
        capture_output=True,
        text=True,
        timeout=590,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # stdout holds only the JSON; progress goes to stderr

    assert report["device"] == "cpu" and report["quick"] is True
    assert positive(report["fp32_matmul_peak"]["gflops"])
    speed = report["field_speed"]
    assert positive(speed["ours_evals_per_s"]) and positive(speed["triposr_loop_evals_per_s"])
    assert speed["ratio"] == pytest.approx(speed["ours_evals_per_s"] / speed["triposr_loop_evals_per_s"])
    tiny = report["methods"]["lrm-tiny"]
    params = tiny["params"]
    for part in ("encoder", "camera_embedder", "transformer", "upsampler", "field", "total"):
        assert positive(params[part]), part
    assert params["total"] == sum(
        params[p] for p in ("encoder", "camera_embedder", "transformer", "upsampler", "field")
    )
    assert positive(tiny["image_to_triplane"]["median_s"])
    assert positive(tiny["render"]["rays_per_s"]) and positive(tiny["render"]["samples_per_ray"])
    for key in ("forward_gflop", "median_s", "gflops", "pct_of_fp32_peak"):
        assert positive(tiny["transformer"][key]), key
    assert isinstance(tiny["transformer"]["pass"], bool)
    step = tiny["train_step"]
    for key in ("median_s", "rays", "peak_memory_bytes", "peak_memory_delta_bytes"):
        assert positive(step[key]), key

    memory = report["memory"]
    assert isinstance(memory["measure"], str) and isinstance(memory["pass"], bool)
    assert positive(memory["deferred_ratio_largest_to_smallest"]) and positive(memory["target_ratio"])
    assert {(r["patch"], r["deferred_backprop"]) for r in memory["steps"]} == {
        (p, d) for p in (8, 32) for d in (False, True)
    }
    for row in memory["steps"]:
        assert positive(row["peak_memory_bytes"]) and positive(row["peak_memory_delta_bytes"])


def test_reconstruct_benchmark_times_every_stage(tmp_path):
    """scripts/benchmark_reconstruct.py on a random lrm-tiny: JSON on stdout with every lrm-reconstruct stage."""
    from PIL import Image

    image = tmp_path / "disc.png"
    yy, xx = np.mgrid[0:64, 0:64] - 31.5
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, ((xx**2 + yy**2) < 20**2) * 255
    Image.fromarray(rgba).save(image)
    script = SCRIPT.parent / "benchmark_reconstruct.py"
    args = ["--method", "lrm-tiny", "--resolution", "24", "--turntable-frames", "2", "--turntable-resolution", "16"]
    proc = subprocess.run([sys.executable, str(script), str(image), *args], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["model"] == {"method": "lrm-tiny", "weights": "random"} and report["mesh_resolution"] == 24
    assert positive(report["load_s"])
    timings = report["disc"]["timings_s"]
    for stage in ("preprocess", "encode", "decode", "mesh", "turntable", "write"):
        assert positive(timings[stage]), stage
