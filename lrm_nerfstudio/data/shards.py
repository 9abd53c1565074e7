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
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

import tyro

from lrm_nerfstudio.data.dataset_format import SPLITS, DatasetFormatError, DatasetIndex, ObjectViews, read_dataset_json
from lrm_nerfstudio.data.dataset_format import read_object as read_object_folder
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
        self.path = index.root / str(name)
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
        self.shards = [index.root / str(s) for s in shards]
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

    def read_object(self, object_id: str, check_images: bool) -> ObjectViews:
        """Parse (and validate) one object from its shard, as `dataset_format.read_object` does for a folder."""
        archive = self.archive(object_id)
        return read_object_folder(archive.shard / object_id, object_id, check_images=check_images, source=archive)


def is_sharded(index: DatasetIndex) -> bool:
    """Whether dataset.json says the objects are stored in tar shards."""
    storage = index.meta.get("storage")
    return isinstance(storage, dict) and storage.get("type") == STORAGE_TYPE


# ----------------------------------------------------------------------------------------------------- packing
@dataclass
class PackShardsConfig:
    """Pack an lrm-multiview dataset folder into tar shards of whole objects plus an index."""

    dataset: Path = Path("data/lrm")
    """Dataset folder holding dataset.json and the object folders."""
    output: Path = Path("data/lrm-shards")
    """Folder to write dataset.json, shards.json and shards/*.tar into (must not hold a dataset yet)."""
    num_shards: int = 8
    """Number of tar shards (objects are split into contiguous runs of nearly equal count)."""
    validate: bool = True
    """Validate every object (transforms.json and image headers) before packing."""


def _object_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def pack_shards(config: PackShardsConfig) -> Path:
    """Write the sharded copy of `config.dataset` into `config.output`; returns the output dataset folder.

    Raises:
        DatasetFormatError: the input dataset is bad (with validation on), or the output already holds a dataset.
        ValueError: num_shards < 1.
    """
    if config.num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {config.num_shards}")
    index = read_dataset_json(config.dataset)
    out = Path(config.output)
    if (out / "dataset.json").exists():
        raise _fail(out / "dataset.json", "output folder already holds a dataset", "choose an empty --output")
    ids = [oid for split in SPLITS for oid in index.splits[split]]
    if config.validate:
        for oid in ids:
            read_object_folder(index.root / oid, oid, check_images=True)
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
                for path in _object_files(index.root / oid):
                    info = tar.gettarinfo(str(path), arcname=f"{oid}/{path.relative_to(index.root / oid).as_posix()}")
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = 0  # byte-identical shards for identical input
                    with open(path, "rb") as member:
                        tar.addfile(info, member)
                objects[oid] = [s, start, tar.offset]
    atomic_write_text(
        out / "shards.json",
        json.dumps({"format": SHARD_INDEX_FORMAT, "version": 1, "shards": shard_names, "objects": objects}),
    )
    meta = json.loads((index.root / "dataset.json").read_text(encoding="utf-8"))
    meta["storage"] = {"type": STORAGE_TYPE, "index": "shards.json"}
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=1))  # last: a dataset.json means complete
    return out


def main(config: PackShardsConfig) -> None:
    out = pack_shards(config)
    shards = json.loads((out / "shards.json").read_text(encoding="utf-8"))
    print(f"{out}: {len(shards['objects'])} objects in {len(shards['shards'])} shards")


def entrypoint() -> None:
    """Command-line entry point (`lrm-pack-shards`)."""
    main(tyro.cli(PackShardsConfig))


if __name__ == "__main__":
    entrypoint()
