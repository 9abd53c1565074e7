"""`lrm-reconstruct`: images in, one triplane NeRF each out, as a mesh, a turntable, the triplane and a config.

Per image, in `OUTPUT_DIR/<image stem>/`:
    mesh.glb, mesh.obj, mesh.ply   marching cubes of the density, cleaned up and decimated (GLB is +Y up, OBJ/PLY
                                   +Z up); GLB and OBJ carry a baked colour texture (PBR baseColorTexture; OBJ with
                                   mesh.mtl and mesh.png), the PLY vertex colours (--texture-resolution 0: all three)
    turntable.gif (or .mp4)        a ring of renders around the object
    triplane.safetensors           the predicted triplane, key "triplane", shape [1, 3, C, R, R]
    source.png                     the preprocessed source image the model saw
    input.<ext>                    a copy of the input file
    config.yml                     opens exactly this reconstruction: `ns-viewer --load-config`, `ns-export ...`
    gaussians.ply                  with `--formats ... splat`: 3D Gaussians in the standard 3DGS layout
    turntable_splat.gif            with splat, where gsplat has CUDA: the Gaussians' turntable
and `OUTPUT_DIR/timings.json` with the per-stage timings (also printed as a table).

Examples:
    lrm-reconstruct photo.png chair.jpg --load-config outputs/ds/lrm-tiny/2024-01-01_000000/config.yml
    lrm-reconstruct photo.png --weights lrm-tiny.safetensors --output-dir recon --resolution 512
    lrm-reconstruct photo.png --weights lrm-tiny.safetensors --texture-resolution 2048 --target-faces 20000
    lrm-reconstruct photo.png --weights lrm-tiny.safetensors --formats glb splat --splat-refine-steps 500
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro
from nerfstudio.utils.rich_utils import CONSOLE

from lrm_nerfstudio.data.dataset_format import DatasetFormatError
from lrm_nerfstudio.data.image_preprocess import ImageInputError
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.mesh.marching_cubes import NoSurfaceError
from lrm_nerfstudio.methods import load_model, write_checkpoint
from lrm_nerfstudio.progress import stage_progress
from lrm_nerfstudio.quiet import print_error
from lrm_nerfstudio.reconstruction import (  # noqa: F401 (re-exported: the library API used to live here)
    STAGES,
    LoadedModel,
    OutputOptions,
    Reconstruction,
    ReconstructionTrainerConfig,
    background_of,
    check_output_options,
    display_config,
    reconstruct_file,
    reconstruct_source,
    timings_table,
)
from lrm_nerfstudio.splat.render import gsplat_unavailable_reason


def _unique_dir(root: Path, stem: str, taken: set[str]) -> Path:
    name, k = stem or "image", 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    taken.add(name)
    return root / name


# ----------------------------------------------------------------------------------------------------- CLI
@dataclass
class ReconstructConfig:
    """Reconstruct a textured mesh, a turntable and a triplane from each image with a trained LRM."""

    images: Annotated[list[Path], tyro.conf.Positional]
    """Image files (PNG/JPEG/...); alpha is used as the mask when present, else the background is estimated."""
    load_config: Path | None = None
    """config.yml of an ns-train run (its latest checkpoint is used), or a weights file from lrm-export-weights."""
    weights: Path | None = None
    """Weights file written by lrm-export-weights (instead of --load-config)."""
    output_dir: Path = Path("outputs/reconstructions")
    """Folder of the results: one sub-folder per image and timings.json."""
    foreground_ratio: float | None = None
    """Object size / image side after recentring; None: the model's (its processor's foreground_ratio: 0.85 for
    lrm, lrm-tiny and TripoSR, 0.8 for OpenLRM)."""
    max_pixels: int = 4096 * 4096
    """Larger images are refused before decoding (decompression-bomb guard)."""
    device: str | None = None
    """torch device; default cuda when available, else cpu."""
    output: Annotated[OutputOptions, tyro.conf.OmitArgPrefixes] = field(default_factory=OutputOptions)
    """Mesh and turntable settings."""


def main(config: ReconstructConfig) -> int:
    """Run `lrm-reconstruct`; returns the exit code: 0 all done, 1 some image failed, 2 bad model/config/options."""
    problem = check_output_options(config.output)
    if problem is not None:
        print_error(problem)
        return 2
    start = time.perf_counter()
    try:
        loaded = load_model(config.load_config, config.weights, config.device)
    except ModelLoadError as err:
        print_error(str(err))
        return 2
    load_s = time.perf_counter() - start
    out_root = config.output_dir
    out_root.mkdir(parents=True, exist_ok=True)
    checkpoint = loaded.checkpoint or write_checkpoint(loaded, out_root / "nerfstudio_models")
    CONSOLE.print(
        f"Loaded {type(loaded.model).__name__} ({loaded.config.method_name}, step {loaded.step}) from "
        f"{loaded.source} on {loaded.device} in {load_s:.1f} s",
        soft_wrap=True,
        highlight=False,
    )
    if "splat" in config.output.formats and config.output.splat_refine_steps > 0:
        reason = gsplat_unavailable_reason(loaded.device)
        if reason is not None:
            CONSOLE.print(
                f"[yellow]--splat-refine-steps {config.output.splat_refine_steps}: refinement needs gsplat on CUDA "
                f"({reason}); gaussians.ply is written unrefined and the turntable stays the NeRF render[/yellow]",
                soft_wrap=True,
                highlight=False,
            )
    rows: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    results: dict[str, dict] = {}
    taken: set[str] = set()
    with stage_progress("lrm-reconstruct", total=len(config.images), unit="images") as progress:
        for path in config.images:
            progress.update(description=f"lrm-reconstruct {path.name}")
            _reconstruct_one(config, loaded, path, out_root, checkpoint, taken, rows, failed, results)
            progress.advance()
    report = {
        "model": {"source": str(loaded.source), "method": loaded.config.method_name, "step": loaded.step},
        "device": str(loaded.device),
        "resolution": config.output.resolution,
        "load_s": load_s,
        "images": {name: {"timings_s": rows[name], **results[name]} for name in rows},
        "failed": failed,
    }
    (out_root / "timings.json").write_text(json.dumps(report, indent=2), encoding="utf8")
    CONSOLE.print(timings_table(rows, load_s))
    if failed:
        print_error(f"{len(failed)} of {len(config.images)} images failed: " + ", ".join(failed))
        return 1
    return 0


def _reconstruct_one(config, loaded, path, out_root, checkpoint, taken, rows, failed, results) -> None:
    """One image of `main`: reconstruct it, or record why not."""
    out_dir = _unique_dir(out_root, path.stem, taken)
    try:
        rec = reconstruct_file(
            loaded, path, out_dir, config.output, checkpoint, config.foreground_ratio, config.max_pixels
        )
    except (ImageInputError, DatasetFormatError) as err:
        failed[str(path)] = str(err)
        print_error(str(err))
        return
    except NoSurfaceError as err:
        failed[str(path)] = f"{path}: {err}"
        print_error(f"{path}: {err} (try another --iso-level)")
        return
    except Exception as err:  # noqa: BLE001 (one image's failure, whatever it is, must not stop the batch)
        failed[str(path)] = f"{path}: {type(err).__name__}: {err}"
        print_error(f"{path}: reconstruction failed ({type(err).__name__}: {err}); going on with the other images")
        return
    rows[out_dir.name] = rec.timings
    results[out_dir.name] = {
        "input": str(path),
        "files": {key: str(value) for key, value in rec.files.items()},
        "iso_level": rec.iso_level,
        "num_vertices": rec.num_vertices,
    }
    if rec.splat is not None:
        results[out_dir.name]["splat"] = rec.splat
        if "error" in rec.splat:  # the other files are written; the image still counts as failed
            failed[str(path)] = f"{path}: {rec.splat['error']}"
            print_error(f"{path}: {rec.splat['error']} (no gaussians.ply written; the other files are)")
    CONSOLE.print(f"{path} -> {out_dir} ({rec.num_vertices} vertices, iso-level {rec.iso_level:.3g})", highlight=False)


def entrypoint() -> None:
    """`lrm-reconstruct` console script."""
    sys.exit(main(tyro.cli(ReconstructConfig)))


if __name__ == "__main__":
    entrypoint()
