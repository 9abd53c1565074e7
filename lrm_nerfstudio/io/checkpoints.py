"""Reading `ns-train` run folders: the config.yml, the checkpoint eval_setup would load, the model's state in it.

A config.yml is code, as in nerfstudio: reading one runs PyYAML's full loader. Only weights files (io/weights.py)
are safe to share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from lrm_nerfstudio.io.checkpoint_files import load_failure, newest_complete_checkpoint

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
        if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:  # one line: problem and place
            problem = f"{err.problem or err.context} (line {err.problem_mark.line + 1})"
        else:
            problem = " ".join(str(err).split())
        raise ModelLoadError(f"{path}: not a readable nerfstudio config ({type(err).__name__}: {problem})") from err
    return check_lrm_config(config, str(path))


def check_lrm_config(config: Any, name: str) -> TrainerConfig:
    """`config` itself if it is the TrainerConfig of an LRM run, else `ModelLoadError` naming `name`."""
    if not isinstance(config, TrainerConfig):
        raise ModelLoadError(f"{name}: not a nerfstudio TrainerConfig (got {type(config).__name__})")
    # by its module, not isinstance(LRMPipelineConfig): this bottom layer imports no pipeline
    if type(config.pipeline).__module__ != "lrm_nerfstudio.lrm_pipeline":
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
        raise ModelLoadError(f"{ckpt}: unreadable checkpoint ({load_failure(ckpt, err)})") from err
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
