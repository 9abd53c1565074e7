"""`lrm-import-weights`: a released TripoSR or OpenLRM v1.1 folder -> one lrm-nerfstudio weights file.

The file is the format `lrm-export-weights` writes (v2: the state dict under stable names, plus the model and
processor configs, the fine-tuning method's name and the checkpoint's SHA-256 as JSON metadata), so `lrm-reconstruct --weights FILE`,
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

from lrm_nerfstudio.convert.load import import_folder
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.weights import WeightsSource, sha256_of
from lrm_nerfstudio.pretrained import Pretrained, save_pretrained
from lrm_nerfstudio.quiet import print_error

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
    try:
        imported, state = import_folder(config.folder, config.family)
    except ModelLoadError as err:
        print_error(str(err))
        return 2
    source = WeightsSource(imported.family, 0, sha256_of(imported.weights_file))
    path = save_pretrained(config.output, Pretrained(imported.model, imported.method, source, state))
    n_params = sum(t.numel() for t in state.values())
    CONSOLE.print(
        f"Wrote {path} ({len(state)} tensors, {n_params / 1e6:.2f}M parameters, method "
        f"{imported.method}) from {config.folder}. {LICENCES[config.family]}",
        soft_wrap=True,
        highlight=False,
    )
    return 0


def entrypoint() -> None:
    """`lrm-import-weights` console script."""
    sys.exit(main(tyro.cli(ImportWeightsConfig)))


if __name__ == "__main__":
    entrypoint()
