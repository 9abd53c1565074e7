"""Texture baking: bake time and colour fidelity per texture resolution and face budget. Prints JSON.

Fidelity is the PSNR of renders of the exported mesh (the project's CPU ray caster, unlit, with the texture looked up
through the UVs, or the vertex colours interpolated) against the field's own volume renders from the same cameras
(an orbit of `--views` views at the canonical distance and focal, on white).

The field is, by default, an analytic one: a sharp sphere of radius 0.6 whose colour is a sine pattern of the
direction, one frequency per channel (periods of about 1, 0.3 and 0.1 along the surface), the same at every depth,
so the volume render shows exactly the pattern at the surface. `--weights W --image I` runs on a model's reconstruction of
an image instead (its own `render_nerf_views` is the reference).

    uv run python scripts/benchmark_texture.py                        # 512/1024/2048 x full/50k/20k/5k (minutes)
    uv run python scripts/benchmark_texture.py --quick                # one small case (what the test runs)
    uv run python scripts/benchmark_texture.py --weights lrm-tiny.safetensors --image photo.png
    uv run python scripts/benchmark_texture.py --resolutions 1024 --budgets 50000  # one case
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy import ndimage

from lrm_nerfstudio.generate.renderer import Lighting, MeshRenderer, UVTextureAlbedo, VertexColorAlbedo
from lrm_nerfstudio.mesh.marching_cubes import extract_mesh
from lrm_nerfstudio.mesh.texture import clean_and_bake
from lrm_nerfstudio.mesh.turntable import turntable_cameras

RADIUS = 0.6
FREQUENCIES = (6.0, 20.0, 60.0)
"""Pattern frequencies (radians per radian of direction, times the radius) of the red, green and blue channels."""
UNLIT = Lighting(ambient=1.0, directions=np.zeros((0, 3)), intensities=np.zeros(0))


def pattern_rgb_density(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The analytic field: a sharp sphere, colour a function of the direction only."""
    distance = points.norm(dim=-1)
    direction = points / distance.clamp_min(1e-6)[..., None]
    freq = torch.tensor(FREQUENCIES, dtype=points.dtype, device=points.device)
    rgb = 0.5 + 0.4 * torch.sin(freq * RADIUS * direction + torch.tensor([0.3, 1.1, 2.0]))
    return rgb, 400.0 * torch.sigmoid((RADIUS - distance) / 0.005)


def _composite(rgb_density, o, d, t, background):
    """Emission-absorption quadrature of the samples at depths t [R, S] (midpoints; the last step repeats)."""
    samples = t.shape[1]
    rgb, sigma = rgb_density((o[:, None] + t[..., None] * d[:, None]).reshape(-1, 3))
    delta = torch.diff(t, dim=1, append=t[:, -1:] + (t[:, -1:] - t[:, -2:-1]))
    alpha = 1.0 - torch.exp(-sigma.reshape(len(o), samples) * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
    weights = alpha * trans
    colour = (weights[..., None] * rgb.reshape(len(o), samples, 3)).sum(1)
    return colour + (1.0 - weights.sum(1, keepdim=True)) * background, weights


@torch.no_grad()
def volume_render(rgb_density, cameras, background: torch.Tensor, samples: int = 256) -> list[np.ndarray]:
    """Frames [H, W, 3] of the analytic field inside the [-1, 1]^3 box: `samples` uniform samples find where each
    ray turns opaque, then `samples` more integrate four coarse steps around it (the field's shell is far thinner
    than a coarse step, and its colour changes along the ray); rays that never turn opaque keep the coarse result."""
    frames = []
    for i in range(len(cameras)):
        bundle = cameras.generate_rays(camera_indices=i, keep_shape=True)
        height, width = bundle.origins.shape[:2]
        origins, directions = bundle.origins.reshape(-1, 3), bundle.directions.reshape(-1, 3)
        inv = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
        t0, t1 = (-1.0 - origins) * inv, (1.0 - origins) * inv
        near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
        far = torch.maximum(t0, t1).amin(-1).clamp_min(0.0)
        out = []
        for s in range(0, len(origins), 2048):
            o, d, n, f = origins[s : s + 2048], directions[s : s + 2048], near[s : s + 2048], far[s : s + 2048]
            step = ((f - n) / samples).clamp_min(1e-6)
            t = n[:, None] + (torch.arange(samples) + 0.5)[None] * step[:, None]
            colour, weights = _composite(rgb_density, o, d, t, background)
            cumulative = weights.cumsum(1)
            opaque = cumulative[:, -1] > 0.5
            hit = torch.gather(t, 1, (cumulative < 0.5).sum(1, keepdim=True).clamp_max(samples - 1))[:, 0]
            start = hit - 2.0 * step
            fine_t = start[:, None] + (torch.arange(samples) + 0.5)[None] * (4.0 * step / samples)[:, None]
            fine, _ = _composite(rgb_density, o[opaque], d[opaque], fine_t[opaque], background)
            colour[opaque] = fine
            out.append(colour)
        frames.append(torch.cat(out).reshape(height, width, 3).clamp(0, 1).numpy())
    return frames


def mesh_render(renderer: MeshRenderer, cameras, background: np.ndarray, masks: list | None = None) -> list:
    """Unlit frames [H, W, 3] of a mesh on `background` (the albedo is the surface colour, as the NeRF emits it);
    the hit masks are appended to `masks` when given."""
    frames = []
    for i in range(len(cameras)):
        c2w = np.eye(4)
        c2w[:3] = cameras.camera_to_worlds[i].numpy()
        fx, fy = float(cameras.fx[i]), float(cameras.fy[i])
        cx, cy = float(cameras.cx[i]), float(cameras.cy[i])
        out = renderer.render(c2w, fx, fy, cx, cy, int(cameras.width[i]), int(cameras.height[i]), UNLIT)
        rgb = out.rgba[..., :3].astype(np.float64) / 255.0
        frames.append(np.where(out.mask[..., None], rgb, background))
        if masks is not None:
            masks.append(out.mask)
    return frames


def psnr(frames: list[np.ndarray], reference: list[np.ndarray], masks: list[np.ndarray] | None = None) -> float:
    """PSNR over all pixels, or over the pixels of `masks`."""
    if masks is None:
        masks = [np.ones(f.shape[:2], bool) for f in frames]
    mse = float(np.mean(np.concatenate([((a - b) ** 2)[m].ravel() for a, b, m in zip(frames, reference, masks)])))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


def field_of(args) -> tuple:
    """(density_fn, color_fn, reference renderer, name) of the analytic field or of a model's reconstruction."""
    if args.weights is None:
        return (
            lambda p: pattern_rgb_density(p)[1],
            lambda p: pattern_rgb_density(p)[0],
            lambda cams, bg: volume_render(pattern_rgb_density, cams, bg, args.samples),
            "analytic patterned sphere",
        )
    from lrm_nerfstudio.cameras import canonical_source_camera
    from lrm_nerfstudio.data.image_preprocess import preprocess_image
    from lrm_nerfstudio.inference import predict_triplane, render_nerf_views
    from lrm_nerfstudio.methods import load_model
    from lrm_nerfstudio.scripts.reconstruct import background_of

    loaded = load_model(weights=args.weights, device="cpu")
    pre = preprocess_image(args.image, processor=loaded.model.config.processor,
                           background_color=background_of(loaded.config))  # fmt: skip
    model = loaded.model
    planes = predict_triplane(model, pre.image, canonical_source_camera())
    field = model.field
    return (
        lambda p: field.density_at(p[None], planes)[0, :, 0],
        lambda p: field.rgb_density_at(p[None], planes)[0][0],
        lambda cams, bg: render_nerf_views(model, planes, cams, bg),
        f"{loaded.config.method_name} reconstruction of {args.image}",
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small case (for the test)")
    parser.add_argument("--weights", type=Path, default=None, help="lrm-export-weights file (default: analytic field)")
    parser.add_argument("--image", type=Path, default=None, help="image the model reconstructs (with --weights)")
    parser.add_argument("--mesh-resolution", type=int, default=192, help="marching-cubes lattice points per axis")
    parser.add_argument("--views", type=int, default=8, help="orbit views compared")
    parser.add_argument("--render-resolution", type=int, default=256, help="side of the compared renders")
    parser.add_argument("--samples", type=int, default=256, help="samples per ray and pass of the analytic render")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512, 1024, 2048], help="texture sides baked")
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 50_000, 20_000, 5_000],
                        help="face budgets (0: the full mesh)")  # fmt: skip
    args = parser.parse_args(argv)
    if (args.weights is None) != (args.image is None):
        parser.error("--weights and --image go together")
    resolutions, budgets = tuple(args.resolutions), tuple(b or None for b in args.budgets)
    if args.quick:
        args.mesh_resolution, args.views, args.render_resolution, args.samples = 48, 2, 48, 64
        resolutions, budgets = (128,), (None, 1000)
    torch.set_grad_enabled(False)
    density_fn, color_fn, reference_render, name = field_of(args)
    cameras = turntable_cameras(args.views, resolution=args.render_resolution, elevation_deg=20.0)
    white = torch.ones(3)
    start = time.perf_counter()
    reference = reference_render(cameras, white)
    reference_s = time.perf_counter() - start
    start = time.perf_counter()
    full = extract_mesh(density_fn, resolution=args.mesh_resolution, color_fn=color_fn)
    mesh_s = time.perf_counter() - start
    # Colour fidelity is scored inside the full mesh's silhouette, two pixels in from its edge: at the silhouette a
    # grazing ray through the field's soft shell is partly transparent while a mesh is hit or missed, an error of the
    # geometry that no texture changes (it was 80 % of the whole image's squared error). Both are reported.
    full_masks: list[np.ndarray] = []
    full_albedo = VertexColorAlbedo(np.asarray(full.faces), full.visual.vertex_colors[:, :3].astype(np.float64) / 255)
    mesh_render(MeshRenderer(full.vertices, full.faces, full_albedo), cameras, np.ones(3), full_masks)
    interior = [ndimage.binary_erosion(m, iterations=2) for m in full_masks]

    def scores(frames: list[np.ndarray]) -> dict[str, float]:
        return {"psnr_vs_nerf": psnr(frames, reference, interior), "psnr_vs_nerf_whole_image": psnr(frames, reference)}

    rows = []
    for budget in budgets:
        start = time.perf_counter()
        cleaned, _ = clean_and_bake(full, color_fn, texture_resolution=0, target_faces=budget)
        vertex_s = time.perf_counter() - start
        colors = cleaned.visual.vertex_colors[:, :3].astype(np.float64) / 255.0
        vertex = MeshRenderer(cleaned.vertices, cleaned.faces, VertexColorAlbedo(np.asarray(cleaned.faces), colors))
        rows.append({"faces": len(cleaned.faces), "budget": budget or "full", "texture_resolution": 0,
                     **scores(mesh_render(vertex, cameras, np.ones(3))), "seconds": {"cleanup": vertex_s}})  # fmt: skip
        for resolution in resolutions:
            timings: dict[str, float] = {}
            cleaned, textured = clean_and_bake(
                full, color_fn, texture_resolution=resolution, target_faces=budget or len(full.faces), timings=timings
            )
            assert textured is not None
            mesh: trimesh.Trimesh = textured.mesh
            albedo = UVTextureAlbedo(
                np.asarray(mesh.faces), np.asarray(mesh.visual.uv), textured.image.astype(np.float64) / 255, np.ones(3)
            )
            frames = mesh_render(MeshRenderer(mesh.vertices, mesh.faces, albedo), cameras, np.ones(3))
            rows.append({"faces": len(cleaned.faces), "budget": budget or "full", "texture_resolution": resolution,
                         **scores(frames), "seconds": timings,
                         "charts": int(textured.report["chart_count"]),
                         "atlas_utilization": textured.report["utilization"]})  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
        commit_id = commit.stdout.strip() or None
    except OSError:
        commit_id = None
    result = {
        "field": name,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "commit": commit_id,
        "date": time.strftime("%Y-%m-%d"),
        "mesh_resolution": args.mesh_resolution,
        "full_faces": len(full.faces),
        "views": args.views,
        "render_resolution": args.render_resolution,
        "seconds": {"reference_render": reference_s, "marching_cubes": mesh_s},
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
