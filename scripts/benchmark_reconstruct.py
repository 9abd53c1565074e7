"""Stage timings of `lrm-reconstruct` (load, preprocess, encode, decode, mesh, turntable, write) for a method.

With `--load-config` it times a trained run; without, a randomly initialised model of `--method` (the stage costs do
not depend on the weights, except that the mesh stage's triangle count does). Prints one JSON document to stdout.

Examples:
    uv run python scripts/benchmark_reconstruct.py IMAGE.png --load-config outputs/demo/runs/demo/lrm-demo/RUN/config.yml
    uv run python scripts/benchmark_reconstruct.py IMAGE.png --method lrm --resolution 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from copy import deepcopy
from pathlib import Path

import torch

from lrm_nerfstudio.io.weights import WeightsSource
from lrm_nerfstudio.lrm_config import lrm_method, lrm_tiny_method
from lrm_nerfstudio.pretrained import Pretrained, save_pretrained
from lrm_nerfstudio.scripts.reconstruct import OutputOptions, ReconstructConfig
from lrm_nerfstudio.scripts.reconstruct import main as reconstruct


def random_weights(method: str, folder: Path) -> Path:
    """An `lrm-export-weights` file of a randomly initialised `method` model."""
    config = deepcopy({"lrm": lrm_method, "lrm-tiny": lrm_tiny_method}[method].config)
    config.pipeline.model.encoder.pretrained = None  # no download; same architecture, random weights
    torch.manual_seed(0)
    from nerfstudio.data.scene_box import SceneBox

    model = config.pipeline.model.setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1)
    pretrained = Pretrained(
        config.pipeline.model,
        method,
        WeightsSource("trained", 0, None),
        model.state_dict(),
    )
    return save_pretrained(folder / f"{method}-random.safetensors", pretrained)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path, help="input image (RGBA or RGB)")
    parser.add_argument("--load-config", type=Path, help="config.yml of a trained run (default: random weights)")
    parser.add_argument("--method", choices=("lrm-tiny", "lrm"), default="lrm-tiny", help="without --load-config")
    parser.add_argument("--resolution", type=int, default=OutputOptions.resolution, help="marching-cubes grid")
    parser.add_argument("--turntable-frames", type=int, default=OutputOptions.turntable_frames)
    parser.add_argument("--turntable-resolution", type=int, default=OutputOptions.turntable_resolution)
    parser.add_argument(
        "--no-dense", dest="dense", action="store_false", help="skip timing a dense query of the mesh lattice"
    )
    args = parser.parse_args(argv)
    from nerfstudio.utils.rich_utils import CONSOLE

    CONSOLE.file = sys.stderr  # stdout holds only the JSON
    with tempfile.TemporaryDirectory(prefix="lrm-bench-rec-") as tmp:
        weights = None if args.load_config else random_weights(args.method, Path(tmp))
        options = OutputOptions(
            resolution=args.resolution,
            turntable_frames=args.turntable_frames,
            turntable_resolution=args.turntable_resolution,
        )
        out = Path(tmp) / "out"
        config = ReconstructConfig(
            images=[args.image], load_config=args.load_config, weights=weights, output_dir=out, output=options
        )
        code = reconstruct(config)
        if code != 0:
            raise SystemExit(f"lrm-reconstruct exited with {code}")
        report = json.loads((out / "timings.json").read_text())
        dense = dense_query_seconds(args, weights, out / next(iter(report["images"])), options) if args.dense else None
    result = {
        "device": report["device"],
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "model": report["model"] if args.load_config else {"method": args.method, "weights": "random"},
        "mesh_resolution": args.resolution,
        "load_s": round(report["load_s"], 3),
        **{
            name: {
                "timings_s": {k: round(v, 3) for k, v in image["timings_s"].items()},
                "num_vertices": image["num_vertices"],
            }
            for name, image in report["images"].items()
        },
    }
    if dense is not None:
        mesh_s = next(iter(report["images"].values()))["timings_s"]["mesh"]
        result["dense_query"] = {
            "seconds": round(dense, 3),
            "mesh_stage_over_dense_query": round(mesh_s / dense, 4),
            "target": MESH_OVER_DENSE_TARGET,
            "pass": mesh_s / dense <= MESH_OVER_DENSE_TARGET,
        }
    print(json.dumps(result, indent=2))
    return result


MESH_OVER_DENSE_TARGET = 0.25
"""Target: the mesh stage (coarse to fine) costs at most this fraction of a dense density query of its lattice."""


def dense_query_seconds(args, weights: Path | None, image_dir: Path, options: OutputOptions) -> float:
    """Seconds of a plain dense density query of the mesh lattice, with the triplane lrm-reconstruct wrote."""
    from safetensors.torch import load_file

    from lrm_nerfstudio.mesh.marching_cubes import sample_density_grid
    from lrm_nerfstudio.scripts.reconstruct import load_model

    model = load_model(args.load_config, weights).model
    triplanes = load_file(str(image_dir / "triplane.safetensors"))["triplane"].to(model.device)
    start = time.perf_counter()
    sample_density_grid(
        lambda p: model.field.density_at(p[None], triplanes)[0, :, 0],
        args.resolution,
        chunk_size=options.chunk_size,
        device=model.device,
    )
    return time.perf_counter() - start


if __name__ == "__main__":
    main(sys.argv[1:])
