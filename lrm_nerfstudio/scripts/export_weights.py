"""`lrm-export-weights`: one safetensors file holding an LRM model's weights and the config that built it.

The file is all inference needs (`lrm-reconstruct IMAGE --weights FILE.safetensors`): the tensors are the model's
state dict, and the safetensors metadata holds the YAML of the training run's `TrainerConfig` (the same text as its
`config.yml`) plus the step. Like `config.yml`, that YAML is loaded with PyYAML's full loader, so only load weight
files you trust as you would trust a config.

Example:
    lrm-export-weights --load-config outputs/ds/lrm-tiny/2024-01-01_000000/config.yml --output lrm-tiny.safetensors
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from lrm_nerfstudio.checkpoints import newest_complete_checkpoint

WEIGHTS_FORMAT = "lrm-nerfstudio-weights"
"""Value of the `format` metadata key of an exported weights file."""
WEIGHTS_VERSION = "1"
"""Value of the `version` metadata key."""
MODEL_PREFIX = "_model."
"""Prefix of the model's keys in a nerfstudio pipeline checkpoint."""


class ModelLoadError(ValueError):
    """A config, checkpoint or weights file that cannot give an LRM model; the message starts with the path."""


# ----------------------------------------------------------------------------------------------------- config
def read_trainer_config(path: Path) -> TrainerConfig:
    """Read an `ns-train` config.yml and check that it is an LRM run.

    Raises:
        ModelLoadError: missing file, not YAML, not a TrainerConfig, or not an LRM pipeline.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: config file not found (pass the config.yml that ns-train wrote)")
    try:
        config = yaml.load(path.read_text(encoding="utf8"), Loader=yaml.Loader)
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError, TypeError, ValueError, ImportError) as err:
        raise ModelLoadError(f"{path}: not a readable nerfstudio config ({type(err).__name__}: {err})") from err
    return check_lrm_config(config, str(path))


def check_lrm_config(config: Any, name: str) -> TrainerConfig:
    """`config` itself if it is the TrainerConfig of an LRM run, else `ModelLoadError` naming `name`."""
    from lrm_nerfstudio.lrm_pipeline import LRMPipelineConfig

    if not isinstance(config, TrainerConfig):
        raise ModelLoadError(f"{name}: not a nerfstudio TrainerConfig (got {type(config).__name__})")
    if not isinstance(config.pipeline, LRMPipelineConfig):
        raise ModelLoadError(
            f"{name}: not an LRM config (method {config.method_name!r}, pipeline {type(config.pipeline).__name__})"
        )
    return config


def find_checkpoint(config: TrainerConfig, config_path: Path) -> Path:
    """The checkpoint eval_setup would load: `load_step` if set, else the latest, of the run's checkpoint folder.

    The folder is looked up beside config.yml first (so that a run folder can be moved), then where the config
    says it is. A newest checkpoint that is not completely written (a kill during the save) is skipped with a
    warning naming it, and the previous one is taken.

    Raises:
        ModelLoadError: no checkpoint found.
    """
    candidates = [Path(config_path).parent / config.relative_model_dir]
    if config.timestamp is not None:
        candidates.append(config.get_checkpoint_dir())
    if config.load_dir is not None:
        candidates.append(Path(config.load_dir))
    for folder in candidates:
        if config.load_step is not None:
            ckpt = folder / f"step-{config.load_step:09d}.ckpt"
            if ckpt.is_file():
                return ckpt
            continue
        ckpt = newest_complete_checkpoint(folder, warn=_warn) if folder.is_dir() else None
        if ckpt is not None:
            return ckpt
    where = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise ModelLoadError(f"{config_path}: no checkpoint (step-*.ckpt) found in {where}")


def _warn(message: str) -> None:
    CONSOLE.print(f"[bold yellow]warning:[/bold yellow] {message}", soft_wrap=True, highlight=False)


def model_state_from_checkpoint(ckpt: Path) -> tuple[dict[str, Tensor], int]:
    """(model state dict, step) of an `ns-train` checkpoint (pipeline keys `_model.*`, DDP's `module.` removed)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file (pickle, zip, runtime)
        raise ModelLoadError(f"{ckpt}: unreadable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or "pipeline" not in state:
        raise ModelLoadError(f"{ckpt}: not a nerfstudio checkpoint (no 'pipeline' state)")
    model_state = {}
    for key, value in state["pipeline"].items():
        key = key.removeprefix("module.")
        if key.startswith(MODEL_PREFIX):
            model_state[key[len(MODEL_PREFIX) :]] = value
    if not model_state:
        raise ModelLoadError(f"{ckpt}: the checkpoint holds no model weights ({MODEL_PREFIX}*)")
    return model_state, int(state.get("step", 0))


# ----------------------------------------------------------------------------------------------------- weights
def save_weights(path: Path, config: TrainerConfig, model_state: dict[str, Tensor], step: int) -> Path:
    """Write `model_state` and the YAML of `config` as one safetensors file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage, and wants them contiguous
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in model_state.items()}
    metadata = {
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "step": str(int(step)),
        "method_name": str(config.method_name),
        "trainer_config_yaml": yaml.dump(config),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_weights(path: Path) -> tuple[TrainerConfig, dict[str, Tensor], int]:
    """(config, model state dict, step) of a file written by `save_weights`.

    Raises:
        ModelLoadError: missing file, not safetensors, or no embedded LRM config.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ModelLoadError(f"{path}: not a safetensors file ({type(err).__name__}: {err})") from err
    if metadata.get("format") != WEIGHTS_FORMAT or "trainer_config_yaml" not in metadata:
        raise ModelLoadError(
            f"{path}: safetensors file without an embedded LRM config (not written by lrm-export-weights)"
        )
    try:
        config = yaml.load(metadata["trainer_config_yaml"], Loader=yaml.Loader)
    except (yaml.YAMLError, AttributeError, TypeError, ValueError, ImportError) as err:
        raise ModelLoadError(f"{path}: embedded config is unreadable ({type(err).__name__}: {err})") from err
    return check_lrm_config(config, str(path)), state, int(metadata.get("step", "0"))


# ----------------------------------------------------------------------------------------------------- CLI
@dataclass
class ExportWeightsConfig:
    """Write an LRM run's model weights and config as one safetensors file."""

    load_config: Path
    """config.yml of the ns-train run (its latest checkpoint, or its load_step, is exported)."""
    output: Path = Path("lrm.safetensors")
    """Weights file to write."""


def main(config: ExportWeightsConfig) -> int:
    """Export; returns the process exit code (2 for a bad config or checkpoint)."""
    try:
        trainer_config = read_trainer_config(config.load_config)
        ckpt = find_checkpoint(trainer_config, config.load_config)
        state, step = model_state_from_checkpoint(ckpt)
    except ModelLoadError as err:
        CONSOLE.print(f"[bold red]error:[/bold red] {err}", soft_wrap=True)
        return 2
    path = save_weights(config.output, trainer_config, state, step)
    n_params = sum(t.numel() for t in state.values())
    CONSOLE.print(f"Wrote {path} ({n_params / 1e6:.2f}M parameters, step {step}) from {ckpt}", soft_wrap=True)
    return 0


def entrypoint() -> None:
    """`lrm-export-weights` console script."""
    sys.exit(main(tyro.cli(ExportWeightsConfig)))


if __name__ == "__main__":
    entrypoint()
