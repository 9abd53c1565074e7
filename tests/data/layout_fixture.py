"""Write rendered lrm-multiview objects in OpenLRM's layout or as a plain folder of nerfstudio-data objects (tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def write_openlrm(src: Path, dst: Path, ids: list[str]) -> Path:
    """`dst/<uid>/{rgba/NNN.png, pose/NNN.npy, intrinsics.npy}` from the objects `ids` of the dataset `src`."""
    for oid in ids:
        meta = json.loads((src / oid / "transforms.json").read_text())
        out = dst / oid
        (out / "rgba").mkdir(parents=True)
        (out / "pose").mkdir()
        fx = {f.get("fl_x", meta.get("fl_x")) for f in meta["frames"]}
        assert len(fx) == 1, "OpenLRM keeps one intrinsics per object"
        f = fx.pop()
        np.save(out / "intrinsics.npy", np.array([[f, f], [meta["cx"], meta["cy"]], [meta["w"], meta["h"]]]))
        for view, frame in enumerate(meta["frames"]):
            shutil.copyfile(src / oid / frame["file_path"], out / "rgba" / f"{view:03d}.png")
            np.save(out / "pose" / f"{view:03d}.npy", np.asarray(frame["transform_matrix"], dtype=np.float64)[:3])
    return dst


def write_nerfstudio_folders(src: Path, dst: Path, ids: list[str]) -> Path:
    """`dst/<id>/` copies of the object folders (each a nerfstudio-data dataset), without dataset.json."""
    for oid in ids:
        shutil.copytree(src / oid, dst / oid)
    return dst


def all_ids(src: Path) -> list[str]:
    """Every object id of dataset `src`, train then val then test."""
    splits = json.loads((src / "dataset.json").read_text())["splits"]
    return [oid for s in ("train", "val", "test") for oid in splits.get(s, [])]
