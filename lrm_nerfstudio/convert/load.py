"""Released folder -> (model config, processor config, method name, state dict) in the project's format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from lrm_nerfstudio.convert import openlrm, triposr
from lrm_nerfstudio.convert.common import FINETUNE_RAYS_PER_CHUNK, WeightsImportError, model_shapes
from lrm_nerfstudio.model.lrm_model import LRMModelConfig
from lrm_nerfstudio.model.processor import ProcessorConfig

Family = Literal["triposr", "openlrm"]

METHODS: dict[str, str] = {"triposr": "lrm-triposr", "openlrm": "lrm-openlrm"}
"""The registered method that fine-tunes each family."""


@dataclass
class ImportedConfig:
    """What a released folder's config says, in the project's terms."""

    family: Family
    """Which release."""
    model: LRMModelConfig
    """The model's architecture."""
    processor: ProcessorConfig
    """How its source images are prepared."""
    method: str
    """The registered method that fine-tunes it."""
    weights_file: Path
    """The released checkpoint file."""


def detect_family(folder: Path) -> Family:
    """Which released layout a folder holds: TripoSR (config.yaml + model.ckpt) or OpenLRM (config.json +
    model.safetensors).

    Raises:
        WeightsImportError: neither.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsImportError(f"{folder}: not a folder or weights file")
    if (folder / triposr.CONFIG_FILE).is_file() or (folder / triposr.WEIGHTS_FILE).is_file():
        return "triposr"
    if (folder / openlrm.CONFIG_FILE).is_file() or (folder / openlrm.WEIGHTS_FILE).is_file():
        return "openlrm"
    raise WeightsImportError(
        f"{folder}: not a released model folder (TripoSR: config.yaml + model.ckpt; OpenLRM: config.json + "
        "model.safetensors)"
    )


def _module(family: Family):
    return triposr if family == "triposr" else openlrm


def imported_config(family: Family, source_config: dict, name: str, folder: Path) -> ImportedConfig:
    """The project's model and processor configs for a released model's own config (`name`: its file)."""
    module = _module(family)
    model = module.model_config(source_config, name)
    model.eval_num_rays_per_chunk = FINETUNE_RAYS_PER_CHUNK
    return ImportedConfig(
        family, model, module.processor(source_config), METHODS[family], Path(folder) / module.WEIGHTS_FILE
    )


def read_folder_config(folder: Path, family: Family | None = None) -> ImportedConfig:
    """The configs of a released folder, without reading its weights.

    Raises:
        WeightsImportError: not a released folder, or a config that cannot be read.
    """
    folder = Path(folder)
    family = family or detect_family(folder)
    module = _module(family)
    return imported_config(family, module.read_config(folder), str(folder / module.CONFIG_FILE), folder)


def import_folder(folder: Path, family: Family | None = None) -> tuple[ImportedConfig, dict[str, Tensor]]:
    """Read a released folder and map every key of its checkpoint onto the project's model, shapes checked.

    Raises:
        WeightsImportError: wrong or incomplete folder, unreadable file, missing/unexpected key, wrong shape.
    """
    folder = Path(folder)
    family = family or detect_family(folder)
    module = _module(family)
    source_config = module.read_config(folder)
    config = imported_config(family, source_config, str(folder / module.CONFIG_FILE), folder)
    state = module.read_state(folder)
    mapper = module.convert_state(state, source_config, str(folder / module.WEIGHTS_FILE))
    mapper.put("device_indicator_param", torch.empty(0), "(nerfstudio's device marker, no source key)")
    return config, mapper.finish(model_shapes(config.model))
