"""Retrieval baseline: how much of the unseen views a source silhouette determines, given a database of shapes.

For each test object of `--eval-data`, the `k` objects of `--database` whose view 0 (the canonical source view) has
the nearest alpha mask (sum of squared differences at the source resolution) are retrieved; their ground-truth meshes
are rendered from the test object's other cameras, and the mean of their masks is the predicted alpha, painted with
the mean colour of the test object's source view on the background. Scored like `experiments/demo_ablation.py`: PSNR
against the background-only PSNR and the mask IoU (> 0.5), per view, averaged.

The prediction is the average of plausible shapes, as an MSE-trained model's is, and it uses nothing but the
silhouette and the database: a model trained on the same objects that scores no better has learnt no more of a
shape prior than a lookup table holds. Prints one JSON document.

    uv run python experiments/retrieval_baseline.py --database data/lrm-demo --eval-data data/lrm-demo --k 1 5 20
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro

from lrm_nerfstudio.data.dataset_format import load_object_mesh, load_rgba
from lrm_nerfstudio.data.lrm_dataparser import LRMDataParser, LRMDataParserConfig
from lrm_nerfstudio.eval.baselines import render_mesh
from lrm_nerfstudio.eval.image_metrics import mask_iou


@dataclass
class RetrievalConfig:
    """Score k-nearest-silhouette retrieval from a database of objects on held-out test objects."""

    database: Path = Path("data/lrm-demo")
    """Dataset whose objects (with `mesh_path`) are retrieved from."""
    database_splits: tuple[str, ...] = ("train",)
    """Splits of `database` to retrieve from."""
    eval_data: Path = Path("data/lrm-demo")
    """Dataset whose test objects are scored."""
    k: list[int] = field(default_factory=lambda: [1, 5, 20])
    """Numbers of neighbours to average (one result each)."""
    max_objects: int | None = None
    """Score at most this many test objects (None: all)."""


def _source(parser: LRMDataParser, object_id: str) -> np.ndarray:
    obj = parser.load_object(object_id)
    return load_rgba(obj.image_paths[0], obj.source).astype(np.float32)  # straight alpha, in [0, 1]


def main(config: RetrievalConfig) -> dict[str, dict[str, float]]:
    """Scores per k: {"k=K": {"psnr", "background_psnr", "psnr_over_background", "mask_iou", "num_views"}}."""
    if not config.k or min(config.k) < 1:
        raise ValueError(f"--k: numbers of neighbours must be >= 1, got {config.k}")
    database = LRMDataParserConfig(data=config.database).setup()
    evaluated = LRMDataParserConfig(data=config.eval_data).setup()
    ids = [oid for split in config.database_splits for oid in database.object_ids(split)]
    if len(ids) < max(config.k):
        raise ValueError(
            f"{config.database}: {len(ids)} objects in {config.database_splits}, fewer than k={max(config.k)}"
        )
    alphas = np.stack([_source(database, oid)[..., 3].ravel() for oid in ids])
    tests = evaluated.object_ids("test")[: config.max_objects]
    rows: dict[int, list[tuple[float, float, float]]] = {k: [] for k in config.k}
    for test_id in tests:
        source = _source(evaluated, test_id)
        if source.shape[0] * source.shape[1] != alphas.shape[1]:
            raise ValueError(f"{test_id}: source view {source.shape[:2]} differs from the database's")
        alpha = source[..., 3]
        colour = (source[..., :3] * alpha[..., None]).sum((0, 1)) / max(float(alpha.sum()), 1e-6)
        order = np.argsort(((alphas - alpha.ravel()) ** 2).sum(axis=1), kind="stable")
        meshes = [load_object_mesh(database.load_object(ids[i])) for i in order[: max(config.k)]]
        obj = evaluated.load_object(test_id)
        for view in range(1, len(obj)):
            rgba = load_rgba(obj.image_paths[view], obj.source).astype(np.float32)
            true_alpha = rgba[..., 3:]
            image = rgba[..., :3] * true_alpha + (1.0 - true_alpha)
            intrinsics = np.asarray(obj.intrinsics[view], dtype=np.float64)
            masks = [render_mesh(m, obj.c2w[view][:3], intrinsics, np.ones(3))[1] for m in meshes]
            background_mse = float(((image - 1.0) ** 2).mean())
            for k in config.k:
                predicted = np.mean(masks[:k], axis=0)[..., None]
                mse = float(((colour * predicted + (1.0 - predicted) - image) ** 2).mean())
                iou = mask_iou(torch.from_numpy(predicted), torch.from_numpy(true_alpha))
                rows[k].append((-10 * np.log10(max(mse, 1e-10)), -10 * np.log10(max(background_mse, 1e-10)), iou))
    result = {}
    for k, values in rows.items():
        psnr, background, iou = (float(np.mean(column)) for column in zip(*values))
        result[f"k={k}"] = {
            "psnr": psnr,
            "background_psnr": background,
            "psnr_over_background": psnr - background,
            "mask_iou": iou,
            "num_views": float(len(values)),
        }
    print(json.dumps({"database": str(config.database), "eval_data": str(config.eval_data), **result}, indent=2))
    return result


def entrypoint() -> None:
    """Command line."""
    main(tyro.cli(RetrievalConfig))


if __name__ == "__main__":
    entrypoint()
