"""Field -> Gaussians on the CPU: placement accuracy (surface vs density samples), time and memory up to 1 M.

On the analytic sphere and on a hand-made sphere triplane decoded by the project's TriplaneField, for each placement:
the mean / 95th-percentile distance of the centres to the true surface (in lattice voxels), the occupancy IoU
(a lattice point is inside when it lies behind its nearest Gaussian's disc), and the conversion time. Then the
conversion time and the process's peak RSS at 100 k and 1 M Gaussians through the TriplaneField. Prints JSON.

    uv run python scripts/benchmark_splat.py            # the full set (a few minutes on 2 cores)
    uv run python scripts/benchmark_splat.py --quick    # small counts (what the test runs)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch
from scipy.spatial import cKDTree

from lrm_nerfstudio.model.reference import sphere_rgb_density, sphere_triplane
from lrm_nerfstudio.splat.convert import SplatConversionConfig, gaussians_from_field, triplane_rgb_density

CENTRE = torch.tensor([0.1, -0.2, 0.15])
RADIUS = 0.5


def occupancy_iou(means: np.ndarray, normals: np.ndarray, resolution: int = 48) -> float:
    """IoU with the true sphere of the points behind their nearest Gaussian's disc, on a lattice."""
    axis = -1.0 + (np.arange(resolution) + 0.5) * 2.0 / resolution
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    _, nearest = cKDTree(means).query(grid, workers=-1)
    occupied = ((grid - means[nearest]) * normals[nearest]).sum(-1) < 0
    inside = np.linalg.norm(grid - CENTRE.numpy(), axis=-1) < RADIUS
    return float((occupied & inside).sum() / (occupied | inside).sum())


def placement_row(fn, placement: str, count: int, resolution: int) -> dict:
    start = time.perf_counter()
    g = gaussians_from_field(fn, SplatConversionConfig(num_gaussians=count, resolution=resolution, placement=placement))
    seconds = time.perf_counter() - start
    voxel = 2.0 / (resolution - 1)
    error = ((g.means - CENTRE).norm(dim=-1) - RADIUS).abs() / voxel
    return {
        "placement": placement,
        "gaussians": len(g),
        "mean_surface_distance_voxels": float(error.mean()),
        "p95_surface_distance_voxels": float(error.quantile(0.95)),
        "occupancy_iou": occupancy_iou(g.means.numpy(), g.normals.numpy()),
        "median_opacity": float(g.opacities.median()),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts only (for the test)")
    parser.add_argument("--resolution", type=int, default=128, help="placement lattice")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    counts = [5_000] if args.quick else [100_000, 1_000_000]
    resolution = 32 if args.quick else args.resolution
    field, planes = sphere_triplane(CENTRE, RADIUS)
    fields = {
        "analytic_sphere": sphere_rgb_density(CENTRE, RADIUS),
        "sphere_triplane": triplane_rgb_density(field, planes),
    }
    result: dict = {"resolution": resolution, "placement": {}, "scaling": []}
    for name, fn in fields.items():
        print(f"[benchmark_splat] placement on {name}", file=sys.stderr, flush=True)
        result["placement"][name] = [placement_row(fn, p, counts[0], resolution) for p in ("surface", "density")]
    for count in counts:
        print(f"[benchmark_splat] {count} Gaussians through the TriplaneField", file=sys.stderr, flush=True)
        start = time.perf_counter()
        g = gaussians_from_field(
            fields["sphere_triplane"], SplatConversionConfig(num_gaussians=count, resolution=resolution)
        )
        result["scaling"].append({
            "gaussians": len(g),
            "seconds": time.perf_counter() - start,
            "peak_rss_gib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        })  # fmt: skip
        del g
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
