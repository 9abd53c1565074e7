"""Start-up cost of LRMDataParser + LRMDataManager on synthetic listings of 1k, 10k and 100k object stubs, and the
data time of one training step (B=4, M=4, 32^2 patches, 64-128 px targets). Prints JSON.

Only the display object is a real folder; the other ids are listed in dataset.json without folders, which is what
lazy validation must cope with (nothing but dataset.json and the display object may be read at setup).

The same for OpenLRM's render layout read in place (`openlrm_listings`): the objects named by a uid list (OpenLRM's
meta_path; stubs without folders), and the objects found by listing the root (stub folders holding only
intrinsics.npy), with the display object given as the test uid list.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from make_fixture import write_dataset, write_dataset_json, write_object

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from layout_fixture import write_openlrm

from lrm_nerfstudio.data.lrm_datamanager import LRMDataManagerConfig
from lrm_nerfstudio.data.lrm_dataparser import LRMDataParserConfig


@dataclass
class BenchmarkConfig:
    """Dataparser/datamanager start-up benchmark."""

    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    """Numbers of listed objects."""
    step_repeats: int = 10
    """Training steps timed for the data-time figure."""
    num_workers: int = 0
    """DataLoader workers for the step timing (0 = in-process, the pure cost of one step)."""
    openlrm_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    """Numbers of OpenLRM-layout objects (uid list, and folders found by listing the root)."""


def _setup(root: Path, **layout) -> dict:
    tracemalloc.start()
    t0 = time.perf_counter()
    parser = LRMDataParserConfig(eager_validation_max_objects=0, **layout)  # stubs have no folders: validate lazily
    dm = LRMDataManagerConfig(data=root, num_workers=0, dataparser=parser).setup(test_mode="val")
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "objects": sum(len(v) for v in dm.list_objects().values()),
        "eager_validation": dm.dataparser.eager,
        "setup_s": round(elapsed, 3),
        "setup_peak_traced_mb": round(peak / 2**20, 2),
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(config: BenchmarkConfig) -> None:
    out: dict = {"listings": []}
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"  # first setup pays one-time imports; keep them out of the figures
        write_object(warm, "display", n_views=2, width=16)
        write_dataset_json(warm, {"test": ["display"]})
        _setup(warm)
        for n in config.sizes:
            root = Path(tmp) / f"n{n}"
            write_object(root, "display", n_views=32, width=128)
            write_dataset_json(root, {"train": [f"stub_{i:06d}" for i in range(n)], "test": ["display"]})
            out["listings"].append(_setup(root))
        real = write_dataset(Path(tmp) / "src", n_train=0, n_val=0, n_test=1, n_views=32, width=128)
        out["openlrm_listings"] = []
        for n in config.openlrm_sizes:
            root = write_openlrm(real, Path(tmp) / f"openlrm{n}", ["obj_test_000"])
            stubs = [f"stub_{i:06d}" for i in range(n)]
            (root.parent / f"uids{n}.json").write_text(json.dumps([*stubs, "obj_test_000"]))
            (root.parent / f"test{n}.json").write_text(json.dumps(["obj_test_000"]))
            test = {"test_uids": root.parent / f"test{n}.json"}
            out["openlrm_listings"].append(
                {"mode": "uid list", **_setup(root, uids=root.parent / f"uids{n}.json", **test)}
            )
            for stub in stubs:  # folders found by listing the root
                (root / stub).mkdir()
                (root / stub / "intrinsics.npy").touch()
            out["openlrm_listings"].append({"mode": "root listing", **_setup(root, **test)})
        root = write_dataset(Path(tmp) / "real", n_train=16, n_val=1, n_test=1, n_views=16, width=256)
        dm = LRMDataManagerConfig(data=root, num_workers=config.num_workers).setup(test_mode="val")
        torch.set_num_threads(1)  # as in each DataLoader worker (2 shared cores)
        dm.next_train(0)
        t0 = time.perf_counter()
        for s in range(1, config.step_repeats + 1):
            dm.next_train(s)
        out["train_step"] = {
            "objects_per_batch": dm.config.objects_per_batch,
            "target_views_per_object": dm.config.target_views_per_object,
            "patch_size": dm.config.patch_size,
            "render_resolution_range": list(dm.config.render_resolution_range),
            "image_size": 256,
            "num_workers": config.num_workers,
            "data_s_per_step": round((time.perf_counter() - t0) / config.step_repeats, 4),
        }
    print(json.dumps(out, indent=2))


def entrypoint() -> None:
    """CLI entry point."""
    main(tyro.cli(BenchmarkConfig))


if __name__ == "__main__":
    entrypoint()
