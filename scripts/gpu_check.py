"""The CUDA checks in one run (< 5 minutes on one GPU once gsplat's kernels are built); prints one JSON document.

Sections, each timed, each skipped with the reason when the time budget (`--budget-s`) is spent:
    gsplat_setup    building / loading gsplat's CUDA extension (its PyPI wheel JIT-compiles it with nvcc on the
                    first use on a machine, which takes minutes; later runs load the cached build in seconds)
    gsplat_render   `gsplat.rasterization` time for 100 k and 1 M Gaussians (one 512^2 view and a batch of 8)
    refine          distillation of a NeRF (the hand-made sphere triplane through the LRM renderer) into Gaussians:
                    PSNR against the NeRF renders before and after, on training and held-out views
    image_to_mesh   `lrm-reconstruct` of one image with the paper-scale `lrm` (random weights): stage timings
    train_step      one paper-scale `lrm` training step (8 objects x 4 views x 128^2 rays, 64 + 64 samples) with bf16
                    autocast and deferred back-propagation: step time and peak CUDA memory (fresh process)

Without CUDA it exits with status 2 and one message, printing no JSON. First run on an H200 (torch 2.11 + CUDA 13,
gsplat 1.4.0) on 2026-12-04; its numbers are in the README. That run found two bugs no CPU test reaches: gsplat was
handed CPU intrinsics (`camera_matrices`), and the training step's fork server could not use CUDA (it now spawns).

image_to_mesh and train_step read a small dataset: `--data DIR` names one in the project's format (made elsewhere,
e.g. by `benchmark.generate_dataset(DIR, quick=False)`, for a machine without open3d); without it one is generated
(open3d). `--order` runs the named sections first (e.g. the training step before gsplat's first-use build), and
`--partial-json PATH` rewrites PATH with the report so far after each section, so a run stopped from outside keeps
the numbers it had.

    uv run python scripts/gpu_check.py > gpu_check.json
    python3 scripts/gpu_check.py --data DIR --order train_step gsplat_setup --partial-json partial.json > gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

SCRIPTS = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def cuda_timed(fn, repeats: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "runs": repeats}


def sphere_gaussians(count: int):
    from lrm_nerfstudio.model.reference import sphere_rgb_density
    from lrm_nerfstudio.splat.convert import SplatConversionConfig, gaussians_from_field

    fn = sphere_rgb_density(torch.tensor([0.1, -0.2, 0.15]), 0.5)
    start = time.perf_counter()
    g = gaussians_from_field(fn, SplatConversionConfig(num_gaussians=count, resolution=128), device="cuda")
    torch.cuda.synchronize()
    return g, time.perf_counter() - start


def section_gsplat_setup() -> dict[str, Any]:
    from lrm_nerfstudio.splat.render import gsplat_unavailable_reason

    loaded_before = "gsplat.cuda._backend" in sys.modules  # an earlier section built / loaded it (then timed there)
    start = time.perf_counter()
    reason = gsplat_unavailable_reason("cuda")
    out: dict[str, Any] = {"seconds": time.perf_counter() - start, "available": reason is None}
    if loaded_before:
        out["loaded_by_an_earlier_section"] = True
    if reason is not None:
        out["reason"] = reason
    else:  # gsplat.csrc: a prebuilt extension; gsplat_cuda: its JIT build (cached under TORCH_EXTENSIONS_DIR)
        from gsplat.cuda._backend import _C

        out["extension"] = {"module": _C.__name__, "file": getattr(_C, "__file__", None)}
    return out


def section_gsplat_render() -> dict[str, Any]:
    from lrm_nerfstudio.splat.refine import distillation_cameras
    from lrm_nerfstudio.splat.render import render_gaussians

    one, eight = distillation_cameras(1, 512), distillation_cameras(8, 512)
    background = torch.ones(3)
    out: dict[str, Any] = {"resolution": 512}
    for count in (100_000, 1_000_000):
        g, convert_s = sphere_gaussians(count)
        with torch.no_grad():
            out[str(count)] = {
                "gaussians": len(g),
                "conversion_s": convert_s,
                "one_view": cuda_timed(lambda g=g: render_gaussians(g, one, background), repeats=20),
                "eight_views": cuda_timed(lambda g=g: render_gaussians(g, eight, background), repeats=10),
            }
        del g
        torch.cuda.empty_cache()
    return out


def section_refine(steps: int) -> dict[str, Any]:
    import numpy as np

    from lrm_nerfstudio.inference import render_nerf_views
    from lrm_nerfstudio.lrm_config import lrm_tiny_method
    from lrm_nerfstudio.model.build import new_model
    from lrm_nerfstudio.model.reference import sphere_triplane
    from lrm_nerfstudio.splat.convert import SplatConversionConfig, gaussians_from_triplane
    from lrm_nerfstudio.splat.refine import SplatRefineConfig, distillation_cameras, refine_gaussians

    model_config = replace(lrm_tiny_method.config.pipeline.model, use_lpips=False)
    model = new_model(model_config, "cuda")
    field, planes = sphere_triplane(torch.tensor([0.1, -0.2, 0.15]), 0.5)
    model.field = field.to("cuda")  # the LRM renderer (nerfstudio samplers) on a known triplane
    planes = planes.to("cuda")
    background = torch.ones(3)
    views, side = 32, 128
    train, held = distillation_cameras(views, side), distillation_cameras(views, side, heldout=True)
    as_images = lambda cams: torch.from_numpy(np.stack(render_nerf_views(model, planes, cams, background)))
    start = time.perf_counter()
    targets, held_targets = as_images(train), as_images(held)
    nerf_s = time.perf_counter() - start
    g = gaussians_from_triplane(model.field, planes, SplatConversionConfig(num_gaussians=100_000, iso_level=1.0))
    result = refine_gaussians(g, train, targets, background, SplatRefineConfig(steps=steps, num_views=views),
                              heldout=(held, held_targets))  # fmt: skip
    return {
        "gaussians": len(g),
        "steps": steps,
        "views": views,
        "resolution": side,
        "nerf_render_targets_s": nerf_s,
        "psnr_vs_nerf_before": result.psnr_before,
        "psnr_vs_nerf_after": result.psnr_after,
        "heldout_psnr_vs_nerf_before": result.heldout_psnr_before,
        "heldout_psnr_vs_nerf_after": result.heldout_psnr_after,
        "refine_s": result.seconds,
    }


def section_image_to_mesh(tmp: Path, image: Path) -> dict[str, Any]:
    from benchmark_reconstruct import random_weights
    from nerfstudio.utils.rich_utils import CONSOLE

    from lrm_nerfstudio.scripts.reconstruct import OutputOptions, ReconstructConfig
    from lrm_nerfstudio.scripts.reconstruct import main as reconstruct

    CONSOLE.file = sys.stderr  # stdout holds only the JSON
    weights = random_weights("lrm", tmp)
    out = tmp / "recon"
    options = OutputOptions(resolution=256, turntable_frames=0, formats=("glb", "splat"))
    code = reconstruct(ReconstructConfig(images=[image, image], weights=weights, output_dir=out, output=options,
                                         device="cuda"))  # fmt: skip
    report = json.loads((out / "timings.json").read_text())
    images = list(report["images"].values())
    warm = images[-1]["timings_s"]  # the second image: CUDA kernels and cuDNN plans already warm
    latency = sum(warm.get(s, 0.0) for s in ("preprocess", "encode", "decode", "mesh"))
    return {
        "exit_code": code,
        "model": "lrm (random weights; a trained field gives far fewer mesh vertices)",
        "mesh_resolution": 256,
        "image_to_mesh_s": latency,
        "timings_s_first_image": images[0]["timings_s"],
        "timings_s_second_image": warm,
        "num_vertices": images[-1]["num_vertices"],
        "splat": images[-1].get("splat"),
    }


def section_train_step(data: Path) -> dict[str, Any]:
    from benchmark import run_child

    spec = {"method": "lrm", "quick": False, "device": "cuda", "threads": os.cpu_count() or 1, "data": str(data),
            "deferred": True, "chunk_rays": 8192, "repeats": 2, "warmup": 1}  # fmt: skip
    out = run_child(spec)
    out["amp"] = "bf16 autocast (encoder + transformer), deferred back-propagation"
    out["peak_memory_gib"] = out["peak_memory_bytes"] / 2**30
    return out


SECTIONS = ("gsplat_setup", "gsplat_render", "refine", "image_to_mesh", "train_step")
"""The sections in their default order."""
NEEDS_GSPLAT = ("gsplat_render", "refine")
"""Sections that run only where gsplat_setup, run before them, found gsplat working."""


def section_order(first: list[str]) -> list[str]:
    """`first` in its order, then the other sections in the default order."""
    return list(dict.fromkeys(first)) + [s for s in SECTIONS if s not in first]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=290.0, help="skip the remaining sections past this time")
    parser.add_argument("--refine-steps", type=int, default=500, help="refinement steps of the refine section")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    parser.add_argument("--order", nargs="*", default=[], choices=SECTIONS, metavar="SECTION",
                        help="run these sections first, in this order; the others follow in the default order ("
                        + " ".join(SECTIONS) + "); gsplat_setup must come before gsplat_render and refine")  # fmt: skip
    parser.add_argument("--data", type=Path, default=None, help="an existing dataset (a folder with dataset.json, "
                        "e.g. benchmark.generate_dataset(DIR, quick=False)'s) for image_to_mesh and train_step; "
                        "default: generate one (needs open3d)")  # fmt: skip
    parser.add_argument("--partial-json", type=Path, default=None, metavar="PATH",
                        help="after each section, rewrite PATH with the report so far")  # fmt: skip
    args = parser.parse_args(argv)
    order = section_order(args.order)
    for name in NEEDS_GSPLAT:
        if order.index(name) < order.index("gsplat_setup"):
            parser.error(f"--order: {name} needs gsplat_setup before it (order: {' '.join(order)})")
    if args.data is not None and not (args.data / "dataset.json").is_file():
        parser.error(f"--data {args.data}: no dataset.json there (a dataset in the project's format is needed)")
    args.order = order
    args.data = args.data.resolve() if args.data is not None else None
    return args


@contextlib.contextmanager
def json_stdout():
    """A file on the real stdout, for the JSON; meanwhile file descriptor 1 goes to stderr, so that nothing else
    lands in the JSON: rich consoles, C code and child processes (the training step's fork server inherits fd 1)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w") as out:
            yield out
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write `report` to `path` atomically (a reader never sees half a file)."""
    from lrm_nerfstudio.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); this script measures gsplat and the "
              "paper-scale model on a GPU and has nothing to do here", file=sys.stderr)  # fmt: skip
        return 2
    with json_stdout() as out:
        report = run_sections(args)
        out.write(json.dumps(report, indent=2) + "\n")
    return 0


def run_sections(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(SCRIPTS))
    began = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "budget_s": args.budget_s,
        "data": str(args.data) if args.data is not None else "generated (benchmark.generate_dataset, quick=False)",
    }
    with tempfile.TemporaryDirectory(prefix="lrm-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)

        def dataset() -> Path:
            from benchmark import generate_dataset

            if args.data is not None:
                return args.data
            if not (tmp / "ds" / "dataset.json").is_file():
                generate_dataset(tmp / "ds", quick=False)
            return tmp / "ds"

        def first_test_image() -> Path:
            splits = json.loads((dataset() / "dataset.json").read_text())["splits"]
            return dataset() / splits["test"][0] / "images" / "000.png"

        sections = {
            "gsplat_setup": section_gsplat_setup,
            "gsplat_render": section_gsplat_render,
            "refine": lambda: section_refine(args.refine_steps),
            "image_to_mesh": lambda: section_image_to_mesh(tmp, first_test_image()),
            "train_step": lambda: section_train_step(dataset()),
        }
        for name in args.order:
            run = sections[name]
            if args.partial_json is not None:
                write_json(args.partial_json, {**report, "in_progress": name})
            if name in args.skip:
                report[name] = {"skipped": "--skip"}
                continue
            if name in NEEDS_GSPLAT and not report.get("gsplat_setup", {}).get("available", False):
                report[name] = {"skipped": "gsplat unavailable: " + str(report.get("gsplat_setup", {}).get("reason"))}
                continue
            elapsed = time.perf_counter() - began
            if elapsed > args.budget_s:
                report[name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent ({elapsed:.0f} s)"}
                continue
            log(f"{name} (at {elapsed:.0f} s)")
            start = time.perf_counter()
            try:
                with contextlib.redirect_stdout(sys.stderr):  # stdout holds only the JSON
                    report[name] = run()
            except Exception as err:  # noqa: BLE001 (one failed section must not lose the others' numbers)
                report[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
            report[name]["section_s"] = time.perf_counter() - start
            torch.cuda.empty_cache()
    report["total_s"] = time.perf_counter() - began
    if args.partial_json is not None:
        write_json(args.partial_json, report)
    return report


if __name__ == "__main__":
    sys.exit(main())
