"""Helpers shared by the export and script tests: a tiny LRM run saved in the layout `ns-train` writes, and the
scripts/ files loaded as modules."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from conftest import tiny_trainer_config


def save_tiny_run(
    data: Path, output_dir: Path, step: int = 0, seed: int = 0, configure: Callable[[Any], None] | None = None
) -> Path:
    """Build the tiny pipeline (random weights) and write config.yml + nerfstudio_models/step-XXXXXXXXX.ckpt.

    `configure` may change the TrainerConfig first.

    Returns:
        The config.yml path.
    """
    config = tiny_trainer_config(data)
    # These runs stand in for trained models that exporters and reconstructions have something to show in:
    # the old density bias gives their random weights a visible fog. lrm-tiny itself starts nearly empty (-4;
    # tests/model/test_lrm_model.py::test_initial_field_is_nearly_empty), which the export guard would refuse.
    config.pipeline.model.field.density_bias = -1.0
    config.output_dir = output_dir
    config.experiment_name = "tiny"
    config.set_timestamp()
    if configure is not None:
        configure(config)
    torch.manual_seed(seed)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    config.save_config()
    ckpt_dir = config.get_checkpoint_dir()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "pipeline": pipeline.state_dict(), "optimizers": {}, "scalers": {}}
    torch.save(state, ckpt_dir / f"step-{step:09d}.ckpt")
    return config.get_base_dir() / "config.yml"


def tool(name: str) -> str:
    """Path of a console script of this environment."""
    return str(Path(sys.executable).parent / name)


def run_tool(cmd: list[str], timeout: float = 900, expect: int | None = 0) -> subprocess.CompletedProcess:
    """Run a console script; by default fail the test (with its output) unless it exits 0."""
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if expect is not None:
        assert out.returncode == expect, (
            f"{' '.join(cmd)} exited {out.returncode}, expected {expect}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        )
    return out


ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "scripts"):
    """FOLDER/NAME.py (a benchmark in scripts/, a research runner in experiments/) as a module, registered in
    sys.modules, where dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
