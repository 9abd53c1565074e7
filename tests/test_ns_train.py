"""A real `ns-train lrm-tiny` run: nerfstudio's CLI, trainer and checkpointing, a few steps on CPU."""

import subprocess
import sys
from pathlib import Path

import torch
import yaml


def ns(tool: str) -> str:
    return str(Path(sys.executable).parent / tool)


def run(cmd, timeout=600):
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_ns_train_lrm_tiny_writes_config_and_checkpoint(procedural_dataset, tmp_path):
    cmd = [
        ns("ns-train"), "lrm-tiny",
        "--data", str(procedural_dataset),
        "--output-dir", str(tmp_path / "outputs"),
        "--max-num-iterations", "3",
        "--steps-per-save", "2",
        "--vis", "tensorboard",
        "--pipeline.datamanager.num-workers", "0",
        "--pipeline.datamanager.patch-size", "16",
    ]  # fmt: skip
    run(cmd)
    configs = list((tmp_path / "outputs").rglob("config.yml"))
    assert len(configs) == 1
    text = configs[0].read_text()
    assert "lrm-tiny" in text and "LRMPipelineConfig" in text
    checkpoints = sorted((configs[0].parent / "nerfstudio_models").glob("step-*.ckpt"))
    assert checkpoints, "no checkpoint written"
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
    assert state["step"] == 2
    assert any(key.endswith("transformer.pos_embed") for key in state["pipeline"])
    assert set(state["optimizers"]) == {"encoder", "decoder"}
    assert yaml.load(text, Loader=yaml.UnsafeLoader).pipeline.datamanager.data == procedural_dataset
