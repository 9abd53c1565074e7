"""One job split over machines: `--shard I/N` runs write object folders into one output folder, a merge finishes.

Each shard makes only the objects `Shard.owns` (a stable hash of the object id, `lrm_nerfstudio.io.sharding`) and
writes nothing shared: besides its objects' folders (each written atomically) it writes only its own record
`.shards/shard-I-of-N.json`, once when it starts and again when it ends (with the objects it found bad). A shard
removes only its own objects' half-written temporaries, so shards never touch each other's files.

The merge is the same command without `--shard` on a folder holding shard records. It renders nothing: it checks that
every object is finished (or was reported bad by its shard), names the missing ones with their shard, and only then
writes the shared files and removes `.shards/`. The folder is then the one an unsharded run writes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lrm_nerfstudio.generate.dataset_writer import TMP_PREFIX
from lrm_nerfstudio.io.sharding import Shard, stable_hash

SHARD_DIR = ".shards"
"""Folder of the shard records inside the output folder (removed by a successful merge)."""


class ShardMergeError(ValueError):
    """The merge found objects that no shard finished; the message names them and their shards."""


def _record_path(root: Path, shard: Shard) -> Path:
    return root / SHARD_DIR / f"shard-{shard.index}-of-{shard.count}.json"


def write_shard_record(root: Path, shard: Shard, stamp: str, finished: bool, bad: dict[str, str] | None = None) -> None:
    """This shard's record (atomic: temporary file, then rename)."""
    path = _record_path(root, shard)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    record = {"shard": shard.index, "count": shard.count, "stamp": stamp, "finished": finished, "bad": bad or {}}
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_shard_records(root: Path) -> list[dict[str, Any]]:
    """Every shard record in `root` (empty when the folder was not made by shards).

    Raises:
        ValueError: a record is unreadable, or the records disagree on N or on the settings stamp.
    """
    folder = root / SHARD_DIR
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("shard-*-of-*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: unreadable shard record ({err}); re-run that shard") from err
    if len({r.get("count") for r in records}) > 1:
        raise ValueError(f"{folder}: shard records of different shard counts; one job per --output")
    if len({r.get("stamp") for r in records}) > 1:
        raise ValueError(f"{folder}: shards made with different settings; use the same arguments for every shard")
    return records


def clean_own_temporaries(root: Path, owns: Callable[[str], bool]) -> None:
    """Remove half-written object folders of the objects `owns` accepts (left by a killed run of this shard)."""
    for path in root.glob(f"{TMP_PREFIX}*"):
        object_id = path.name[len(TMP_PREFIX) :].rsplit(".", 1)[0]
        if not owns(object_id):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def check_merge(
    root: Path, ids: Sequence[str], finished: Callable[[str], bool], stamp: str
) -> tuple[list[str], dict[str, str]]:
    """For the merge: (finished ids in `ids` order, bad ids -> reason from the shards' records).

    Raises:
        ShardMergeError: some object is neither finished nor reported bad (named, with its shard), or a shard has
            not recorded its end.
        ValueError: the shards were made with other settings than the merge's.
    """
    records = read_shard_records(root)
    count = int(records[0]["count"])
    if records[0]["stamp"] != stamp:
        raise ValueError(f"{root / SHARD_DIR}: the shards were made with other settings; merge with the same arguments")
    bad: dict[str, str] = {}
    for r in records:
        bad |= r.get("bad", {})
    done = [oid for oid in ids if oid not in bad and finished(oid)]
    done_set = set(done)
    missing = [oid for oid in ids if oid not in done_set and oid not in bad]
    unfinished = sorted(set(range(count)) - {int(r["shard"]) for r in records if r.get("finished")})
    if missing or unfinished:
        parts = []
        if missing:
            shown = ", ".join(f"{oid} (shard {stable_hash(oid) % count}/{count})" for oid in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            parts.append(f"{len(missing)} of {len(ids)} objects are missing: {shown}{more}")
        if unfinished:
            parts.append(f"shards not finished: {', '.join(f'{i}/{count}' for i in unfinished)}")
        raise ShardMergeError(
            f"{root}: cannot merge, " + "; ".join(parts) + " (re-run those shards with --shard I/N, then merge again)"
        )
    return done, bad


def end_merge(root: Path) -> None:
    """Remove the shard records (after the shared files are written): the folder is now an unsharded run's."""
    shutil.rmtree(root / SHARD_DIR, ignore_errors=True)
