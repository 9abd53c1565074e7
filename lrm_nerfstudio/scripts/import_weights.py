"""`lrm-import-weights`: a released TripoSR or OpenLRM v1.1 folder -> one lrm-nerfstudio weights file.

The file is the format `lrm-export-weights` writes (the state dict, plus the YAML of the fine-tuning method's
TrainerConfig with the model's architecture in the safetensors metadata), so `lrm-reconstruct --weights FILE`,
`lrm_nerfstudio.from_pretrained(FILE)` and `ns-train lrm-triposr --pipeline.model.init-from FILE` all take it.
Every key of the checkpoint is mapped and its shape checked; anything else is an error (exit 2), never a partial
load. The weights are downloaded by you, on your machine; nothing is fetched here.

Examples:
    lrm-import-weights triposr ~/models/TripoSR --output triposr.safetensors
    lrm-import-weights openlrm ~/models/openlrm-mix-base-1.1 --output openlrm-base.safetensors
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro
from nerfstudio.utils.rich_utils import CONSOLE

from lrm_nerfstudio.scripts.export_weights import ModelLoadError, save_weights

LICENCES = {
    "triposr": "TripoSR weights: MIT (stabilityai/TripoSR).",
    "openlrm": "OpenLRM weights: CC BY-NC 4.0, non-commercial use only (zxhezexin/openlrm-*-1.1).",
}


@dataclass
class ImportWeightsConfig:
    """Import a released TripoSR or OpenLRM v1.1 model folder as an lrm-nerfstudio weights file."""

    family: Annotated[Literal["triposr", "openlrm"], tyro.conf.Positional]
    """Which release the folder holds: triposr (config.yaml + model.ckpt) or openlrm (config.json +
    model.safetensors)."""
    folder: Annotated[Path, tyro.conf.Positional]
    """The released model folder, as downloaded from its hub page."""
    output: Path = Path("imported.safetensors")
    """Weights file to write."""


def main(config: ImportWeightsConfig) -> int:
    """Import; returns the process exit code (2 for a wrong folder, key, shape or file)."""
    from lrm_nerfstudio.convert.load import import_folder

    try:
        trainer_config, state = import_folder(config.folder, config.family)
    except ModelLoadError as err:
        CONSOLE.print(f"[bold red]error:[/bold red] {err}", soft_wrap=True, highlight=False)
        return 2
    path = save_weights(config.output, trainer_config, state, step=0)
    n_params = sum(t.numel() for t in state.values())
    CONSOLE.print(
        f"Wrote {path} ({len(state)} tensors, {n_params / 1e6:.2f}M parameters, method "
        f"{trainer_config.method_name}) from {config.folder}. {LICENCES[config.family]}",
        soft_wrap=True,
        highlight=False,
    )
    return 0


def entrypoint() -> None:
    """`lrm-import-weights` console script."""
    sys.exit(main(tyro.cli(ImportWeightsConfig)))


if __name__ == "__main__":
    entrypoint()
