"""`from_pretrained`: an LRMModel from a weights file or a released TripoSR / OpenLRM folder.

Example:
    import lrm_nerfstudio
    model = lrm_nerfstudio.from_pretrained("triposr.safetensors")   # or the TripoSR / OpenLRM folder itself
    planes = model.predict_triplanes(images, cameras)                # [B, 3, H, W] in [0, 1], [B, 16]
    rgb, density = model.field.rgb_density_at(points, planes)        # points [B, P, 3], project frame, +Z up
    outputs = model.render_triplanes(ray_bundle, planes)             # "rgb", "accumulation", "depth", ...
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from nerfstudio.engine.trainer import TrainerConfig
from torch import Tensor

from lrm_nerfstudio.model.lrm_model import ARCHITECTURE_FIELDS, LRMModel
from lrm_nerfstudio.scripts.export_weights import ModelLoadError, load_weights

SOURCE_PRESET_FIELDS = ("source_resolution", "source_background", "source_resize", "photo_foreground_ratio")
"""Datamanager fields that say how a model's source images are prepared (they travel with its architecture)."""


def load_pretrained(path: Path) -> tuple[TrainerConfig, dict[str, Tensor], int]:
    """(config, model state dict, step) of a weights file (lrm-export-weights / lrm-import-weights) or of a released
    TripoSR / OpenLRM folder (imported on the fly; step 0).

    Raises:
        ModelLoadError: anything unreadable or not fitting; the message starts with the path.
    """
    path = Path(path)
    if path.is_dir():
        from lrm_nerfstudio.convert.load import import_folder

        config, state = import_folder(path)
        return config, state, 0
    return load_weights(path)


def pretrained_config(path: Path) -> TrainerConfig:
    """The config of `load_pretrained(path)` without reading the weights of a released folder."""
    path = Path(path)
    if path.is_dir():
        from lrm_nerfstudio.convert import openlrm, triposr
        from lrm_nerfstudio.convert.load import detect_family, trainer_config

        family = detect_family(path)
        module = triposr if family == "triposr" else openlrm
        return trainer_config(family, module.read_config(path), str(path / module.CONFIG_FILE))
    return load_weights(path)[0]


def adopt_architecture(pipeline_config, source: TrainerConfig) -> None:
    """Give `pipeline_config` (an LRMPipelineConfig) the model architecture and source-image preset of `source`."""
    model, src_model = pipeline_config.model, source.pipeline.model
    for name in ARCHITECTURE_FIELDS:
        setattr(model, name, getattr(src_model, name))
    dm, src_dm = pipeline_config.datamanager, source.pipeline.datamanager
    names = {f.name for f in fields(dm)}
    for name in SOURCE_PRESET_FIELDS:
        if name in names:
            setattr(dm, name, getattr(src_dm, name))


def from_pretrained(path: str | Path, device: str | torch.device | None = None) -> LRMModel:
    """An LRMModel in eval mode from a weights file or a released TripoSR / OpenLRM folder.

    Its documented API: `predict_triplanes(images [B, 3, H, W] in [0, 1] at the model's source resolution,
    cameras [B, 16])`, `field.rgb_density_at(points [B, P, 3], planes)` and `render_triplanes(ray_bundle, planes)`,
    all in the project's world frame (+Z up, the canonical source camera on -Y).

    Raises:
        ModelLoadError: the path is not a weights file or a released folder, or the weights do not fit.
    """
    from lrm_nerfstudio.scripts.reconstruct import build_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    config, state, _ = load_pretrained(Path(path))
    return build_model(config, state, device, str(path))


__all__ = ["ModelLoadError", "from_pretrained", "load_pretrained"]
