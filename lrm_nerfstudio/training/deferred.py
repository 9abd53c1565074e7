"""Deferred back-propagation (Zhang et al. 2022, ARF §4.2; used by LRM, Hong et al. 2023 §4.1).

Supervising whole high-resolution views with image-space losses (LPIPS) would keep the autograd graph of every
sample of every ray alive at once. Instead:

1. predict the triplanes with a graph;
2. render all target rays without a graph, chunk by chunk;
3. compute the image-space losses on the rendered pixels and their gradient w.r.t. those pixels;
4. re-render chunk by chunk with a graph on a detached leaf copy of the triplanes, back-propagating the cached pixel
   gradients (into the field's weights and the leaf's `.grad`);
5. back-propagate the leaf's gradient (plus the TV loss) through the upsampler, transformer and encoder.

Rendering memory is then bounded by the chunk size, not the patch size. Both renders of a chunk run under the same
seeded RNG (`replayable_rng`), so the stratified samples of step 4 are exactly those of step 2 and the gradients equal
those of direct back-propagation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor

from lrm_nerfstudio.model.losses import triplane_tv_loss
from lrm_nerfstudio.training.determinism import replayable_rng

if TYPE_CHECKING:
    from lrm_nerfstudio.model.lrm_model import LRMModel

PER_RAY_KEYS = ("rgb", "accumulation", "expected_depth")
"""Rendered per-ray outputs that the losses may read; their gradients are cached between the two renders."""


def render_in_chunks(
    model: LRMModel,
    ray_bundle: RayBundle,
    triplanes: Float[Tensor, "B 3 C R R"],
    chunk_rays: int,
    seed: int,
) -> list[dict[str, Tensor]]:
    """Render `ray_bundle` in chunks of `chunk_rays`, chunk i under RNG seed `seed + i`; per-chunk outputs.

    Keeps whatever graph the caller's grad mode builds, so it serves both renders of deferred back-propagation (and,
    with grad on, as the direct reference in tests).
    """
    pieces = []
    for i, start in enumerate(range(0, len(ray_bundle), chunk_rays)):
        with replayable_rng(seed + i, triplanes.device):
            out = model.render_triplanes(ray_bundle[start : start + chunk_rays], triplanes)
        pieces.append({key: out[key] for key in PER_RAY_KEYS})
    return pieces


def deferred_backward(
    model: LRMModel,
    ray_bundle: RayBundle,
    batch: dict[str, Any],
    source_images: Float[Tensor, "B 3 H W"],
    source_cameras: Float[Tensor, "B 16"],
    chunk_rays: int,
    seed: int,
    grad_scale: float = 1.0,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """One training step's forward and backward by deferred back-propagation.

    Accumulates into every parameter's `.grad` exactly what `sum(model.get_loss_dict(...)).backward()` after a direct
    `model(ray_bundle, source_images, source_cameras)` would (for the same samples), times `grad_scale` (a mixed-
    precision grad scaler's scale).

    Returns:
        Detached outputs (`rgb`, `accumulation`, `expected_depth`, `triplanes`) and the detached loss dict.
    """
    if chunk_rays < 1:
        raise ValueError(f"deferred_chunk_rays must be >= 1, got {chunk_rays}")
    # (1) triplanes with a graph back to the encoder
    triplanes = model.predict_triplanes(source_images, source_cameras)
    leaf = triplanes.detach().requires_grad_(True)

    # (2) every target ray without a graph
    with torch.no_grad():
        pieces = render_in_chunks(model, ray_bundle, leaf, chunk_rays, seed)
    pixels = {key: torch.cat([p[key] for p in pieces]).requires_grad_(True) for key in PER_RAY_KEYS}
    del pieces
    outputs: dict[str, Any] = dict(pixels)
    metadata = ray_bundle.metadata or {}
    if "directions_norm" in metadata:
        outputs["directions_norm"] = metadata["directions_norm"]

    # (3) image-space losses (LPIPS on whole patches included) and their gradients w.r.t. the pixels
    with torch.enable_grad():
        image_losses = model.get_loss_dict(outputs, batch)  # no "triplanes" in outputs: TV comes in step 5
        total = torch.stack(list(image_losses.values())).sum() * grad_scale
        pixel_grads = torch.autograd.grad(total, list(pixels.values()), allow_unused=True)

        # (4) re-render with a graph, chunk by chunk, feeding the cached pixel gradients
        for i, start in enumerate(range(0, len(ray_bundle), chunk_rays)):
            with replayable_rng(seed + i, leaf.device):
                out = model.render_triplanes(ray_bundle[start : start + chunk_rays], leaf)
            roots = [
                (out[key], grad[start : start + chunk_rays])
                for key, grad in zip(PER_RAY_KEYS, pixel_grads)
                if grad is not None and out[key].requires_grad
            ]
            if roots:
                torch.autograd.backward([r for r, _ in roots], [g for _, g in roots])

        # (5) the triplanes' gradient (and TV's) through upsampler, transformer and encoder
        loss_dict = {name: value.detach() for name, value in image_losses.items()}
        roots, grads = [], []
        if leaf.grad is not None:
            roots.append(triplanes)
            grads.append(leaf.grad)
        if model.config.tv_loss_mult > 0:
            tv = model.config.tv_loss_mult * triplane_tv_loss(triplanes)
            loss_dict["tv_loss"] = tv.detach()
            roots.append(tv * grad_scale)
            grads.append(torch.ones_like(tv))
        if roots:
            torch.autograd.backward(roots, grads)

    outputs = {key: value.detach() for key, value in outputs.items()}
    outputs["triplanes"] = triplanes.detach()
    return outputs, loss_dict
