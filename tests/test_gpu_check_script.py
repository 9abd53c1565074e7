"""scripts/gpu_check.py: without CUDA it exits with status 2 and one clear message, printing no JSON; its options
(--order, --data, --skip) are checked before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lrm_run_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: gpu_check.py would run its checks")
def test_without_cuda_exits_2_with_a_message():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert "gpu_check: no CUDA device" in out.stderr and "Traceback" not in out.stderr


def test_order_runs_the_named_sections_first_then_the_rest_in_the_default_order():
    gpu_check = load_script("gpu_check")
    assert gpu_check.parse_args([]).order == list(gpu_check.SECTIONS)
    args = gpu_check.parse_args(["--order", "train_step", "image_to_mesh", "gsplat_setup"])
    assert args.order == ["train_step", "image_to_mesh", "gsplat_setup", "gsplat_render", "refine"]
    assert sorted(args.order) == sorted(gpu_check.SECTIONS)


@pytest.mark.parametrize(
    "argv",
    [
        ["--order", "gsplat_render", "gsplat_setup"],  # a gsplat section before the setup that checks gsplat
        ["--order", "refine"],  # gsplat_setup then comes after it
        ["--order", "no_such_section"],
        ["--skip", "no_such_section"],
    ],
)
def test_bad_order_or_section_names_are_refused_before_anything_runs(argv, capsys):
    gpu_check = load_script("gpu_check")
    with pytest.raises(SystemExit) as exc:
        gpu_check.parse_args(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_data_must_hold_a_dataset_json(tmp_path, capsys):
    gpu_check = load_script("gpu_check")
    with pytest.raises(SystemExit) as exc:
        gpu_check.parse_args(["--data", str(tmp_path)])
    assert exc.value.code == 2
    assert "no dataset.json" in capsys.readouterr().err
    (tmp_path / "dataset.json").write_text(json.dumps({"splits": {"test": ["000000"]}}))
    args = gpu_check.parse_args(["--data", str(tmp_path), "--partial-json", str(tmp_path / "partial.json")])
    assert args.data == tmp_path.resolve()
    assert args.partial_json == tmp_path / "partial.json"


def test_partial_json_is_written_whole(tmp_path):
    gpu_check = load_script("gpu_check")
    path = tmp_path / "partial.json"
    gpu_check.write_json(path, {"device": "x", "train_step": {"median_s": 1.0}})
    gpu_check.write_json(path, {"device": "x", "in_progress": "refine"})
    assert json.loads(path.read_text()) == {"device": "x", "in_progress": "refine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.json"]
