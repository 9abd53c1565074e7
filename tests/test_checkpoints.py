"""Checkpoints holding nerfstudio's numpy learning rates load with torch's default `weights_only=True`."""

import subprocess
import sys

import numpy as np
import torch

LOAD = "import torch, sys{extra}; print(torch.load(sys.argv[1])['optimizers']['lr'])"


def test_numpy_scalar_learning_rate_loads_once_the_plugin_is_imported(tmp_path):
    path = tmp_path / "step-000000600.ckpt"
    # what nerfstudio's CosineDecayScheduler leaves in a checkpoint after warm-up
    torch.save({"step": 600, "optimizers": {"lr": np.float64(1.25e-4)}, "pipeline": {"w": torch.ones(2)}}, path)

    plain = subprocess.run(
        [sys.executable, "-c", LOAD.format(extra=""), str(path)], capture_output=True, text=True, check=False
    )
    assert plain.returncode != 0 and "Weights only load failed" in plain.stderr  # what ns-eval hit

    with_plugin = subprocess.run(
        [sys.executable, "-c", LOAD.format(extra=", lrm_nerfstudio"), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert with_plugin.returncode == 0, with_plugin.stderr[-2000:]
    assert float(with_plugin.stdout.strip()) == 1.25e-4
