"""`lrm-export-mesh`: an LRM run's display reconstruction as a textured mesh (GLB, OBJ+MTL+PNG, PLY).

The sibling of `lrm-export-splat`, for the same reason (ns-export's subcommands are a fixed `Union` with no plugin
entry point): the same `--load-config` / `--output-dir` (it subclasses ns-export's `Exporter`), the run opened with
`eval_setup` as ns-export does, the reconstruction of `pipeline.datamanager.display_object` (by default the first
test object; `--display-object` takes an object id or an image path) meshed, cleaned up and baked the way
`lrm-reconstruct` does it.

Example:
    lrm-export-mesh --load-config outputs/ds/lrm-tiny/2024-01-01_000000/config.yml --output-dir exports/
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import tyro
from nerfstudio.scripts.exporter import Exporter
from nerfstudio.utils.rich_utils import CONSOLE

from lrm_nerfstudio.inference import extract_colored_mesh, finish_mesh
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.mesh.cleanup import DEFAULT_MIN_COMPONENT_FRACTION
from lrm_nerfstudio.mesh.marching_cubes import NoSurfaceError, save_mesh
from lrm_nerfstudio.mesh.texture import DEFAULT_TEXTURE_RESOLUTION
from lrm_nerfstudio.methods import DisplayObjectError, open_display_run
from lrm_nerfstudio.quiet import print_error
from lrm_nerfstudio.reconstruction import OutputOptions, check_output_options


@dataclass
class ExportMeshConfig(Exporter):
    """Export the reconstruction of an LRM run's display object as a textured mesh."""

    output_stem: str = "mesh"
    """File name (without extension) of the files written in --output-dir."""
    display_object: str | None = None
    """Object id (any split) or image path to reconstruct; default: the config's pipeline.datamanager.display_object."""
    formats: tuple[Literal["glb", "obj", "ply"], ...] = ("glb", "obj", "ply")
    """Mesh formats: GLB (PBR texture), OBJ (+ MTL + PNG), PLY (vertex colours)."""
    resolution: int = 256
    """Marching-cubes lattice points per axis."""
    iso_level: float | None = None
    """Density level of the surface; None chooses it from the density field."""
    texture_resolution: int = DEFAULT_TEXTURE_RESOLUTION
    """Side of the baked colour texture (0: vertex colours only; at most 8192)."""
    target_faces: int | None = None
    """Decimate to this many faces (None: 50 000 when baking a texture, every face with vertex colours)."""
    min_component_fraction: float = DEFAULT_MIN_COMPONENT_FRACTION
    """Drop components with less than this fraction of the largest component's area (0: keep all)."""

    def output_options(self) -> OutputOptions:
        return OutputOptions(
            resolution=self.resolution, iso_level=self.iso_level, texture_resolution=self.texture_resolution,
            target_faces=self.target_faces, min_component_fraction=self.min_component_fraction,
            formats=self.formats, turntable_frames=0,
        )  # fmt: skip


def main(config: ExportMeshConfig) -> int:
    """Export; returns the exit code: 0 written, 1 empty reconstruction, 2 bad config, checkpoint or option."""
    options = config.output_options()
    problem = check_output_options(options)
    if problem is None and (not config.output_stem or "/" in config.output_stem):
        problem = f"--output-stem must be a plain file name, got {config.output_stem!r}"
    if problem is not None:
        print_error(problem)
        return 2
    try:
        pipeline, name, step = open_display_run(config.load_config, config.display_object)
    except (ModelLoadError, DisplayObjectError) as err:
        print_error(str(err))
        return 2
    model = pipeline.model
    triplanes = model.display_triplanes()
    timings: dict[str, float] = {}
    try:
        mesh = extract_colored_mesh(model, triplanes, options)
        mesh, textured = finish_mesh(model, triplanes, mesh, options, timings)
        paths = save_mesh(mesh, config.output_dir, config.output_stem, config.formats, textured=textured)
    except NoSurfaceError as err:
        print_error(f"{name}: {err} (nothing written)")
        return 1
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items())
    CONSOLE.print(
        f"Wrote {', '.join(str(p) for p in paths.values())}: {len(mesh.faces)} faces of {name} (step {step}; {stages})",
        soft_wrap=True,
        highlight=False,
    )
    return 0


def entrypoint() -> None:
    """`lrm-export-mesh` console script."""
    sys.exit(main(tyro.cli(ExportMeshConfig)))


if __name__ == "__main__":
    entrypoint()
