"""Benchmark `extract_mesh` at a given resolution with a cheap analytic density; prints JSON.

Peak RSS comes from the OS (ru_maxrss) and includes the interpreter and torch (reported as `baseline_rss_mb`).

    uv run python scripts/benchmark_mesh.py --resolution 512
"""

from __future__ import annotations

import json
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
    """z-slices per marching-cubes block."""


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
    mesh = extract_mesh(
        density, resolution=config.resolution, chunk_size=config.chunk_size, block_size=config.block_size
    )
    seconds = time.perf_counter() - t0
    result = {
        "resolution": config.resolution,
        "chunk_size": config.chunk_size,
        "block_size": config.block_size,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "baseline_rss_mb": round(baseline, 1),
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "watertight": bool(mesh.is_watertight),
        "iso_level": mesh.metadata["iso_level"],
        "iso_method": mesh.metadata["iso_method"],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return result


def entrypoint() -> None:
    main(tyro.cli(BenchmarkConfig))


if __name__ == "__main__":
    entrypoint()
