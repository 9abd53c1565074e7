"""Dataparser for the multi-object lrm-multiview format (docs/DATA.md), or a single image (inference).

Objects live in folders or, packed by `lrm-pack-shards`, in tar shards read by offset (`data/shards.py`).

Scaling to 100k+ objects: setup reads only dataset.json (and a sharded dataset's shards.json). Objects are validated

* eagerly at setup (transforms.json and every image header) when the dataset lists at most
  `eager_validation_max_objects` objects, so bad data fails before any training step;
* lazily beyond that: an object's transforms.json is parsed and checked the first time it is used, and its images
  are checked when decoded. Parsed objects are kept in a bounded LRU cache (`object_cache_size`, per process, i.e.
  per DataLoader worker), so memory does not grow with the dataset. No cache file is written: re-parsing a small
  transforms.json costs far less than decoding the object's images, which happens anyway when it is used.

A bad object is reported once (file and problem), dropped and counted (eager mode: dropped from the listing; lazy
mode: replaced by another object of the same split, counted in the training log as `Data/bad_objects`). The run stops
with a DatasetFormatError only when more than `max_bad_fraction` of the objects seen are bad (`BadObjectTracker`).
Without `skip_bad_objects` the first bad object stops it.

Besides dataset.json folders (and their tar shards), `--data` may be a folder of OpenLRM renders or of nerfstudio-data
object folders, read in place (`lrm_nerfstudio.data.layouts`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs

from lrm_nerfstudio.cameras import ring_cameras, unit_scene_box
from lrm_nerfstudio.data.dataset_format import (
    DEFAULT_MAX_PIXELS,
    SPLITS,
    DatasetFormatError,
    DatasetIndex,
    ObjectViews,
    is_image_path,
    read_dataset_json,
    read_object,
)
from lrm_nerfstudio.data.layouts import FolderLayout, LayoutOptions, detect_layout
from lrm_nerfstudio.data.shards import ShardIndex, is_sharded


class BadObjectTracker:
    """Counts bad objects among the objects seen; each bad one is reported once. Raises when too many are bad.

    The limit applies once `min(100, total)` objects have been seen, so that one early bad object does not stop a
    run whose bad fraction is small.
    """

    def __init__(self, data: Path, max_bad_fraction: float, total: int) -> None:
        self.data, self.max_bad_fraction, self.total = data, max_bad_fraction, total
        self.seen: set[str] = set()
        self.bad: dict[str, str] = {}

    def see(self, object_ids: list[str]) -> None:
        """Objects used (good ones)."""
        self.seen.update(object_ids)
        self.check()

    def report(self, object_id: str, error: str) -> bool:
        """A bad object; warns the first time (returns whether it was new) and checks the limit."""
        self.seen.add(object_id)
        new = object_id not in self.bad
        if new:
            self.bad[object_id] = error
            warnings.warn(f"skipping bad object {object_id!r}: {error}", UserWarning, stacklevel=2)
        self.check()
        return new

    def check(self) -> None:
        """Raise DatasetFormatError when more than max_bad_fraction of the objects seen are bad."""
        n_bad, n_seen = len(self.bad), len(self.seen)
        if not n_bad or n_seen < min(100, max(1, self.total)):
            return
        if n_bad > self.max_bad_fraction * n_seen:
            first = next(iter(self.bad.values()))  # the message starts with the first bad file, as every data error
            raise DatasetFormatError(
                f"{first} -- {n_bad} of the {n_seen} objects of {self.data} seen so far are bad, more than "
                f"max_bad_fraction={self.max_bad_fraction:g} (fix the data, or raise "
                "--pipeline.datamanager.dataparser.max-bad-fraction to skip them)"
            )


@dataclass
class LRMDataParserConfig(DataParserConfig, LayoutOptions):
    """Multi-object lrm-multiview dataset, or one image for inference."""

    _target: type = field(default_factory=lambda: LRMDataParser)
    """Target class to instantiate."""
    data: Path = Path("data/lrm")
    """Dataset folder holding dataset.json, or one image file (inference mode)."""
    eager_validation_max_objects: int = 2000
    """Validate every object (transforms.json + image headers) at setup when there are at most this many."""
    skip_bad_objects: bool = True
    """Drop bad objects (reported once each, counted) instead of stopping at the first one."""
    max_bad_fraction: float = 0.01
    """With skip_bad_objects: stop when more than this fraction of the objects seen are bad."""
    object_cache_size: int = 1024
    """Parsed transforms.json kept per process (LRU); bounds memory on huge datasets."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Largest width * height of a dataset image, checked from its header before decoding (decompression-bomb guard)."""


class LRMDataParser(DataParser):
    """Reads dataset.json at setup; objects on demand (see module docstring).

    Objects are normalised to the [-1, 1]^3 scene box by the dataset writer (docs/DATA.md); poses are used as is.
    """

    config: LRMDataParserConfig

    def __init__(self, config: LRMDataParserConfig):
        super().__init__(config=config)
        self.data = Path(config.data)
        self.includes_time = False
        self._cache: OrderedDict[str, ObjectViews] = OrderedDict()
        self._bad: dict[str, str] = {}
        self.image_path: Path | None = None
        self.index: DatasetIndex | None = None
        self.shards: ShardIndex | None = None
        """Which tar shard holds each object, for a dataset packed by `lrm-pack-shards` (None: object folders)."""
        self.layout: FolderLayout | None = None
        """An OpenLRM or nerfstudio-folders dataset read in place (None: dataset.json)."""
        self.tracker = BadObjectTracker(self.data, config.max_bad_fraction, 0)
        """Bad objects met so far (in this process; the datamanager's main process counts those of its workers)."""
        if is_image_path(self.data):
            if not self.data.is_file():
                raise DatasetFormatError(f"{self.data}: image file does not exist")
            self.image_path = self.data
            self.eager = False
        else:
            if not self.data.is_dir():
                raise DatasetFormatError(
                    f"{self.data}: not a dataset folder (no such directory) nor an image file "
                    f"(pass --data DATASET_DIR or --data photo.png)"
                )
            kind = detect_layout(self.data, config)
            if kind == "lrm-multiview":
                self.index = read_dataset_json(self.data)
                self.shards = ShardIndex(self.index) if is_sharded(self.index) else None
            else:
                self.layout = FolderLayout(self.data, kind, config)
                self.index = self.layout.index
            total = sum(len(v) for v in self.index.splits.values())
            self.tracker = BadObjectTracker(self.data, config.max_bad_fraction, total)
            self.eager = total <= config.eager_validation_max_objects
            if self.eager:
                self._validate_all()

    # ------------------------------------------------------------------------------------------------ listing
    @property
    def inference_only(self) -> bool:
        """True for `--data photo.png`: no objects, only a display image."""
        return self.image_path is not None

    def list_objects(self) -> dict[str, list[str]]:
        """Split -> object ids (empty lists in inference mode)."""
        if self.index is None:
            return {s: [] for s in SPLITS}
        return {s: list(v) for s, v in self.index.splits.items()}

    def object_ids(self, split: str) -> list[str]:
        """Object ids of one split (a shared list: do not modify)."""
        if self.index is None:
            return []
        return self.index.splits[split]

    def split_of(self, object_id: str) -> str | None:
        """The split listing `object_id`, or None."""
        if self.index is None:
            return None
        for s, ids in self.index.splits.items():
            if object_id in ids:
                return s
        return None

    # ------------------------------------------------------------------------------------------------ objects
    def _validate_all(self) -> None:
        assert self.index is not None
        for split in SPLITS:
            kept = []
            for oid in self.index.splits[split]:
                try:
                    self._read_object(oid, check_images=True)
                    kept.append(oid)
                except DatasetFormatError as err:
                    if not self.config.skip_bad_objects:
                        raise
                    self._bad[oid] = str(err)
                    self.tracker.report(oid, str(err))
            if self.config.skip_bad_objects and not kept and self.index.splits[split]:
                first = self._bad[self.index.splits[split][0]]
                raise DatasetFormatError(
                    f"{first} -- every object of split {split!r} of {self.data} is bad (see the warnings)"
                )
            self.index.splits[split] = kept
            self.tracker.see(kept)

    def load_object(self, object_id: str) -> ObjectViews:
        """Parsed (and in lazy mode, validated) views of one object; LRU-cached.

        Raises:
            DatasetFormatError: the object's files are bad.
        """
        if self.index is None:
            raise DatasetFormatError(f"{self.data}: single image given; there are no dataset objects")
        hit = self._cache.get(object_id)
        if hit is not None:
            self._cache.move_to_end(object_id)
            return hit
        if object_id in self._bad:
            raise DatasetFormatError(self._bad[object_id])
        try:
            obj = self._read_object(object_id, check_images=False)
        except DatasetFormatError as err:
            self._bad[object_id] = str(err)
            raise
        self._cache[object_id] = obj
        if len(self._cache) > max(1, self.config.object_cache_size):
            self._cache.popitem(last=False)
        return obj

    def _read_object(self, object_id: str, check_images: bool) -> ObjectViews:
        assert self.index is not None
        if self.shards is not None:
            return self.shards.read_object(object_id, check_images=check_images, max_pixels=self.config.max_pixels)
        if self.layout is not None:
            return self.layout.read_object(object_id, check_images=check_images)
        return read_object(
            self.index.root / object_id,
            object_id,
            check_images=check_images,
            dataset_root=self.index.root,
            max_pixels=self.config.max_pixels,
        )

    def mark_bad(self, object_id: str, error: str) -> None:
        """Remember that an object failed (e.g. an image did not decode) so it is not retried."""
        self._bad[object_id] = error
        self._cache.pop(object_id, None)

    def object_cameras(self, obj: ObjectViews, views: list[int] | None = None) -> Cameras:
        """nerfstudio PERSPECTIVE Cameras of an object's views at their native resolution."""
        idx = list(range(len(obj))) if views is None else list(views)
        intr = torch.from_numpy(obj.intrinsics[idx]).float()
        return Cameras(
            camera_to_worlds=torch.from_numpy(obj.c2w[idx]).float(),
            fx=intr[:, 0:1],
            fy=intr[:, 1:2],
            cx=intr[:, 2:3],
            cy=intr[:, 3:4],
            width=intr[:, 4:5].round().long(),
            height=intr[:, 5:6].round().long(),
            camera_type=CameraType.PERSPECTIVE,
        )

    def object_dataparser_outputs(self, object_id: str, max_views: int | None = None) -> DataparserOutputs:
        """Outputs for one object's views (what a per-scene method would see)."""
        obj = self.load_object(object_id)
        n = len(obj) if max_views is None else min(len(obj), max_views)
        views = list(range(n))
        return DataparserOutputs(
            image_filenames=[obj.image_paths[i] for i in views],
            cameras=self.object_cameras(obj, views),
            scene_box=unit_scene_box(),
            metadata={"object_id": object_id},
        )

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        """Outputs for the first object of `split` (or of any split); a ring of cameras for a single image."""
        if self.index is None:
            cams = ring_cameras(64)
            return DataparserOutputs(
                image_filenames=[self.data] * len(cams),
                cameras=cams,
                scene_box=unit_scene_box(),
                metadata={"object_id": self.data.stem},
            )
        order = [split] + [s for s in ("test", "val", "train") if s != split]
        for s in order:
            if self.index.splits.get(s):
                return self.object_dataparser_outputs(self.index.splits[s][0])
        raise DatasetFormatError(f"{self.index.root / 'dataset.json'}: no objects listed")
