"""Procedural textures with random palettes (LRM-Zero's Zeroverse, Xie et al. 2024, §3.1), looked up triplanar.

A texture is a 2D pattern on the (u, v) plane; a surface point takes the pattern on the three axis planes through
it and blends them by its normal (triplanar mapping), so no UV unwrapping is needed.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

TEXTURE_KINDS = ("solid", "checker", "stripes", "noise", "gradient")


@dataclass
class TextureConfig:
    """How procedural textures are drawn."""

    kinds: tuple[str, ...] = TEXTURE_KINDS
    """Texture kinds to draw from (any of solid, checker, stripes, noise, gradient)."""
    weights: tuple[float, ...] = ()
    """Relative weight of each entry of kinds; empty means uniform."""
    frequency_range: tuple[float, float] = (1.5, 5.0)
    """Pattern repeats per world unit."""
    saturation_range: tuple[float, float] = (0.3, 0.95)
    """HSV saturation range of palette colours."""
    value_range: tuple[float, float] = (0.5, 1.0)
    """HSV value range of palette colours."""

    def __post_init__(self) -> None:
        bad = set(self.kinds) - set(TEXTURE_KINDS)
        if bad or not self.kinds:
            raise ValueError(f"TextureConfig.kinds: unknown or empty kinds {sorted(bad)}; use {TEXTURE_KINDS}")
        if self.weights and len(self.weights) != len(self.kinds):
            raise ValueError("TextureConfig.weights must be empty or match kinds in length")


@dataclass
class Texture:
    """One drawn texture: a pattern kind and its parameters."""

    kind: str
    palette: Float[np.ndarray, "3 3"]
    """Three RGB colours in [0, 1]."""
    frequency: float
    direction: Float[np.ndarray, " 2"]
    """Unit direction of stripes and gradients in the (u, v) plane."""
    phase: float
    noise: Float[np.ndarray, "G G"]
    """Periodic grid of values for value noise."""


def random_palette(rng: np.random.Generator, cfg: TextureConfig) -> Float[np.ndarray, "3 3"]:
    """Three colours: a random hue and two offset hues, so that patterns keep contrast."""
    hue = rng.uniform()
    hues = (hue + np.array([0.0, rng.uniform(0.15, 0.5), rng.uniform(0.5, 0.85)])) % 1.0
    sats = rng.uniform(*cfg.saturation_range, size=3)
    vals = rng.uniform(*cfg.value_range, size=3)
    vals[1] = np.clip(1.3 - vals[0], cfg.value_range[0], cfg.value_range[1])  # light/dark pair
    return np.array([colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hues, sats, vals)])


def random_texture(rng: np.random.Generator, cfg: TextureConfig) -> Texture:
    """Draw one texture."""
    weights = np.asarray(cfg.weights or [1.0] * len(cfg.kinds), dtype=np.float64)
    kind = str(rng.choice(cfg.kinds, p=weights / weights.sum()))
    angle = rng.uniform(0, 2 * np.pi)
    return Texture(
        kind=kind,
        palette=random_palette(rng, cfg),
        frequency=float(rng.uniform(*cfg.frequency_range)),
        direction=np.array([np.cos(angle), np.sin(angle)]),
        phase=float(rng.uniform()),
        noise=rng.uniform(size=(8, 8)),
    )


def _value_noise(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    g = grid.shape[0]
    x, y = np.mod(u, g), np.mod(v, g)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep: no visible grid lines
    x1, y1 = (x0 + 1) % g, (y0 + 1) % g
    x0, y0 = x0 % g, y0 % g
    top = grid[x0, y0] * (1 - fx) + grid[x1, y0] * fx
    bottom = grid[x0, y1] * (1 - fx) + grid[x1, y1] * fx
    return top * (1 - fy) + bottom * fy


def eval_pattern(tex: Texture, uv: Float[np.ndarray, "N 2"]) -> Float[np.ndarray, "N 3"]:
    """Colour of the 2D pattern at plane coordinates `uv` (world units)."""
    c0, c1, c2 = tex.palette
    if tex.kind == "solid":
        return np.broadcast_to(c0, (len(uv), 3)).copy()
    f = tex.frequency
    if tex.kind == "checker":
        cell = np.floor(uv * f + tex.phase).astype(np.int64).sum(axis=1) % 2
        return np.where(cell[:, None] == 0, c0, c1)
    t = uv @ tex.direction
    if tex.kind == "stripes":
        stripe = np.mod(t * f + tex.phase, 1.0) < 0.5
        return np.where(stripe[:, None], c0, c1)
    if tex.kind == "noise":
        n = _value_noise(tex.noise, uv[:, 0] * f * 1.5, uv[:, 1] * f * 1.5)[:, None]
        return c0 * (1 - n) + c1 * n
    if tex.kind == "gradient":
        s = np.clip(0.5 + 0.5 * t, 0.0, 1.0)[:, None]  # across the [-1, 1] object: three-stop ramp
        lo = c0 + (c1 - c0) * np.clip(2 * s, 0, 1)
        return np.where(s < 0.5, lo, c1 + (c2 - c1) * np.clip(2 * s - 1, 0, 1))
    raise ValueError(f"unknown texture kind {tex.kind!r}")


def triplanar(
    tex: Texture, points: Float[np.ndarray, "N 3"], normals: Float[np.ndarray, "N 3"], sharpness: float = 4.0
) -> Float[np.ndarray, "N 3"]:
    """Triplanar lookup: patterns on the YZ, XZ and XY planes blended by |normal|^sharpness."""
    if tex.kind == "solid":
        return eval_pattern(tex, points[:, :2])
    w = np.abs(normals) ** sharpness
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    out = w[:, :1] * eval_pattern(tex, points[:, [1, 2]])
    out += w[:, 1:2] * eval_pattern(tex, points[:, [0, 2]])
    out += w[:, 2:] * eval_pattern(tex, points[:, [0, 1]])
    return out
