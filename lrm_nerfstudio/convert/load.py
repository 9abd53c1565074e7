"""Released folder -> (TrainerConfig, state dict) in the project's format; `from_pretrained`."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.engine.trainer import TrainerConfig
from torch import Tensor

from lrm_nerfstudio.convert import openlrm, triposr
from lrm_nerfstudio.convert.common import WeightsImportError, model_shapes

Family = Literal["triposr", "openlrm"]


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


def trainer_config(family: Family, source_config: dict, name: str) -> TrainerConfig:
    """The fine-tuning method's TrainerConfig (`lrm-triposr` / `lrm-openlrm`) with the model of `source_config`."""
    from lrm_nerfstudio import lrm_config

    module = triposr if family == "triposr" else openlrm
    method = lrm_config.lrm_triposr_method if family == "triposr" else lrm_config.lrm_openlrm_method
    config = deepcopy(method.config)
    config.pipeline.model = module.model_config(source_config, name)
    config.pipeline.model.eval_num_rays_per_chunk = method.config.pipeline.model.eval_num_rays_per_chunk
    config.pipeline.datamanager.source_resolution = module.source_resolution(source_config)
    return config  # type: ignore[return-value]


def import_folder(folder: Path, family: Family | None = None) -> tuple[TrainerConfig, dict[str, Tensor]]:
    """Read a released folder and map every key of its checkpoint onto the project's model, shapes checked.

    Raises:
        WeightsImportError: wrong or incomplete folder, unreadable file, missing/unexpected key, wrong shape.
    """
    folder = Path(folder)
    family = family or detect_family(folder)
    module = triposr if family == "triposr" else openlrm
    source_config = module.read_config(folder)
    config = trainer_config(family, source_config, str(folder / module.CONFIG_FILE))
    state = module.read_state(folder)
    mapper = module.convert_state(state, source_config, str(folder / module.WEIGHTS_FILE))
    mapper.put("device_indicator_param", torch.empty(0), "(nerfstudio's device marker, no source key)")
    return config, mapper.finish(model_shapes(config.pipeline.model))
