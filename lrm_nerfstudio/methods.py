"""The registered methods by name, the TrainerConfig a weights file's model trains and renders with, and loading a
model with its TrainerConfig from an ns-train run or a weights file (`load_model`).

A weights file names its method (`lrm-tiny`, `lrm-triposr`, ...) and holds its model and processor configs as
data; where a full TrainerConfig is needed (the config.yml that `lrm-reconstruct` writes for `ns-viewer`), it is
rebuilt here from the registered method spec plus those configs. No YAML is read.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from lrm_nerfstudio import lrm_config
from lrm_nerfstudio.io.atomic import atomic_write
from lrm_nerfstudio.io.checkpoints import (
    MODEL_PREFIX,
    ModelLoadError,
    find_checkpoint,
    model_state_from_checkpoint,
    read_trainer_config,
)
from lrm_nerfstudio.lrm_pipeline import adopt_legacy_processor
from lrm_nerfstudio.model.build import build_model
from lrm_nerfstudio.model.lrm_model import LRMModel
from lrm_nerfstudio.pretrained import Pretrained, clean_model_config, load_pretrained

METHODS: dict[str, MethodSpecification] = {
    spec.config.method_name: spec  # type: ignore[misc]
    for spec in (
        lrm_config.lrm_method,
        lrm_config.lrm_tiny_method,
        lrm_config.lrm_demo_method,
        lrm_config.lrm_triposr_method,
        lrm_config.lrm_openlrm_method,
    )
}
"""Every method this package registers with nerfstudio, by name."""


def trainer_config_for(pretrained: Pretrained, name: str) -> TrainerConfig:
    """The registered method's TrainerConfig with the model and processor of `pretrained` (`name`: its file).

    Raises:
        ModelLoadError: the method is not registered by this lrm-nerfstudio.
    """
    spec = METHODS.get(pretrained.method)
    if spec is None:
        raise ModelLoadError(
            f"{name}: field method: {pretrained.method!r} is not a method of this lrm-nerfstudio ({', '.join(METHODS)})"
        )
    config = deepcopy(spec.config)
    config.pipeline.model = clean_model_config(deepcopy(pretrained.model))  # type: ignore[attr-defined]
    return config


@dataclass
class LoadedModel:
    """A model ready for inference and what is needed to write configs that re-open it."""

    config: TrainerConfig
    """The training run's config."""
    model: LRMModel
    """The model, in eval mode, on `device`."""
    step: int
    """Training step of the weights."""
    checkpoint: Path | None
    """The ns-train checkpoint the weights came from (None when they came from a weights file)."""
    source: Path
    """The config.yml or weights file given."""

    @property
    def device(self) -> torch.device:
        return self.model.device


def load_model(
    load_config: Path | None = None, weights: Path | None = None, device: str | torch.device | None = None
) -> LoadedModel:
    """Load an LRM model from an ns-train config.yml (its latest checkpoint) or an `lrm-export-weights` file.

    Raises:
        ModelLoadError: missing or foreign config, no checkpoint, or weights that do not fit.
    """
    if (load_config is None) == (weights is None):
        raise ModelLoadError("give exactly one of --load-config CONFIG.yml and --weights FILE.safetensors")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if weights is None and Path(load_config).suffix == ".safetensors":  # type: ignore[arg-type]
        load_config, weights = None, load_config
    if weights is not None:  # a weights file, or a released TripoSR/OpenLRM folder
        pretrained = load_pretrained(Path(weights))
        config = trainer_config_for(pretrained, str(weights))
        model = build_model(pretrained.model, pretrained.state, device, str(weights))
        return LoadedModel(config, model, pretrained.step, None, Path(weights))
    assert load_config is not None
    config = read_trainer_config(Path(load_config))
    adopt_legacy_processor(config.pipeline)  # type: ignore[arg-type]
    ckpt = find_checkpoint(config, Path(load_config))
    state, step = model_state_from_checkpoint(ckpt)
    model = build_model(config.pipeline.model, state, device, str(ckpt))  # type: ignore[attr-defined]
    return LoadedModel(config, model, step, ckpt, Path(load_config))


class DisplayObjectError(ValueError):
    """An export's --display-object is neither an object id of the run's dataset nor a usable image."""


def open_display_run(load_config: Path, display_object: str | None = None) -> tuple[Any, str, int]:
    """Open an ns-train run as `ns-export` does (`eval_setup`, test mode) on the reconstruction to export.

    Args:
        load_config: the run's config.yml.
        display_object: object id (any split) or image path; None keeps the config's `datamanager.display_object`.

    Returns:
        (pipeline, the display object's name, the checkpoint's step).

    Raises:
        ModelLoadError: an unreadable or foreign config, or no complete checkpoint.
        DisplayObjectError: an unknown object id or an unusable image.
    """
    from nerfstudio.utils.eval_utils import eval_setup

    trainer_config = read_trainer_config(load_config)
    find_checkpoint(trainer_config, load_config)
    _, pipeline, _, step = eval_setup(load_config, test_mode="test")
    if display_object:
        try:
            return pipeline, pipeline.show_object(display_object), step
        except ValueError as err:  # DatasetFormatError / ImageInputError
            raise DisplayObjectError(f"--display-object {display_object}: {err}") from err
    return pipeline, pipeline.datamanager.display_source[2], step


def write_checkpoint(loaded: LoadedModel, folder: Path) -> Path:
    """Write the model as an ns-train checkpoint (pipeline keys) so that nerfstudio's eval_setup can load it."""
    path = Path(folder) / f"step-{loaded.step:09d}.ckpt"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        state = {MODEL_PREFIX + key: value.detach().cpu() for key, value in loaded.model.state_dict().items()}
        checkpoint = {"step": loaded.step, "pipeline": state, "optimizers": {}, "scalers": {}}
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
    return path
