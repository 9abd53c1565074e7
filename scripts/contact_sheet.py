"""Contact sheet of the procedural dataset: a grid of objects (rows) x views (columns) on a grey background.

    uv run python scripts/contact_sheet.py --output docs/contact_sheet.png

Generates a small dataset into a temporary folder (or reads `--dataset`), then writes one PNG.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from PIL import Image


@dataclass
class ContactSheetConfig:
    """Make docs/contact_sheet.png."""

    output: Path = Path("docs/contact_sheet.png")
    """PNG to write."""
    dataset: Path | None = None
    """Existing dataset to read; if unset, a small one is generated into a temporary folder."""
    num_objects: int = 8
    """Objects (rows)."""
    views: tuple[int, ...] = (0, 1, 3, 5, 7)
    """View indices shown per object (columns); view 0 is the canonical camera."""
    num_views: int = 8
    """Views rendered per object when generating."""
    resolution: int = 128
    """Image resolution when generating."""
    seed: int = 0
    """Seed when generating."""
    show_normals: bool = True
    """Add a last column with the normals of view 0."""


def _tile(root: Path, oid: str, view: int, kind: str) -> np.ndarray:
    meta = json.loads((root / oid / "transforms.json").read_text())
    frame = meta["frames"][view]
    if kind == "normals":
        return np.asarray(Image.open(root / oid / frame["normal_file_path"]).convert("RGB"), dtype=np.float32)
    rgba = np.asarray(Image.open(root / oid / frame["file_path"]).convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    return rgba[..., :3] * alpha + 200.0 * (1 - alpha)


def make_sheet(root: Path, config: ContactSheetConfig) -> Image.Image:
    """Grid image from a dataset folder."""
    ids = sorted(p.name for p in root.iterdir() if (p / "transforms.json").is_file())[: config.num_objects]
    rows = []
    for oid in ids:
        tiles = [_tile(root, oid, v, "rgb") for v in config.views]
        if config.show_normals:
            tiles.append(_tile(root, oid, 0, "normals"))
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    return Image.fromarray(np.clip(np.concatenate(rows, 0), 0, 255).astype(np.uint8))


def main(config: ContactSheetConfig) -> None:
    """Write the contact sheet."""
    if config.dataset is not None:
        sheet = make_sheet(config.dataset, config)
    else:
        from lrm_nerfstudio.generate.generate import GenerateConfig
        from lrm_nerfstudio.generate.generate import main as generate

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "ds"
            generate(
                GenerateConfig(
                    output=root,
                    num_objects=config.num_objects,
                    num_views=config.num_views,
                    resolution=config.resolution,
                    seed=config.seed,
                    workers=1,
                )
            )
            sheet = make_sheet(root, config)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(config.output, optimize=True)
    print(f"{config.output}: {sheet.size[0]}x{sheet.size[1]}, {config.output.stat().st_size / 1e3:.0f} kB")


def entrypoint() -> None:
    """CLI entry point."""
    main(tyro.cli(ContactSheetConfig))


if __name__ == "__main__":
    entrypoint()
