"""Inference: a source image in, its triplane, renders and a coloured mesh out, through `LRMModel.predict_triplanes`.

Every inference entry point (lrm-reconstruct, lrm-eval, the demo's export, `from_pretrained` users) goes through
this module and the model's own `predict_triplanes` / `render_camera`, so that what is scored and meshed is what
training and the viewer see.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from lrm_nerfstudio.mesh.marching_cubes import NoSurfaceError, extract_mesh, sample_density_grid
from lrm_nerfstudio.mesh.texture import TexturedMesh, clean_and_bake
from lrm_nerfstudio.model.lrm_model import LRMModel


@contextmanager
def timed_stage(timings: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    """Add the wall time of the block (after the device's queued work) to `timings[name]`."""
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


@torch.no_grad()
def predict_triplane(
    model: LRMModel,
    image: Float[Tensor, "3 H W"],
    camera: Float[Tensor, "16"],
    timings: dict[str, float] | None = None,
) -> Float[Tensor, "1 3 C R R"]:
    """`model.predict_triplanes` of one source image, timed as "encode" (ViT) and "decode" (the rest) in `timings`."""
    device = model.device
    stage = None if timings is None else (lambda name: timed_stage(timings, name, device))
    return model.predict_triplanes(image[None].to(device), camera[None].to(device), stage=stage)


@torch.no_grad()
def render_nerf_views(
    model: LRMModel, triplanes: Float[Tensor, "1 3 C R R"], cameras: Cameras, background: Tensor
) -> list[np.ndarray]:
    """Frames [H, W, 3] in [0, 1] of `cameras`, volume-rendered from the triplane (chunked rays, colour only)."""
    frames = []
    for i in range(len(cameras)):
        rgb = model.render_camera(cameras[i : i + 1], triplanes, compute_normals=False, background=background)["rgb"]
        frames.append(rgb.clamp(0, 1).cpu().numpy())
    return frames


def extract_colored_mesh(model: LRMModel, triplanes: Float[Tensor, "1 3 C R R"], options: Any):
    """Marching-cubes mesh of the triplane's density inside [-1, 1]^3 with vertex colours from the field."""

    def density(points: Tensor) -> Tensor:
        return model.field.density_at(points[None], triplanes)[0, :, 0]

    def color(points: Tensor) -> Tensor:
        return model.field.rgb_density_at(points[None], triplanes)[0][0]

    def mesh(level: float | None):
        return extract_mesh(
            density,
            resolution=options.resolution,
            chunk_size=options.chunk_size,
            iso_level=level,
            color_fn=color,
            device=model.device,
        )

    try:
        return mesh(options.iso_level)
    except NoSurfaceError:
        if options.iso_level is not None:
            raise
    # The adaptive level can miss a weak field (an undertrained model's near-uniform fog): fall back to the middle
    # of the density range, which always cuts a field that is not constant.
    coarse = sample_density_grid(density, 64, chunk_size=options.chunk_size, device=model.device)
    lo, hi = float(np.nanmin(coarse)), float(np.nanmax(coarse))
    if not hi > lo:
        raise NoSurfaceError(f"no surface found: the density field is constant ({lo:.4g})")
    result = mesh(0.5 * (lo + hi))
    result.metadata["iso_method"] = "mid-range-fallback"
    warnings.warn(
        f"lrm-reconstruct: the adaptive iso-level found no surface; used the middle of the density range "
        f"[{lo:.4g}, {hi:.4g}] (the model may be undertrained)",
        stacklevel=2,
    )
    return result


def finish_mesh(
    model: LRMModel,
    triplanes: Float[Tensor, "1 3 C R R"],
    mesh,
    options: Any,
    timings: dict[str, float],
) -> tuple[Any, TexturedMesh | None]:
    """Clean up the mesh and bake the field's colour into a texture (`lrm_nerfstudio.mesh.texture.clean_and_bake`);
    no texture when neither GLB nor OBJ is written."""
    return clean_and_bake(
        mesh,
        lambda points: model.field.rgb_density_at(points[None], triplanes)[0][0],
        texture_resolution=options.texture_resolution if {"glb", "obj"} & set(options.formats) else 0,
        target_faces=options.target_faces,
        min_component_fraction=options.min_component_fraction,
        chunk_size=min(options.chunk_size, 2**16),
        device=model.device,
        timings=timings,
    )
