"""How a model's source image is prepared: its input contract, saved with its weights.

A model trained on grey 512² sources with the object at 0.85 of the side (TripoSR) gives worse results on white
256² ones, and no error says so. So these settings belong to the model, like transformers' image processors, and
travel in its weights file (io/weights.py), where the presets of the released models set them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SourceResize = Literal["bilinear_antialias", "bicubic_align_corners"]


@dataclass
class ProcessorConfig:
    """Source-image preparation: resolution, background, resize mode and the object's size in a photo."""

    resolution: int = 64
    """Side of the square source image fed to the encoder."""
    background: tuple[float, float, float] | None = None
    """Background of every source image (training sources, photos, viewer uploads), RGB in [0, 1]; None: the
    targets' background. TripoSR's inputs are on grey 0.5."""
    resize: SourceResize = "bilinear_antialias"
    """How source images are resized to `resolution`: bilinear antialiased (LRM, TripoSR) or bicubic with
    align_corners (OpenLRM)."""
    foreground_ratio: float = 0.85
    """Object size / image side after recentring a photo (image_preprocess)."""

    def __post_init__(self) -> None:
        if self.resolution < 1:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if not 0.0 < self.foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in (0, 1], got {self.foreground_ratio}")
        if self.background is not None and not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"background must be RGB in [0, 1], got {self.background}")


DATAMANAGER_FIELDS = {
    "resolution": "source_resolution",
    "background": "source_background",
    "resize": "source_resize",
    "foreground_ratio": "photo_foreground_ratio",
}
"""ProcessorConfig field -> the LRMDataManagerConfig field that holds it during training."""


def processor_of(datamanager_config: object) -> ProcessorConfig:
    """The processor config that a datamanager config's source fields describe."""
    values = {name: getattr(datamanager_config, dm_name) for name, dm_name in DATAMANAGER_FIELDS.items()}
    if values["background"] is not None:
        values["background"] = tuple(float(c) for c in values["background"])
    return ProcessorConfig(**values)


def apply_processor(datamanager_config: object, processor: ProcessorConfig) -> None:
    """Set a datamanager config's source fields from `processor`."""
    for name, dm_name in DATAMANAGER_FIELDS.items():
        setattr(datamanager_config, dm_name, getattr(processor, name))
