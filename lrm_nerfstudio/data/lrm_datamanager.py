"""DataManager for LRM training (Hong et al. 2023, §3.3): per step, B objects, each with one source view (the
encoder input) and M target views that are resized to a random resolution and supervised on one random patch.

Layout and batch keys follow docs/ARCHITECTURE.md ("What the DataManager gives the pipeline"). Images are loaded per
object, on demand, by a torch DataLoader over an object-level dataset (no global image cache, so memory is flat in the
number of objects). All random choices are drawn from generators seeded by (seed, step, rank, slot), never from
global RNG state; the object order is a per-epoch seeded permutation sharded by rank (`perm[rank::world_size]`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import DataManager, VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.pixel_samplers import PixelSamplerConfig
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lrm_nerfstudio import ranks
from lrm_nerfstudio.cameras import (  # noqa: F401 (ring_cameras re-exported: it lived here)
    CANONICAL_DISTANCE,
    CANONICAL_FOCAL,
    camera_vector,
    cameras_looking_at_origin,
    look_at,
    ring_cameras,
    spherical_eye,
    unit_scene_box,
)
from lrm_nerfstudio.data.dataset_format import (
    DatasetFormatError,
    ObjectViews,
    check_image_size,
    load_depth,
    load_rgba,
)
from lrm_nerfstudio.data.lrm_dataparser import LRMDataParser, LRMDataParserConfig
from lrm_nerfstudio.model.processor import ProcessorConfig

Background = Literal["white", "black", "random", "random_per_step"]


@dataclass
class LRMDataManagerConfig(VanillaDataManagerConfig):
    """Multi-object LRM data: B objects x (1 source + M target patches) per step."""

    _target: type = field(default_factory=lambda: LRMDataManager)
    """Target class to instantiate."""
    dataparser: LRMDataParserConfig = field(default_factory=LRMDataParserConfig)
    """Reads dataset.json (or a single image for inference)."""
    objects_per_batch: int = 4
    """B: objects per training step."""
    target_views_per_object: int = 4
    """M: supervised target views per object."""
    patch_size: int = 32
    """Side of the square patch supervised per target view (patch_size**2 rays per view)."""
    render_resolution_range: tuple[int, int] = (64, 128)
    """(min, max) width a target view is resized to before a random patch is cropped (patch_sampling resize)."""
    patch_sampling: Literal["resize", "stride"] = "resize"
    """How a target view becomes patch_size^2 rays: resize (a random patch of the view resized, antialiased, to a
    width in render_resolution_range; contiguous pixels, as LPIPS needs) or stride (every s-th pixel of the view
    itself in a grid spanning it, s = side // patch_size, at a random offset: the whole object in every patch and
    targets as sharp as the data, where resizing averages edges into the background)."""
    background: Background = "white"
    """Background: white, black, random (one colour per object, shared by its source and targets) or
    random_per_step (one colour for the whole step)."""
    eval_background: Literal["white", "black"] = "white"
    """Background of eval images and of the display object."""
    eval_resolution: int = 128
    """Width of full eval / display views (height keeps the aspect ratio)."""
    num_workers: int = 2
    """DataLoader worker processes for training batches (0 = load in the main process)."""
    seed: int = 0
    """Seed of object order and every per-step random choice."""
    source_view: Literal["canonical", "random"] = "canonical"
    """Source view: canonical = view 0 (the canonical front view); random = any view."""
    source_as_target: bool = False
    """Make the source view one of the M target views (the others are drawn from the remaining views). The source
    view is the one view whose every pixel the image shows: supervising it teaches colour and silhouette first."""
    display_object: str | None = None
    """Object id or image path shown in test mode / the viewer; None = first test, else val, else train object."""
    processor: tyro.conf.Suppress[ProcessorConfig] = field(default_factory=ProcessorConfig)
    """How source images are prepared: the model's processor, which the pipeline sets at setup (set it with
    --pipeline.model.processor.*); only a datamanager made without a pipeline uses this default."""
    max_display_views: int = 32
    """At most this many views of the display object (viewer cameras, test-mode rays)."""
    load_depth: bool = False
    """Also return batch["depth"] (z-depth in world units) from the 16-bit depth PNGs."""
    depth_unit_scale_factor: float = 1e-3
    """Depth PNG value times this = depth in world units."""
    train_num_rays_per_batch: int = 4096
    """Rays per batch in test mode (ns-export overrides it); training batches have B*M*patch_size**2 rays."""
    min_opaque_fraction: float = 0.01
    """Test mode (ns-export pointcloud / poisson): before the first rays, the display object is rendered on a grid
    of its views' pixels, and if fewer than this fraction come out opaque (alpha > 0.5, what nerfstudio's point
    cloud keeps) the export stops with an error instead of collecting points forever. 0 disables the check."""
    opacity_probe_rays: int = 32768
    """About how many rays that check renders, on a regular grid of the export orbit's pixels; the export then
    draws its rays only from the grid cells that came out opaque and their neighbours."""
    export_orbit_cameras: int = 128
    """Test mode (ns-export): rays come from this many virtual cameras spread evenly over a sphere around the
    display object (canonical distance and focal), each ray through a uniformly random sub-pixel position, so
    that a million points are a million distinct surface samples, seen from every side (a feed-forward model
    renders any camera). The display object's own few views would repeat their pixels."""

    def __post_init__(self):
        super().__post_init__()
        lo, hi = self.render_resolution_range
        if not (self.patch_size <= lo <= hi):
            raise ValueError(
                f"render_resolution_range {self.render_resolution_range} must satisfy patch_size <= min <= max"
            )
        if self.objects_per_batch < 1 or self.target_views_per_object < 1:
            raise ValueError("objects_per_batch and target_views_per_object must be >= 1")
        if self.source_as_target and self.target_views_per_object < 2:
            raise ValueError(
                "source_as_target needs target_views_per_object >= 2: with one target view per object only the "
                "source view would ever be supervised"
            )


# ------------------------------------------------------------------------------------------------------ helpers
def _rng(*parts: int) -> np.random.Generator:
    """Generator seeded from integers only (independent of global RNG state)."""
    return np.random.default_rng([int(p) % (2**32) for p in parts])


def _bg_color(mode: str, rng: np.random.Generator) -> np.ndarray:
    if mode == "white":
        return np.ones(3, np.float32)
    if mode == "black":
        return np.zeros(3, np.float32)
    return rng.random(3).astype(np.float32)


def _resize(x: Tensor, hw: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """[C, H, W] -> [C, h, w]; antialiased when shrinking (mode "bilinear")."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    if mode == "nearest":
        return F.interpolate(x[None], size=hw, mode="nearest")[0]
    return F.interpolate(x[None], size=hw, mode="bilinear", antialias=True, align_corners=False)[0]


def _premultiplied(rgba: np.ndarray) -> Tensor:
    """HxWx4 straight alpha -> [4, H, W] premultiplied (so resizing does not bleed background into edges)."""
    t = torch.from_numpy(rgba).permute(2, 0, 1)
    return torch.cat([t[:3] * t[3:], t[3:]], 0)


def _composite(prem: Tensor, bg: np.ndarray) -> tuple[Tensor, Tensor]:
    """Premultiplied [4, h, w] -> (rgb [3, h, w] on bg, alpha [1, h, w])."""
    alpha = prem[3:].clamp(0, 1)
    rgb = prem[:3] + torch.from_numpy(bg)[:, None, None] * (1 - alpha)
    return rgb.clamp(0, 1), alpha


def _scaled_size(width: int, height: int, new_width: int, min_side: int = 1) -> tuple[int, int]:
    return new_width, max(min_side, round(height * new_width / width))


def _resized_patch(
    view: Float[Tensor, "4 H W"],
    depth: Float[Tensor, "1 H W"] | None,
    intrinsics,
    p: int,
    render_resolution_range: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor | None, list[float]]:
    """A random p x p patch of the view resized (antialiased) to a random width in `render_resolution_range`:
    (premultiplied RGBA, depth or None, the patch camera's fx, fy, cx, cy)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    h, w = view.shape[1:]
    lo, hi = render_resolution_range
    new_w, new_h = _scaled_size(w, h, int(rng.integers(lo, hi + 1)), min_side=p)
    y0, x0 = int(rng.integers(0, new_h - p + 1)), int(rng.integers(0, new_w - p + 1))
    prem = _resize(view, (new_h, new_w))[:, y0 : y0 + p, x0 : x0 + p]
    if depth is not None:
        depth = _resize(depth, (new_h, new_w), mode="nearest")[:, y0 : y0 + p, x0 : x0 + p]
    sx, sy = new_w / w, new_h / h
    return prem, depth, [fx * sx, fy * sy, cx * sx - x0, cy * sy - y0]


def _strided_patch(
    view: Float[Tensor, "4 H W"], depth: Float[Tensor, "1 H W"] | None, intrinsics, p: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor | None, list[float]]:
    """Every s-th pixel of the view's own pixels in a p x p grid spanning it (s = side // p), at a random offset:
    the whole view, point-sampled at full sharpness. Returns what `_resized_patch` does; the grid's camera has
    its pixel centres on the chosen pixels' centres."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    h, w = view.shape[1:]
    stride = max(1, min(w, h) // p)
    span = stride * (p - 1) + 1
    if span > min(w, h):
        raise DatasetFormatError(f"a {p} x {p} patch does not fit in a {w} x {h} view")
    y0, x0 = int(rng.integers(0, h - span + 1)), int(rng.integers(0, w - span + 1))
    prem = view[:, y0 : y0 + span : stride, x0 : x0 + span : stride]
    if depth is not None:
        depth = depth[:, y0 : y0 + span : stride, x0 : x0 + span : stride]
    # grid pixel j's centre j + 1/2 looks along full-resolution pixel x0 + stride * j's centre
    return prem, depth, [fx / stride, fy / stride, 0.5 + (cx - x0 - 0.5) / stride, 0.5 + (cy - y0 - 0.5) / stride]


class _Item(NamedTuple):
    """One object slot of one step, as passed to the object-level dataset."""

    kind: int  # 0 train, 1 eval
    split: str
    object_id: str
    step: int
    slot: int
    end_epoch: int
    end_index: int


class ObjectViewsDataset(Dataset):
    """Object-level dataset: an item descriptor -> one source image + M target patches of that object.

    Holds no decoded images; each call decodes the PNGs it needs.
    """

    def __init__(self, parser: LRMDataParser, config: LRMDataManagerConfig, rank: int = 0):
        self.parser = parser
        self.config = config
        self.rank = rank

    def __len__(self) -> int:
        return sum(len(v) for v in self.parser.list_objects().values())

    def load_view(self, obj: ObjectViews, view: int) -> np.ndarray:
        """Decoded RGBA of one view, checked against transforms.json's size."""
        rgba = load_rgba(obj.image_paths[view], obj.source, max_pixels=obj.max_pixels)
        check_image_size(obj, view, rgba.shape[1], rgba.shape[0])
        return rgba

    def source(self, obj: ObjectViews, view: int, bg: np.ndarray) -> tuple[Tensor, Tensor]:
        """(source image [3, S, S], camera vector [16]) of one view, prepared by the model's processor (on its
        background, else on bg)."""
        rgba = torch.from_numpy(self.load_view(obj, view)).permute(2, 0, 1)
        rgb, _ = self.config.processor.prepare(rgba, bg.tolist())
        fx, fy, cx, cy, w, h = (torch.tensor(float(v)) for v in obj.intrinsics[view])
        cam = camera_vector(torch.from_numpy(obj.c2w[view]).float(), fx, fy, cx, cy, w, h).float()
        return rgb, cam

    def _depth(self, obj: ObjectViews, view: int) -> Tensor:
        if obj.depth_paths is None:
            raise DatasetFormatError(
                f"{obj.root / 'transforms.json'}: load_depth is set but frames lack depth_file_path"
            )
        d = load_depth(obj.depth_paths[view], self.config.depth_unit_scale_factor, obj.source, obj.max_pixels)
        return torch.from_numpy(d)[None]

    def _sample(self, obj: ObjectViews, rng: np.random.Generator, bg: np.ndarray) -> dict[str, Any]:
        cfg = self.config
        n_views, m, p = len(obj), cfg.target_views_per_object, cfg.patch_size
        src = 0 if cfg.source_view == "canonical" else int(rng.integers(n_views))
        others = [v for v in range(n_views) if v != src] or [src]
        if cfg.source_as_target:
            rest = rng.choice(others, size=m - 1, replace=len(others) < m - 1)
            targets = np.concatenate([[src], rest]).astype(int)
        else:
            targets = rng.choice(others, size=m, replace=len(others) < m)
        src_img, src_cam = self.source(obj, src, bg)
        imgs, alphas, depths, c2w, intr = [], [], [], [], []
        for t in targets.tolist():
            view = _premultiplied(self.load_view(obj, t))
            depth = self._depth(obj, t) if cfg.load_depth else None
            if cfg.patch_sampling == "stride":
                prem, depth, camera = _strided_patch(view, depth, obj.intrinsics[t][:4], p, rng)
            else:
                prem, depth, camera = _resized_patch(
                    view, depth, obj.intrinsics[t][:4], p, cfg.render_resolution_range, rng
                )
            rgb, alpha = _composite(prem, bg)
            imgs.append(rgb.permute(1, 2, 0))
            alphas.append(alpha.permute(1, 2, 0))
            if depth is not None:
                depths.append(depth[0, :, :, None])
            intr.append(camera)
            c2w.append(obj.c2w[t])
        out = {
            "object_id": obj.object_id,
            "image": torch.stack(imgs),  # [M, p, p, 3]
            "alpha": torch.stack(alphas),
            "c2w": torch.from_numpy(np.stack(c2w)).float(),
            "intrinsics": torch.tensor(intr, dtype=torch.float32),  # patch camera fx, fy, cx, cy
            "source_image": src_img,
            "source_camera": src_cam,
            "background": torch.from_numpy(bg),
        }
        if cfg.load_depth:
            out["depth"] = torch.stack(depths)
        return out

    def __getitem__(self, item: _Item) -> dict[str, Any]:
        cfg = self.config
        rng = _rng(cfg.seed, item.kind, item.step, self.rank, item.slot)
        if cfg.background == "random_per_step":
            bg = _bg_color("random", _rng(cfg.seed, item.kind, item.step, self.rank, 2**31 - 1))
        else:
            bg = _bg_color(cfg.background, rng)
        object_id = item.object_id
        bad: list[tuple[str, str]] = []  # reported (once each) and counted by the main process: see _assemble
        for _ in range(20):
            try:
                out = self._sample(self.parser.load_object(object_id), rng, bg)
                break
            except DatasetFormatError as err:
                self.parser.mark_bad(object_id, str(err))
                if not self.parser.config.skip_bad_objects:
                    return {"error": str(err)}  # re-raised in the main process with the path-first message
                bad.append((object_id, str(err)))
                ids = self.parser.object_ids(item.split)
                object_id = ids[int(rng.integers(len(ids)))]
        else:
            first = bad[0][1]  # errors start with the offending file
            return {
                "error": f"{first} -- and {len(bad) - 1} more bad objects of split {item.split!r} in a row",
                "bad": bad,
            }
        out["step"], out["end_pos"] = item.step, (item.end_epoch, item.end_index)
        out["bad"] = bad
        return out


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    bad = [b for it in items for b in it.get("bad", [])]
    for it in items:
        if "error" in it:
            return {"error": it["error"], "bad": bad}
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in items[0] if isinstance(items[0][k], Tensor)}
    out["bad"] = bad
    out["object_ids"] = [it["object_id"] for it in items]
    out["step"], out["end_pos"] = items[0]["step"], items[-1]["end_pos"]
    return out


class _StepPlan:
    """Infinite batch sampler: lists of B `_Item`s for consecutive steps from a sampler position.

    Epoch e visits `perm_e[rank::world_size]` (same length on every rank), perm_e seeded by (seed, e).
    """

    def __init__(self, dm: LRMDataManager, kind: int, split: str, epoch: int, index: int, step: int):
        self.dm, self.kind, self.split = dm, kind, split
        self.epoch, self.index, self.step = epoch, index, step

    def __iter__(self) -> Iterator[list[_Item]]:
        while True:
            yield self.next_items()

    def next_items(self) -> list[_Item]:
        ids = self.dm._shard(self.split, self.epoch, sharded=self.kind == 0)
        chosen = []
        for _ in range(self.dm.config.objects_per_batch):
            if self.index >= len(ids):
                self.epoch, self.index = self.epoch + 1, 0
                ids = self.dm._shard(self.split, self.epoch, sharded=self.kind == 0)
            chosen.append(ids[self.index])
            self.index += 1
        items = [
            _Item(self.kind, self.split, oid, self.step, b, self.epoch, self.index) for b, oid in enumerate(chosen)
        ]
        self.step += 1
        return items


class DisplayViewsDataset(InputDataset):
    """A small in-memory InputDataset over the display object's views (viewer cameras and thumbnails)."""

    def __init__(self, outputs: DataparserOutputs, images: Float[Tensor, "V H W 3"], alphas: Float[Tensor, "V H W 1"]):
        super().__init__(outputs)
        self.images, self.alphas = images, alphas

    def __len__(self) -> int:
        return self.images.shape[0]

    def get_numpy_image(self, image_idx: int) -> np.ndarray:
        return (self.images[image_idx].numpy() * 255).round().astype(np.uint8)

    def get_image_float32(self, image_idx: int) -> Float[Tensor, "H W 3"]:
        return self.images[image_idx]

    def get_data(self, image_idx: int, image_type: Literal["uint8", "float32"] = "float32") -> dict:
        image = self.get_image_float32(image_idx)
        if image_type == "uint8":
            image = torch.from_numpy(self.get_numpy_image(image_idx))
        return {"image_idx": image_idx, "image": image, "alpha": self.alphas[image_idx]}


# ------------------------------------------------------------------------------------------------- datamanager
class LRMDataManager(VanillaDataManager):
    """Multi-object LRM data manager (see module docstring and ARCHITECTURE.md).

    A VanillaDataManager subclass so that `ns-export` accepts it, but VanillaDataManager.__init__ (which loads every
    image) is not called.
    """

    config: LRMDataManagerConfig
    dataparser: LRMDataParser

    def __init__(
        self,
        config: LRMDataManagerConfig,
        device: torch.device | str = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        self.config = config
        self.device = device
        self.world_size = max(1, int(world_size))
        self.local_rank = int(local_rank)
        # nerfstudio passes the rank on this machine; the shard must follow the rank among all machines' processes
        self.rank = ranks.global_rank() if ranks.is_distributed() else self.local_rank
        self.test_mode = test_mode
        self.test_split = "test" if test_mode in ("test", "inference") else "val"
        self.includes_time = False
        self.sampler = None
        self.exclude_batch_keys_from_device: list[str] = []
        if config.data is not None:
            config.dataparser.data = Path(config.data)
        else:
            config.data = config.dataparser.data
        self.dataparser_config = config.dataparser
        self.dataparser = config.dataparser.setup()
        self.objects = ObjectViewsDataset(self.dataparser, config, rank=self.rank)
        self._pos: dict[str, list[int]] = {"train": [0, 0], "eval": [0, 0]}
        self._shards: dict[tuple[str, int, bool], list[str]] = {}
        self._train_iter: Iterator[dict[str, Any]] | None = None
        self._train_iter_step: int | None = None
        self.train_pixel_sampler = PixelSamplerConfig(num_rays_per_batch=config.train_num_rays_per_batch).setup()
        self.eval_pixel_sampler = None
        DataManager.__init__(self)  # nn.Module init; train_dataset is still None so it sets nothing else up
        self.before_display_rays: Callable[[], None] | None = None
        """Called once per display object before its first test-mode rays (the pipeline's opacity check)."""
        self.set_display_object(config.display_object or self._default_display())

    # ----------------------------------------------------------------------------------------- nerfstudio hooks
    def setup_train(self):
        """Nothing to do: the training loader is built on the first `next_train`."""

    def setup_eval(self):
        """Nothing to do: eval objects load on demand."""

    def get_datapath(self) -> Path:
        return Path(self.config.dataparser.data)

    def get_param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {}

    def get_train_rays_per_batch(self) -> int:
        if self.test_mode != "val":
            return self.train_pixel_sampler.num_rays_per_batch
        c = self.config
        return c.objects_per_batch * c.target_views_per_object * c.patch_size**2

    def get_eval_rays_per_batch(self) -> int:
        c = self.config
        return c.objects_per_batch * c.target_views_per_object * c.patch_size**2

    def list_objects(self) -> dict[str, list[str]]:
        """Split -> object ids."""
        return self.dataparser.list_objects()

    # --------------------------------------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        """Sampler positions (epoch, index) for train and eval; saved with the pipeline's state_dict."""
        return {"train": list(self._pos["train"]), "eval": list(self._pos["eval"]), "seed": self.config.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restores sampler positions so a resumed run continues with the same objects."""
        self._pos = {"train": [int(v) for v in state["train"]], "eval": [int(v) for v in state["eval"]]}
        self._train_iter = None

    def set_patch_sampling(self, patch_size: int, render_resolution_range: tuple[int, int]) -> None:
        """Training patches of `patch_size` from views resized to `render_resolution_range` from the next batch on
        (progressive resolution). Batches the loader's workers prefetched with the old sizes are dropped."""
        lo, hi = render_resolution_range
        if not 1 <= patch_size <= lo <= hi:
            raise ValueError(f"patch_size {patch_size} and render_resolution_range {render_resolution_range} must "
                             "satisfy 1 <= patch_size <= min <= max")  # fmt: skip
        self.config.patch_size, self.config.render_resolution_range = int(patch_size), (int(lo), int(hi))
        self._train_iter = None  # the next `next_train` restarts the loader at the saved sampler position

    # --------------------------------------------------------------------------------------------- sampling
    def _eval_split(self) -> str:
        objs = self.dataparser.list_objects()
        for s in ("val", "test"):
            if objs.get(s):
                return s
        if not getattr(self, "_warned_no_holdout", False):
            self._warned_no_holdout = True
            CONSOLE.print(
                f"[bold yellow]{self.dataparser.data}: no val or test objects; evaluating on training objects, so "
                "the scores are not held-out."
            )
        return "train"

    def _shard(self, split: str, epoch: int, sharded: bool = True) -> list[str]:
        """This rank's objects of `split` in epoch `epoch`; all of them when not `sharded` (evaluation, which runs
        on rank 0 only)."""
        key = (split, epoch, sharded)
        world_size, rank = (self.world_size, self.rank) if sharded else (1, 0)
        if key not in self._shards:
            ids = self.dataparser.object_ids(split)
            if len(ids) < world_size:
                raise DatasetFormatError(
                    f"{self.dataparser.data}: split {split!r} has {len(ids)} objects, fewer than {world_size} ranks"
                )
            g = torch.Generator().manual_seed(int(self.config.seed) * 1_000_003 + epoch)
            perm = torch.randperm(len(ids), generator=g)
            per_rank = len(ids) // world_size
            mine = perm[rank::world_size][:per_rank].tolist()
            if len(self._shards) > 4:
                self._shards.clear()
            self._shards[key] = [ids[i] for i in mine]
        return self._shards[key]

    def _make_loader(self, step: int) -> Iterator[dict[str, Any]]:
        epoch, index = self._pos["train"]
        plan = _StepPlan(self, 0, "train", epoch, index, step)
        nw = self.config.num_workers
        loader = DataLoader(
            self.objects,
            batch_sampler=plan,
            num_workers=nw,
            collate_fn=_collate,
            worker_init_fn=_worker_init if nw > 0 else None,
            prefetch_factor=2 if nw > 0 else None,
        )
        return iter(loader)

    def _check_training_data(self, split: str) -> None:
        if self.dataparser.inference_only:
            raise DatasetFormatError(
                f"{self.dataparser.data}: a single image is inference only; training needs a dataset folder"
            )
        if not self.dataparser.object_ids(split):
            raise DatasetFormatError(f"{self.dataparser.data / 'dataset.json'}: split {split!r} has no objects")

    def _count_bad(self, data: dict[str, Any]) -> None:
        """Report each bad object the loaders skipped once, log the count, stop past max_bad_fraction."""
        tracker = self.dataparser.tracker
        tracker.total = len(self.dataparser.object_ids("train"))
        new = [tracker.report(oid, err) for oid, err in data.get("bad", [])]
        if any(new):
            writer.put_scalar("Data/bad_objects", len(tracker.bad), self.train_count)
        tracker.see(list(data.get("object_ids", [])))

    def _assemble(self, data: dict[str, Any]) -> tuple[RayBundle, dict[str, Any]]:
        self._count_bad(data)
        if "error" in data:
            raise DatasetFormatError(data["error"])
        n_obj, m, p = data["image"].shape[:3]
        c2w = data["c2w"].reshape(n_obj * m, 3, 4)
        intr = data["intrinsics"].reshape(n_obj * m, 4)
        cams = Cameras(
            camera_to_worlds=c2w,
            fx=intr[:, 0:1],
            fy=intr[:, 1:2],
            cx=intr[:, 2:3],
            cy=intr[:, 3:4],
            width=p,
            height=p,
            camera_type=CameraType.PERSPECTIVE,
        )
        coords = cams.get_image_coords(index=(0,)).reshape(1, p * p, 2).expand(n_obj * m, -1, -1).reshape(-1, 2)
        cam_idx = torch.arange(n_obj * m).repeat_interleave(p * p)[:, None]
        ray_bundle = cams.generate_rays(camera_indices=cam_idx, coords=coords, disable_distortion=True)
        obj_idx = torch.arange(n_obj).repeat_interleave(m * p * p)[:, None]
        ray_bundle.camera_indices = obj_idx
        bg = data["background"][obj_idx[:, 0]]
        # keep nerfstudio's "directions_norm" (ray distance -> z-depth for the depth loss)
        ray_bundle.metadata = {**(ray_bundle.metadata or {}), "object_index": obj_idx, "background_color": bg}
        batch: dict[str, Any] = {
            "image": data["image"].reshape(-1, 3),
            "alpha": data["alpha"].reshape(-1, 1),
            "source_images": data["source_image"],
            "source_cameras": data["source_camera"],
            "patch_hw": (int(p), int(p)),
            "object_ids": data["object_ids"],
        }
        if "depth" in data:
            batch["depth"] = data["depth"].reshape(-1, 1)
        return self._to_device(ray_bundle, batch)

    def _to_device(self, ray_bundle: RayBundle, batch: dict[str, Any]) -> tuple[RayBundle, dict[str, Any]]:
        ray_bundle = ray_bundle.to(self.device)
        for k, v in batch.items():
            if isinstance(v, Tensor) and k not in self.exclude_batch_keys_from_device:
                batch[k] = v.to(self.device)
        return ray_bundle, batch

    def next_train(self, step: int) -> tuple[RayBundle, dict]:
        """Training rays of B objects x M target patches (ARCHITECTURE.md); in test mode, display-object rays."""
        self.train_count += 1
        if self.test_mode != "val":
            return self._next_display_rays()
        self._check_training_data("train")
        if self._train_iter is None or self._train_iter_step != step:
            self._train_iter = self._make_loader(step)
        data = next(self._train_iter)
        if "error" not in data:
            assert data["step"] == step, (data["step"], step)
            self._pos["train"] = list(data["end_pos"])
        self._train_iter_step = step + 1
        return self._assemble(data)

    def next_eval(self, step: int) -> tuple[RayBundle, dict]:
        """Same as training batches but over val objects (test if there is no val split); loaded in-process."""
        self.eval_count += 1
        split = self._eval_split()
        epoch, index = self._pos["eval"]
        items = _StepPlan(self, 1, split, epoch, index, step).next_items()
        data = _collate([self.objects[it] for it in items])
        if "error" not in data:
            self._pos["eval"] = list(data["end_pos"])
        return self._assemble(data)

    # --------------------------------------------------------------------------------------------- full views
    def _eval_bg(self) -> np.ndarray:
        return _bg_color(self.config.eval_background, _rng(0))

    def full_view(
        self,
        obj: ObjectViews,
        view: int,
        resolution: int | None = None,
        bg: np.ndarray | None = None,
        size: tuple[int, int] | None = None,
    ) -> tuple[Cameras, Float[Tensor, "H W 3"], Float[Tensor, "H W 1"]]:
        """One whole view resized to `resolution` wide (or to `size` = (h, w)): (Cameras [1], rgb on bg, alpha)."""
        bg = self._eval_bg() if bg is None else bg
        fx, fy, cx, cy, w, h = obj.intrinsics[view]
        if size is not None:
            new_h, new_w = size
        else:
            new_w, new_h = _scaled_size(int(w), int(h), resolution or self.config.eval_resolution)
        rgb, alpha = _composite(_resize(_premultiplied(self.objects.load_view(obj, view)), (new_h, new_w)), bg)
        sx, sy = new_w / w, new_h / h
        cam = Cameras(
            camera_to_worlds=torch.from_numpy(obj.c2w[view : view + 1]).float(),
            fx=float(fx * sx),
            fy=float(fy * sy),
            cx=float(cx * sx),
            cy=float(cy * sy),
            width=new_w,
            height=new_h,
            camera_type=CameraType.PERSPECTIVE,
        )
        return cam, rgb.permute(1, 2, 0), alpha.permute(1, 2, 0)

    def _eval_view_batch(self, object_id: str, view: int) -> tuple[Cameras, dict[str, Any]]:
        obj = self.dataparser.load_object(object_id)
        bg = self._eval_bg()
        cam, rgb, alpha = self.full_view(obj, view, bg=bg)
        src_img, src_cam = self.objects.source(obj, 0, bg)
        batch = {
            "image": rgb,
            "alpha": alpha,
            "source_images": src_img[None],
            "source_cameras": src_cam[None],
            "background_color": torch.from_numpy(bg),
            "object_ids": [object_id],
            "view_index": view,
        }
        if self.config.load_depth:
            d = _resize(self.objects._depth(obj, view), (rgb.shape[0], rgb.shape[1]), mode="nearest")
            batch["depth"] = d[0, :, :, None]
        for k, v in batch.items():
            if isinstance(v, Tensor):
                batch[k] = v.to(self.device)
        return cam.to(self.device), batch

    def next_eval_image(self, step: int) -> tuple[Cameras, dict]:
        """One full held-out target view (eval_resolution) of a held-out object, with its canonical source."""
        ids = self.dataparser.object_ids(self._eval_split())
        rng = _rng(self.config.seed, 2, step, self.local_rank)
        oid = ids[int(rng.integers(len(ids)))]
        n_views = len(self.dataparser.load_object(oid))
        view = int(rng.integers(1, n_views)) if n_views > 1 else 0
        return self._eval_view_batch(oid, view)

    def iter_eval_views(
        self, split: str = "test", max_objects: int | None = None, views_per_object: int | None = None
    ) -> Iterator[tuple[Cameras, dict]]:
        """Every held-out view (views 1.., source = canonical view 0) of the objects of `split`.

        Args:
            split: "test", "val" or "train".
            max_objects: first this many objects (all if None).
            views_per_object: first this many non-source views per object (all if None).
        """
        ids = self.dataparser.object_ids(split)
        for oid in ids[:max_objects] if max_objects is not None else ids:
            n_views = len(self.dataparser.load_object(oid))
            views = list(range(1, n_views)) or [0]
            for view in views[:views_per_object] if views_per_object is not None else views:
                yield self._eval_view_batch(oid, view)

    # --------------------------------------------------------------------------------------------- display
    def _default_display(self) -> str:
        if self.dataparser.inference_only:
            return str(self.dataparser.data)
        objs = self.dataparser.list_objects()
        for s in ("test", "val", "train"):
            for oid in objs.get(s, [])[:20]:  # the first readable one: a bad first object must not stop a big run
                try:
                    self.dataparser.load_object(oid)
                    return oid
                except DatasetFormatError as err:
                    if not self.dataparser.config.skip_bad_objects:
                        raise
                    self.dataparser.tracker.report(oid, str(err))
        raise DatasetFormatError(f"{self.dataparser.data}: no objects")

    def _is_object(self, ref: str) -> bool:
        return self.dataparser.index is not None and self.dataparser.split_of(ref) is not None

    def _photo_source(self, path: Path) -> Float[Tensor, "3 H W"]:
        """A user's photo -> source image (image_preprocess: mask, recentre, then the model's processor)."""
        from lrm_nerfstudio.data.image_preprocess import preprocess_image

        background = tuple(float(c) for c in self._eval_bg())
        return preprocess_image(path, processor=self.config.processor, background_color=background).image.float()

    def get_display_source(self, ref: str) -> tuple[Float[Tensor, "3 H W"], Float[Tensor, "16"], str]:
        """(source image, camera vector, name) of an object id (any split; canonical view 0) or an image path.

        Raises:
            DatasetFormatError: `ref` is neither a listed object nor an image file, or its files are bad.
        """
        from lrm_nerfstudio.cameras import canonical_source_camera

        if self._is_object(ref):
            img, cam = self.objects.source(self.dataparser.load_object(ref), 0, self._eval_bg())
            return img, cam, ref
        path = Path(ref)
        if path.is_file():
            return self._photo_source(path), canonical_source_camera(), path.stem
        raise DatasetFormatError(f"{ref}: neither an object id of {self.dataparser.data} nor an existing image file")

    def set_display_object(self, ref: str) -> None:
        """Shows `ref` (object id or image path): rebuilds `train_dataset`, the test-mode rays and the source."""
        res = self.config.eval_resolution
        image, camera, name = self.get_display_source(ref)
        self.display_ref = ref
        self.display_source = (image, camera, name)
        if self._is_object(ref):
            obj = self.dataparser.load_object(ref)
            views = list(range(min(len(obj), self.config.max_display_views)))
            size = _scaled_size(int(obj.intrinsics[0, 4]), int(obj.intrinsics[0, 5]), res)[::-1]
            parts = [self.full_view(obj, v, size=size) for v in views]  # one size so views stack
            cams = Cameras(
                camera_to_worlds=torch.cat([p[0].camera_to_worlds for p in parts]),
                fx=torch.cat([p[0].fx for p in parts]),
                fy=torch.cat([p[0].fy for p in parts]),
                cx=torch.cat([p[0].cx for p in parts]),
                cy=torch.cat([p[0].cy for p in parts]),
                width=torch.cat([p[0].width for p in parts]),
                height=torch.cat([p[0].height for p in parts]),
                camera_type=CameraType.PERSPECTIVE,
            )
            images = torch.stack([p[1] for p in parts])
            alphas = torch.stack([p[2] for p in parts])
            filenames = [obj.image_paths[v] for v in views]
        else:
            cams = ring_cameras(res)
            images = torch.zeros(len(cams), res, res, 3)
            alphas = torch.zeros(len(cams), res, res, 1)
            filenames = [Path(ref)] * len(cams)
        outputs = DataparserOutputs(
            image_filenames=filenames, cameras=cams, scene_box=unit_scene_box(), metadata={"object_id": name}
        )
        self.train_dataparser_outputs = outputs
        self.train_dataset = DisplayViewsDataset(outputs, images, alphas)
        self.eval_dataset = self.train_dataset
        self.train_ray_generator = RayGenerator(self.train_dataset.cameras)
        self._display = {"name": name, "source_image": image, "source_camera": camera, "bg": self._eval_bg()}
        self._display_batch = {"image": images, "alpha": alphas, "image_idx": torch.arange(len(cams))}
        self._display_checked = False  # the next test-mode rays run `before_display_rays` again
        self._export_state: tuple[Cameras, torch.Generator] | None = None
        self._export_cells: tuple[Tensor, int] | None = None

    def _probe_stride(self, cameras: Cameras) -> int:
        v, h, w = len(cameras), int(cameras.height[0]), int(cameras.width[0])
        return max(1, math.ceil(math.sqrt(v * h * w / max(1, self.config.opacity_probe_rays))))

    def display_probe_rays(self) -> RayBundle:
        """About `opacity_probe_rays` rays of the export orbit (`export_cameras`), one through the centre of each
        stride x stride cell of every camera's image (deterministic): what the test-mode rays see."""
        cameras = self.export_cameras()
        v, h, w, stride = len(cameras), int(cameras.height[0]), int(cameras.width[0]), self._probe_stride(cameras)
        grid = torch.meshgrid(
            torch.arange(v), torch.arange(stride // 2, h, stride), torch.arange(stride // 2, w, stride), indexing="ij"
        )
        indices = torch.stack(grid, -1).reshape(-1, 3)
        return self._export_bundle(cameras, indices[:, :1], indices[:, 1:].float() + 0.5)

    def set_export_opacity(self, alpha: Float[Tensor, "*rays"]) -> None:
        """The accumulation of `display_probe_rays()`: from now on the display object's export rays come only
        from the probe cells whose centre ray is opaque (alpha > 0.5, what nerfstudio keeps), so that most rays
        become points (about one in seven did on a trained model). A silhouette strip thinner than a cell is left
        out in one camera, but the orbit has other cameras that see that surface face on."""
        cameras = self.export_cameras()
        h, w, stride = int(cameras.height[0]), int(cameras.width[0]), self._probe_stride(cameras)
        grid = (len(cameras), len(range(stride // 2, h, stride)), len(range(stride // 2, w, stride)))
        cells = (alpha.detach().reshape(grid) > 0.5).nonzero()
        self._export_cells = (cells, stride) if len(cells) else None

    # ------------------------------------------------------------------------------------ export mode (ns-export)
    def export_cameras(self) -> Cameras:
        """The test-mode orbit: `export_orbit_cameras` cameras on a Fibonacci sphere at the canonical distance,
        looking at the origin with the canonical focal, `eval_resolution` pixels a side."""
        n, res = max(1, self.config.export_orbit_cameras), self.config.eval_resolution
        z = 1.0 - 2.0 * (np.arange(n) + 0.5) / n
        azimuth = np.arange(n) * math.pi * (3.0 - math.sqrt(5.0))
        ring = np.sqrt(1.0 - z**2)
        eyes = CANONICAL_DISTANCE * np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], -1)
        return cameras_looking_at_origin(eyes, res)

    def export_rays(self, num_rays: int) -> RayBundle:
        """`num_rays` distinct rays of the display object for ns-export: each from a random orbit camera through a
        uniformly random point of its image (sub-pixel), from a generator seeded once per display object."""
        if self._export_state is None:  # reset by set_display_object
            self._export_state = (self.export_cameras(), torch.Generator().manual_seed(self.config.seed))
        cameras, generator = self._export_state
        size = torch.tensor([float(cameras.height[0]), float(cameras.width[0])])
        if self._export_cells is None:
            camera_indices = torch.randint(len(cameras), (num_rays, 1), generator=generator)
            coords = torch.rand(num_rays, 2, generator=generator) * size  # (y, x) positions, pixel centres at +0.5
        else:
            cells, stride = self._export_cells
            chosen = cells[torch.randint(len(cells), (num_rays,), generator=generator)]
            camera_indices = chosen[:, :1]
            coords = (chosen[:, 1:] + torch.rand(num_rays, 2, generator=generator)) * stride
            coords = torch.minimum(coords, size * (1 - 1e-6))  # the last cell of a side may be cut short
        return self._export_bundle(cameras, camera_indices, coords)

    def _export_bundle(self, cameras: Cameras, camera_indices: Tensor, coords: Tensor) -> RayBundle:
        # nerfstudio adds no half-pixel offset to explicit coords: they are the image positions themselves
        ray_bundle = cameras.generate_rays(camera_indices=camera_indices, coords=coords, disable_distortion=True)
        n = len(ray_bundle)
        zeros = torch.zeros(n, 1, dtype=torch.long)
        ray_bundle.camera_indices = zeros
        bg = torch.from_numpy(self._display["bg"]).expand(n, 3).contiguous()
        ray_bundle.metadata = {**(ray_bundle.metadata or {}), "object_index": zeros, "background_color": bg}
        return ray_bundle.to(self.device)

    def _next_display_rays(self) -> tuple[RayBundle, dict]:
        if self.before_display_rays is not None and not self._display_checked:
            self._display_checked = True
            self.before_display_rays()
        ray_bundle = self.export_rays(self.train_pixel_sampler.num_rays_per_batch)
        batch: dict[str, Any] = {}
        batch["source_images"] = self._display["source_image"][None]
        batch["source_cameras"] = self._display["source_camera"][None]
        batch["object_ids"] = [self._display["name"]]
        return self._to_device(ray_bundle, batch)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # 2 shared cores: one thread per worker
