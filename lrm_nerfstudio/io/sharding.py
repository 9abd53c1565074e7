"""Static sharding of object jobs over machines (`--shard I/N`), and the stable uid hash behind it and the splits.

Object `oid` belongs to shard `stable_hash(oid) mod N`. The hash is SHA-256 of the id's UTF-8 bytes (Python's own
`hash()` is salted per process, so two machines would disagree). The same hash, scaled to [0, 1), splits a layout
without a dataset.json into train / val / test (`lrm_nerfstudio.data.layouts`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

_SHARD = re.compile(r"^(\d+)/(\d+)$")


def stable_hash(object_id: str) -> int:
    """A 64-bit hash of an object id, the same on every machine and Python version."""
    return int.from_bytes(hashlib.sha256(object_id.encode("utf-8")).digest()[:8], "big")


def unit_hash(object_id: str) -> float:
    """`stable_hash` scaled to [0, 1)."""
    return stable_hash(object_id) / 2.0**64


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based, as SLURM's `$SLURM_ARRAY_TASK_ID` with `--array=0-N-1`)."""

    index: int
    count: int

    def owns(self, object_id: str) -> bool:
        """Whether `object_id` is this shard's job."""
        return stable_hash(object_id) % self.count == self.index

    def select(self, ids: Sequence[str]) -> list[str]:
        """This shard's ids, in their given order."""
        return [oid for oid in ids if self.owns(oid)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> Shard | None:
    """`"I/N"` -> Shard(I, N); None -> None (no sharding: the run, or the merge, of the whole job).

    Raises:
        ValueError: not of the form I/N with 0 <= I < N.
    """
    if text is None:
        return None
    m = _SHARD.match(text.strip())
    if not m:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/64 (shard I of N, counted from 0)")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= I < N (shards are counted from 0, as SLURM array ids)")
    return Shard(index, count)
