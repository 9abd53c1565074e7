"""`lrm-export-splat`: an LRM run's display reconstruction as 3D Gaussians, the way `ns-export` exports a run.

nerfstudio's `ns-export` cannot take this as a subcommand: its subcommands are a fixed `Union` in
`nerfstudio/scripts/exporter.py` with no plugin entry point, and its own `gaussian-splat` asserts a splatfacto
model. So this command takes the same `--load-config` / `--output-dir` (it subclasses ns-export's `Exporter`), opens
the run with `eval_setup` as ns-export does, converts the reconstruction of `pipeline.datamanager.display_object`
(by default the first test object; `--display-object` takes an object id or an image path) and writes a standard
3DGS PLY (`lrm_nerfstudio.splat.ply`).

Example:
    lrm-export-splat --load-config outputs/ds/lrm-tiny/2024-01-01_000000/config.yml --output-dir exports/
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Annotated

import tyro
from nerfstudio.scripts.exporter import Exporter
from nerfstudio.utils.rich_utils import CONSOLE

from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.methods import DisplayObjectError, open_display_run
from lrm_nerfstudio.quiet import print_error
from lrm_nerfstudio.splat.convert import SplatConversionConfig, gaussians_from_triplane
from lrm_nerfstudio.splat.gaussians import EmptyReconstructionError
from lrm_nerfstudio.splat.ply import write_gaussians_ply


@dataclass
class ExportSplatConfig(Exporter):
    """Export the reconstruction of an LRM run's display object as 3D Gaussians (a standard 3DGS PLY)."""

    output_filename: str = "splat.ply"
    """Name of the PLY written in --output-dir (ns-export gaussian-splat's default name)."""
    display_object: str | None = None
    """Object id (any split) or image path to reconstruct; default: the config's pipeline.datamanager.display_object."""
    conversion: Annotated[SplatConversionConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=SplatConversionConfig
    )
    """How the field becomes Gaussians."""


def main(config: ExportSplatConfig) -> int:
    """Export; returns the exit code: 0 written, 1 empty reconstruction, 2 bad config, checkpoint or option."""
    if config.conversion.num_gaussians <= 0:
        print_error(f"--num-gaussians must be > 0, got {config.conversion.num_gaussians}")
        return 2
    try:
        pipeline, name, step = open_display_run(config.load_config, config.display_object)
    except (ModelLoadError, DisplayObjectError) as err:
        print_error(str(err))
        return 2
    model = pipeline.model
    try:
        gaussians = gaussians_from_triplane(model.field, model.display_triplanes(), config.conversion)
        path = write_gaussians_ply(config.output_dir / config.output_filename, gaussians)
    except EmptyReconstructionError as err:
        print_error(f"{name}: {err} (nothing written)")
        return 1
    CONSOLE.print(f"Wrote {path}: {len(gaussians)} Gaussians of {name} (step {step})", soft_wrap=True, highlight=False)
    return 0


def entrypoint() -> None:
    """`lrm-export-splat` console script."""
    sys.exit(main(tyro.cli(ExportSplatConfig)))


if __name__ == "__main__":
    entrypoint()
