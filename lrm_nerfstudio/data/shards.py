"""Tar shards of an lrm-multiview dataset (webdataset style), read lazily by offset; and `lrm-pack-shards`.

A sharded dataset is a folder holding

```
dataset.json      the original splits, plus "storage": {"type": "tar-shards", "index": "shards.json"}
shards.json       {"format": "lrm-shards", "version": 1, "shards": ["shards/shard-00000.tar", ...],
                   "objects": {object_id: [shard number, first byte, end byte], ...}}
shards/*.tar      whole objects: members <object_id>/transforms.json, <object_id>/images/000.png, ...
```

An object's members are contiguous in its shard, so reading it needs only its byte range: the tar headers in that range
are scanned once (about 512 bytes per file) when the object is first used, and each image is read by `seek` + `read`
when decoded. Nothing else is held in memory, so memory stays flat in the number of objects and shards, and every
DataLoader worker opens the files it needs itself (no file handle crosses a fork). Objects read from shards keep paths
of the form `<shard.tar>/<object_id>/<file>`, so the dataset format's errors name the shard and the member.

    lrm-pack-shards --dataset data/procedural --output data/procedural-shards --num-shards 8
    ns-train lrm-tiny --data data/procedural-shards

`--dataset` may also be OpenLRM renders or a folder of nerfstudio-data object folders (`data/layouts.py`); their
objects are packed as lrm-multiview objects (an OpenLRM object gets a transforms.json beside its rgba/ images).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from lrm_nerfstudio.data.dataset_format import (
    DEFAULT_MAX_PIXELS,
    SPLITS,
    DatasetFormatError,
    DatasetIndex,
    ObjectViews,
    contained_path,
    read_dataset_json,
)
from lrm_nerfstudio.data.dataset_format import read_object as read_object_folder
from lrm_nerfstudio.data.layouts import FolderLayout, LayoutOptions, detect_layout
from lrm_nerfstudio.io.atomic import atomic_path, atomic_write_text

SHARD_INDEX_FORMAT = "lrm-shards"
"""Value of the "format" key of shards.json."""
STORAGE_TYPE = "tar-shards"
"""Value of dataset.json's storage.type for a sharded dataset."""


def _fail(path: Path | str, problem: str, fix: str = "") -> DatasetFormatError:
    return DatasetFormatError(f"{path}: {problem}" + (f" ({fix})" if fix else ""))


# ----------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ObjectArchive:
    """One object's members inside its tar shard (a `dataset_format.MemberSource`)."""

    shard: Path
    """The tar file."""
    members: dict[str, tuple[int, int]]
    """Member name (`<object_id>/<file>`) -> (offset of its data in the shard, size in bytes)."""

    def _name(self, path: Path) -> str:
        rel = Path(path).relative_to(self.shard).as_posix()
        return posixpath.normpath(rel)

    def exists(self, path: Path) -> bool:
        """Whether `<shard>/<member>` is a file member of this object."""
        try:
            return self._name(path) in self.members
        except ValueError:
            return False

    def open(self, path: Path) -> io.BytesIO:
        """The bytes of member `<shard>/<member>`.

        Raises:
            DatasetFormatError: the member is not in the shard, or the shard is missing or truncated.
        """
        name = self._name(path)
        if name not in self.members:
            raise _fail(path, f"no member {name!r} in shard {self.shard}", "re-run lrm-pack-shards")
        offset, size = self.members[name]
        try:
            with open(self.shard, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as err:
            raise _fail(self.shard, f"cannot read shard ({err}) for member {name!r}", "re-run lrm-pack-shards") from err
        if len(data) != size:
            raise _fail(
                self.shard,
                f"shard is truncated: member {name!r} has {len(data)} of its {size} bytes",
                "re-run lrm-pack-shards",
            )
        return io.BytesIO(data)


class ShardIndex:
    """shards.json of a sharded dataset: which shard (and byte range) holds each object."""

    def __init__(self, index: DatasetIndex) -> None:
        storage = index.meta.get("storage")
        dataset_json = index.root / "dataset.json"
        if not isinstance(storage, dict) or storage.get("type") != STORAGE_TYPE:
            raise _fail(dataset_json, f"'storage' is {storage!r}, expected {{'type': {STORAGE_TYPE!r}, 'index': ...}}")
        name = storage.get("index", "shards.json")
        self.path = contained_path(dataset_json, "storage.index", str(name), index.root, index.root, None)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise _fail(self.path, "shard index does not exist", f"named by {dataset_json}") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _fail(self.path, f"cannot read the shard index ({err})", "re-run lrm-pack-shards") from err
        if not isinstance(data, dict) or data.get("format") != SHARD_INDEX_FORMAT:
            raise _fail(self.path, f"not an {SHARD_INDEX_FORMAT!r} index", "re-run lrm-pack-shards")
        shards, objects = data.get("shards"), data.get("objects")
        if not isinstance(shards, list) or not isinstance(objects, dict):
            raise _fail(self.path, "needs a 'shards' list and an 'objects' mapping", "re-run lrm-pack-shards")
        self.shards = [
            contained_path(self.path, f"shards[{i}]", str(s), index.root, index.root, None)
            for i, s in enumerate(shards)
        ]
        self.objects: dict[str, tuple[int, int, int]] = {}
        for oid, entry in objects.items():
            ok = isinstance(entry, list) and len(entry) == 3 and all(isinstance(v, int) for v in entry)
            if not ok or not 0 <= entry[0] < len(self.shards) or not 0 <= entry[1] < entry[2]:
                raise _fail(self.path, f"bad entry for object {oid!r}: {entry!r}", "expected [shard, start, end]")
            self.objects[oid] = (entry[0], entry[1], entry[2])
        for split in SPLITS:
            for oid in index.splits[split]:
                if oid not in self.objects:
                    raise _fail(self.path, f"object {oid!r} (split {split!r}) is in no shard", "re-run lrm-pack-shards")
        for shard in self.shards:  # cheap, and a missing shard is better reported before training starts
            if not shard.is_file():
                raise _fail(
                    shard, "shard file does not exist", f"listed in {self.path}; copy it or re-run lrm-pack-shards"
                )

    def archive(self, object_id: str) -> ObjectArchive:
        """Scan the tar headers of one object's byte range (its data is not read)."""
        number, start, end = self.objects[object_id]
        shard = self.shards[number]
        members: dict[str, tuple[int, int]] = {}
        try:
            if os.path.getsize(shard) < end:
                raise _fail(
                    shard,
                    f"shard is truncated: {os.path.getsize(shard)} bytes, but object {object_id!r} ends at byte {end}",
                    "re-run lrm-pack-shards",
                )
            with open(shard, "rb") as f:
                f.seek(start)
                with tarfile.TarFile(fileobj=f, mode="r") as tar:
                    for info in tar:
                        if info.offset >= end:
                            break
                        if info.isfile():
                            members[posixpath.normpath(info.name)] = (info.offset_data, info.size)
        except FileNotFoundError as err:
            raise _fail(shard, "shard file does not exist", f"listed in {self.path} for object {object_id!r}") from err
        except (tarfile.TarError, OSError) as err:
            raise _fail(
                shard, f"corrupt shard: cannot read the tar headers of object {object_id!r} at byte {start} ({err})",
                "re-run lrm-pack-shards",
            ) from err  # fmt: skip
        if not any(name.startswith(object_id + "/") for name in members):
            raise _fail(
                shard,
                f"corrupt shard: no members of object {object_id!r} at bytes {start}-{end}",
                "re-run lrm-pack-shards",
            )
        return ObjectArchive(shard=shard, members=members)

    def read_object(self, object_id: str, check_images: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> ObjectViews:
        """Parse (and validate) one object from its shard, as `dataset_format.read_object` does for a folder."""
        archive = self.archive(object_id)
        return read_object_folder(
            archive.shard / object_id, object_id, check_images=check_images, source=archive, max_pixels=max_pixels
        )


def is_sharded(index: DatasetIndex) -> bool:
    """Whether dataset.json says the objects are stored in tar shards."""
    storage = index.meta.get("storage")
    return isinstance(storage, dict) and storage.get("type") == STORAGE_TYPE


# ----------------------------------------------------------------------------------------------------- packing
@dataclass
class PackShardsConfig(LayoutOptions):
    """Pack an lrm-multiview dataset folder into tar shards of whole objects plus an index."""

    dataset: Path = Path("data/lrm")
    """Dataset folder holding dataset.json and the object folders (or OpenLRM renders, or nerfstudio-data folders)."""
    output: Path = Path("data/lrm-shards")
    """Folder to write dataset.json, shards.json and shards/*.tar into (must not hold a dataset yet)."""
    num_shards: int = 8
    """Number of tar shards (objects are split into contiguous runs of nearly equal count)."""
    validate: bool = True
    """Validate every object (transforms.json and image headers) before packing."""


def _object_files(folder: Path, dataset_root: Path) -> list[tuple[Path, Path]]:
    """(path in the object folder, its real file) of every file to pack, refused if one resolves outside the dataset.

    A symlink is packed as the file it points to (a tar symlink member would be unreadable from the shard), so it
    must not lead out of the dataset: packing would otherwise copy, say, a home-directory file into shared shards.
    """
    return _contained(
        (p for p in sorted(folder.rglob("*")) if not p.name.startswith(".") and p.is_file()), dataset_root
    )


def _contained(paths, dataset_root: Path) -> list[tuple[Path, Path]]:
    """(path, its real file) of each path, refused when the real file lies outside `dataset_root`."""
    base = os.path.realpath(dataset_root)
    files = []
    for p in paths:
        real = os.path.realpath(p)
        if os.path.commonpath([real, base]) != base:
            raise _fail(p, f"resolves to {real}, outside the dataset folder {base}", "copy the file into the dataset")
        files.append((p, Path(real)))
    return files


def openlrm_transforms(obj: ObjectViews) -> dict:
    """transforms.json of an OpenLRM object (its rgba/ images, poses and intrinsics), for packing."""
    fx, fy, cx, cy, w, h = obj.intrinsics[0].tolist()
    frames = []
    for path, c2w in zip(obj.image_paths, obj.c2w):
        matrix = np.concatenate([c2w.astype(np.float64), [[0.0, 0.0, 0.0, 1.0]]]).tolist()
        frames.append({"file_path": f"rgba/{path.name}", "transform_matrix": matrix})
    return {"camera_model": "PINHOLE", "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": int(w), "h": int(h),
            "source_view": 0, "frames": frames}  # fmt: skip


def pack_shards(config: PackShardsConfig) -> Path:
    """Write the sharded copy of `config.dataset` into `config.output`; returns the output dataset folder.

    Raises:
        DatasetFormatError: the input dataset is bad (with validation on), or the output already holds a dataset.
        ValueError: num_shards < 1.
    """
    if config.num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {config.num_shards}")
    kind = detect_layout(Path(config.dataset), config)
    layout = None if kind == "lrm-multiview" else FolderLayout(Path(config.dataset), kind, config)
    index = read_dataset_json(config.dataset) if layout is None else layout.index
    out = Path(config.output)
    if (out / "dataset.json").exists():
        raise _fail(out / "dataset.json", "output folder already holds a dataset", "choose an empty --output")
    ids = [oid for split in SPLITS for oid in index.splits[split]]

    def members(oid: str) -> list[tuple[str, Path | bytes]]:
        """(name inside the object, real file or bytes) of one object; every file must lie inside its dataset."""
        if layout is None:
            folder, root = index.root / oid, index.root
            # containment of every path transforms.json names is checked whether or not images are validated
            read_object_folder(folder, oid, check_images=config.validate, dataset_root=root)
        else:
            obj = layout.read_object(oid, check_images=config.validate)
            folder, root = obj.root, obj.root.parent
            if kind == "openlrm":
                text = json.dumps(openlrm_transforms(obj), indent=1).encode()
                images = [(f"rgba/{p.name}", real) for p, real in _contained(obj.image_paths, root)]
                return [("transforms.json", text), *images]
        return [(p.relative_to(folder).as_posix(), real) for p, real in _object_files(folder, root)]

    # everything is read and checked before the first byte is written: a refused dataset leaves no output
    files = {oid: members(oid) for oid in ids}
    num_shards = min(config.num_shards, len(ids))
    (out / "shards").mkdir(parents=True, exist_ok=True)
    shard_names, objects = [], {}
    for s in range(num_shards):
        name = f"shards/shard-{s:05d}.tar"
        shard_names.append(name)
        chunk = ids[s * len(ids) // num_shards : (s + 1) * len(ids) // num_shards]
        with atomic_path(out / name, suffix=".partial") as tmp, open(tmp, "wb") as f, \
                tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:  # fmt: skip
            for oid in chunk:
                start = tar.offset
                for member, item in files[oid]:
                    data = item if isinstance(item, bytes) else Path(item).read_bytes()
                    info = tarfile.TarInfo(f"{oid}/{member}")
                    info.size, info.mode = len(data), 0o644
                    info.mtime = 0  # byte-identical shards for identical input
                    tar.addfile(info, io.BytesIO(data))
                objects[oid] = [s, start, tar.offset]
    atomic_write_text(
        out / "shards.json",
        json.dumps({"format": SHARD_INDEX_FORMAT, "version": 1, "shards": shard_names, "objects": objects}),
    )
    if layout is None:
        meta = json.loads((index.root / "dataset.json").read_text(encoding="utf-8"))
    else:
        splits = {split: v for split, v in index.splits.items() if v}
        meta = {"format": "lrm-multiview", "version": 1, "splits": splits, "packed_from": kind}
    meta["storage"] = {"type": STORAGE_TYPE, "index": "shards.json"}
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=1))  # last: a dataset.json means complete
    return out


def main(config: PackShardsConfig) -> int:
    """Pack; returns the exit status (2 for a refused dataset, with one message naming the file)."""
    try:
        out = pack_shards(config)
    except ValueError as err:  # DatasetFormatError is one
        print(f"lrm-pack-shards: {err}", file=sys.stderr)
        return 2
    shards = json.loads((out / "shards.json").read_text(encoding="utf-8"))
    print(f"{out}: {len(shards['objects'])} objects in {len(shards['shards'])} shards")
    return 0


def entrypoint() -> None:
    """Command-line entry point (`lrm-pack-shards`)."""
    sys.exit(main(tyro.cli(PackShardsConfig)))


if __name__ == "__main__":
    entrypoint()
