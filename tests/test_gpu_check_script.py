"""scripts/gpu_check.py: without CUDA it exits with status 2 and one clear message, printing no JSON."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
