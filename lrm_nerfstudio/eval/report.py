"""What `lrm-eval` writes: metrics.json, metrics.csv, report.md and the pictures, each file written atomically.

Objects are ranked worst first: by the headline F-score (`fscore@0.1` under the chosen alignment; an empty prediction
scores 0) where the object has geometry, then the objects without geometry by PSNR.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lrm_nerfstudio.eval.image_metrics import mean_metrics
from lrm_nerfstudio.io.atomic import atomic_write_bytes

IMAGE_KEYS = ("psnr", "ssim", "lpips", "masked_psnr", "mask_iou")
"""Image metrics, in table order."""
GEOMETRY_KEYS = ("chamfer_l1", "fscore@0.05", "fscore@0.1", "fscore@0.2", "normal_consistency")
"""Headline geometry metrics, in table order."""
TIME_KEYS = ("encode_s", "decode_s", "mesh_s", "render_s", "geometry_s")
"""Per-object timings."""
BASELINES = ("ellipsoid", "background")
"""Baselines, in table order."""
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "masked_psnr": True, "mask_iou": True,
                    "chamfer_l1": False, "normal_consistency": True}  # fmt: skip
LABELS = {"psnr": "PSNR ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "masked_psnr": "masked PSNR ↑",
          "mask_iou": "mask IoU ↑", "chamfer_l1": "Chamfer-L1 ↓", "normal_consistency": "normal cons. ↑"}  # fmt: skip


def label(key: str, arrow: bool = True) -> str:
    """Column heading of a metric (with the arrow saying which way is better, unless `arrow` is off)."""
    text = f"F@{key.split('@')[1]} ↑" if key.startswith("fscore@") else LABELS.get(key, key)
    return text if arrow else text.rstrip(" ↑↓")


# ------------------------------------------------------------------------------------------------------ writing
def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` beside `path`, then rename it over `path`: readers never see half a file."""
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def write_png(path: Path, image: np.ndarray) -> None:
    """An [H, W, 3] float image in [0, 1] as an 8-bit PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


def image_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 2, size: int | None = None) -> np.ndarray:
    """Tile [H, W, 3] images into rows (white gaps); every tile is resized (nearest) to the first tile's size, or
    to `size` pixels high with the first tile's aspect ratio."""
    first = rows[0][0]
    height, width = first.shape[:2]
    if size:
        height, width = size, max(1, round(width * size / height))

    def fit(image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (height, width):
            return image
        pil = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
        return np.asarray(pil.resize((width, height), Image.Resampling.NEAREST), dtype=np.float32) / 255.0

    cols = max(len(r) for r in rows)
    grid = np.ones((len(rows) * (height + gap) - gap, cols * (width + gap) - gap, 3), np.float32)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = i * (height + gap), j * (width + gap)
            grid[y : y + height, x : x + width] = fit(image)[..., :3]
    return grid


# ------------------------------------------------------------------------------------------------------ summary
def summarize(objects: list[dict[str, Any]], prefix: dict[str, Any] | None = None) -> dict[str, Any]:
    """Means over objects of every metric (missing values left out), with the counts that qualify them."""
    keys = (*IMAGE_KEYS, *GEOMETRY_KEYS, *TIME_KEYS, "num_triangles")
    means = mean_metrics([{k: o.get(k) for k in keys if o.get(k) is not None} for o in objects])
    summary: dict[str, Any] = dict(prefix or {})
    summary |= {k: v for k, v in means.items()}
    summary["num_objects"] = len(objects)
    summary["num_with_geometry"] = sum(1 for o in objects if o.get("fscore@0.1") is not None)
    summary["num_empty_meshes"] = sum(1 for o in objects if o.get("empty_mesh"))
    return summary


def rank_worst_first(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects with geometry by ascending F@0.1 (then descending Chamfer), then the others by ascending PSNR."""

    def key(o: dict[str, Any]) -> tuple:
        f = o.get("fscore@0.1")
        psnr = o.get("psnr")
        psnr = psnr if psnr is not None else math.inf
        if f is not None:
            chamfer = o.get("chamfer_l1")
            return (0, f, -(chamfer if chamfer is not None else math.inf), psnr)
        return (1, psnr, 0.0, 0.0)

    return sorted(objects, key=key)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _digits(key: str) -> int:
    return 2 if "psnr" in key else 4 if key == "chamfer_l1" else 3


# ------------------------------------------------------------------------------------------------------ files
def csv_text(objects: list[dict[str, Any]]) -> str:
    """metrics.csv: one row per object (model metrics, timings, baselines' metrics, notes)."""
    columns = ["id", *IMAGE_KEYS, *GEOMETRY_KEYS, "num_triangles", *TIME_KEYS]
    columns += [f"{b}/{k}" for b in BASELINES for k in (*IMAGE_KEYS, *GEOMETRY_KEYS)]
    columns.append("notes")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for o in objects:
        row = []
        for column in columns:
            if "/" in column:
                baseline, key = column.split("/", 1)
                value = o.get("baselines", {}).get(baseline, {}).get(key)
            elif column == "notes":
                value = " | ".join(o.get("notes", []))
            else:
                value = o.get(column)
            row.append("" if value is None else value)
        writer.writerow(row)
    return buffer.getvalue()


def metrics_json(
    summary: dict[str, Any], objects: list[dict[str, Any]], baselines: dict[str, Any], settings: dict[str, Any]
) -> str:
    """metrics.json text (non-finite numbers become null, so that any JSON reader accepts it)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    data = {"summary": summary, "objects": objects, "baselines": baselines, "settings": settings}
    return json.dumps(clean(data), indent=2) + "\n"


def report_markdown(
    summary: dict[str, Any],
    objects: list[dict[str, Any]],
    baselines: dict[str, Any],
    settings: dict[str, Any],
    by_alignment: dict[str, dict[str, dict[str, float | None]]],
) -> str:
    """report.md: settings, the summary table (model against baselines), geometry under every alignment, timings,
    then every object worst first with its pictures."""
    keys = [k for k in (*IMAGE_KEYS, *GEOMETRY_KEYS) if summary.get(k) is not None or any(
        baselines[b].get(k) is not None for b in baselines)]  # fmt: skip
    distances = "world units, scene box side 2" if settings["align"] == "none" else "bounding-box sides"
    lines = [
        "# lrm-eval report",
        "",
        f"- model: `{settings['model']}` ({settings['method']}, step {settings['step']})",
        (
            f"- data: `{settings['data']}`, split `{settings['split']}`, {summary['num_objects']} objects "
            f"({summary['num_with_geometry']} with a ground-truth mesh, {summary['num_empty_meshes']} empty "
            f"predicted meshes, {summary.get('num_failed', 0)} unreadable)"
        ),
        (
            "- each object predicted once from its view 0 (the data's canonical camera); image metrics on its other "
            f"views at {settings['eval_resolution'] or 'their native'} px width; LPIPS: {settings['lpips']}"
        ),
        (
            f"- geometry: marching cubes at {settings['mesh_resolution']}³, {settings['num_samples']} seeded surface "
            f"samples per mesh, point-to-surface distances; headline alignment `{settings['align']}` (distances in "
            f"{distances})"
        ),
        "",
        "## Summary",
        "",
        "| | " + " | ".join(label(k) for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    rows = {"model": summary, **{f"{b} baseline": baselines[b] for b in BASELINES if b in baselines}}
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values.get(k), _digits(k)) for k in keys) + " |")
    lines += [
        "",
        (
            "Means over objects. Empty predicted meshes score F = 0 and are left out of Chamfer and normal "
            "consistency; the background baseline has no geometry."
        ),
        "",
    ]
    if by_alignment:
        header = " | ".join(label(k) for k in GEOMETRY_KEYS)
        lines += ["### Geometry under every alignment", "", f"| alignment | who | {header} |", "|---|---|" + "---|" * 5]
        for mode, who in by_alignment.items():
            for name, values in who.items():
                lines.append(
                    f"| {mode} | {name} | " + " | ".join(_fmt(values.get(k), _digits(k)) for k in GEOMETRY_KEYS) + " |"
                )
        lines.append("")
    lines += ["### Time per object (mean seconds)", "", "| " + " | ".join(TIME_KEYS) + " | triangles |",
              "|" + "---|" * (len(TIME_KEYS) + 1)]  # fmt: skip
    lines.append(
        "| " + " | ".join(_fmt(summary.get(k), 3) for k in TIME_KEYS) + f" | {_fmt(summary.get('num_triangles'), 0)} |"
    )
    lines += ["", "## Objects, worst first", "", f"By F@0.1 under alignment `{settings['align']}`, then by PSNR.", ""]
    for rank, o in enumerate(rank_worst_first(objects), start=1):
        ell = o.get("baselines", {}).get("ellipsoid", {})
        head = ", ".join(
            f"{label(k, arrow=False)} {_fmt(o.get(k), _digits(k))} (ellipsoid {_fmt(ell.get(k), _digits(k))})"
            for k in ("fscore@0.1", "chamfer_l1", "psnr", "mask_iou")
        )
        lines += [f"### {rank}. `{o['id']}`", "", head + f"; {_fmt(o.get('num_triangles'))} triangles", ""]
        for note in o.get("notes", []):
            lines.append(f"- note: {note}")
        pictures = o.get("pictures", {})
        if pictures:
            if o.get("notes"):
                lines.append("")
            lines.append(" ".join(f"![{name}]({path})" for name, path in pictures.items()))
            lines += [
                "",
                "_" + "; ".join(PICTURE_CAPTIONS[name] for name in pictures if name in PICTURE_CAPTIONS) + "_",
            ]
        lines.append("")
    return "\n".join(lines)


PICTURE_CAPTIONS = {
    "source": "source: view 0 as the model saw it",
    "views": "views: true (top), model (middle), ellipsoid baseline (bottom)",
    "meshes": "meshes: ground truth (left), prediction (middle), ellipsoid (right), front and back",
}
"""Captions of the per-object pictures."""
