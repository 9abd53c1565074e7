"""`from_pretrained`: an LRMModel from a weights file or a released TripoSR / OpenLRM folder.

Example:
    import lrm_nerfstudio
    model = lrm_nerfstudio.from_pretrained("triposr.safetensors")   # or the TripoSR / OpenLRM folder itself
    planes = model.predict_triplanes(images, cameras)                # [B, 3, H, W] in [0, 1], [B, 16]
    rgb, density = model.field.rgb_density_at(points, planes)        # points [B, P, 3], project frame, +Z up
    outputs = model.render_triplanes(ray_bundle, planes)             # "rgb", "accumulation", "depth", ...
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from lrm_nerfstudio.convert.load import import_folder, read_folder_config
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.weights import WeightsSource, load_weights, save_weights
from lrm_nerfstudio.model.build import build_model
from lrm_nerfstudio.model.lrm_model import ARCHITECTURE_FIELDS, LRMModel, LRMModelConfig
from lrm_nerfstudio.model.processor import ProcessorConfig


@dataclass
class Pretrained:
    """A model's configs and weights, from a weights file or a released folder."""

    model: LRMModelConfig
    """Model config, with its processor (how its source images are prepared)."""
    method: str
    """Registered method it trains with."""
    source: WeightsSource
    """Where the weights came from."""
    state: dict[str, Tensor] = field(default_factory=dict)
    """State dict (stable or model key names: `build_model` and `load_stable_state` take both); empty when only
    the configs were read."""

    @property
    def step(self) -> int:
        return self.source.step


def load_pretrained(path: Path, weights: bool = True) -> Pretrained:
    """The configs and (with `weights`) the state of a weights file (lrm-export-weights / lrm-import-weights) or
    of a released TripoSR / OpenLRM folder (imported on the fly; step 0).

    Raises:
        ModelLoadError: anything unreadable or not fitting; the message starts with the path.
    """
    path = Path(path)
    if path.is_dir():
        if not weights:
            cfg = read_folder_config(path)
            return Pretrained(cfg.model, cfg.method, WeightsSource(cfg.family, 0, None))
        cfg, state = import_folder(path)
        return Pretrained(cfg.model, cfg.method, WeightsSource(cfg.family, 0, None), state)
    loaded = load_weights(path, LRMModelConfig, ProcessorConfig)
    return Pretrained(loaded.model, loaded.method, loaded.source, loaded.state)


def save_pretrained(path: Path, pretrained: Pretrained) -> Path:
    """Write `pretrained` as a v2 weights file (io/weights.py)."""
    return save_weights(
        path,
        model=clean_model_config(pretrained.model),
        processor=pretrained.model.processor,
        method=pretrained.method,
        source=pretrained.source,
        state=pretrained.state,
    )


def clean_model_config(model: LRMModelConfig) -> LRMModelConfig:
    """`model` without what only makes sense on the machine that wrote it: the path it was initialised from."""
    return replace(model, init_from=None)


def adopt_architecture(pipeline_config, source: Pretrained) -> None:
    """Give `pipeline_config` (an LRMPipelineConfig) the model architecture and processor of `source`."""
    model = pipeline_config.model
    for name in ARCHITECTURE_FIELDS:
        setattr(model, name, getattr(source.model, name))


def from_pretrained(path: str | Path, device: str | torch.device | None = None) -> LRMModel:
    """An LRMModel in eval mode from a weights file or a released TripoSR / OpenLRM folder.

    Its documented API: `predict_triplanes(images [B, 3, H, W] in [0, 1] at the model's source resolution,
    cameras [B, 16])`, `field.rgb_density_at(points [B, P, 3], planes)` and `render_triplanes(ray_bundle, planes)`,
    all in the project's world frame (+Z up, the canonical source camera on -Y).

    Raises:
        ModelLoadError: the path is not a weights file or a released folder, or the weights do not fit.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pretrained = load_pretrained(Path(path))
    return build_model(pretrained.model, pretrained.state, device, str(path))


__all__ = ["ModelLoadError", "Pretrained", "from_pretrained", "load_pretrained", "save_pretrained"]
