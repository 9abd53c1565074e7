"""Zeroverse-style procedural objects (LRM-Zero, Xie et al. 2024, §3.1): primitives, augmentations, normalisation.

An object is a triangle mesh plus, per face, the index of the primitive it came from; the primitive index picks the
procedural texture (see `textures.py`). Everything is drawn from a `numpy.random.Generator`, so one generator state
gives one object, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh
from jaxtyping import Float, Int

PRIMITIVE_KINDS = ("box", "sphere", "cylinder", "cone", "torus", "capsule")


@dataclass
class ShapeConfig:
    """How procedural objects are drawn."""

    min_primitives: int = 1
    """Fewest primitives in one object."""
    max_primitives: int = 9
    """Most primitives in one object."""
    primitive_kinds: tuple[str, ...] = PRIMITIVE_KINDS
    """Primitive kinds to draw from (any of box, sphere, cylinder, cone, torus, capsule)."""
    primitive_weights: tuple[float, ...] = ()
    """Relative weight of each entry of primitive_kinds; empty means uniform."""
    scale_range: tuple[float, float] = (0.25, 0.8)
    """Range of each primitive's size along each of its axes (before the object is normalised)."""
    translation_range: float = 0.4
    """Primitive centres are drawn uniformly in [-t, t]^3 (before normalisation)."""
    height_field_prob: float = 0.3
    """Probability that the object gets a height-field displacement of its surface."""
    height_field_amplitude: tuple[float, float] = (0.02, 0.06)
    """Range of the displacement amplitude (world units before normalisation)."""
    boolean_prob: float = 0.25
    """Probability of a boolean difference (a random primitive carved out of the object)."""
    wireframe_prob: float = 0.2
    """Probability that one primitive becomes a wireframe of thin struts (never together with a boolean)."""
    wireframe_radius: float = 0.025
    """Strut half-width of a wireframe primitive."""
    normalize_extent: float = 0.9
    """After centring, the largest coordinate magnitude of the object is scaled to this (inside the [-1, 1]^3 box)."""
    normalize_radius: float = 1.0
    """...unless its bounding sphere would exceed this radius, which then sets the scale (keeps it in frame)."""

    def __post_init__(self) -> None:
        bad = set(self.primitive_kinds) - set(PRIMITIVE_KINDS)
        if bad or not self.primitive_kinds:
            raise ValueError(
                f"ShapeConfig.primitive_kinds: unknown or empty kinds {sorted(bad)}; use {PRIMITIVE_KINDS}"
            )
        if self.primitive_weights and len(self.primitive_weights) != len(self.primitive_kinds):
            raise ValueError("ShapeConfig.primitive_weights must be empty or match primitive_kinds in length")
        if not 1 <= self.min_primitives <= self.max_primitives:
            raise ValueError("ShapeConfig: need 1 <= min_primitives <= max_primitives")
        if not 0 < self.normalize_extent <= 1.0:
            raise ValueError("ShapeConfig.normalize_extent must be in (0, 1] so objects stay inside [-1, 1]^3")


@dataclass
class ProceduralObject:
    """A normalised triangle mesh and which primitive each face belongs to."""

    vertices: Float[np.ndarray, "V 3"]
    faces: Int[np.ndarray, "F 3"]
    face_part: Int[np.ndarray, " F"]
    """Index of the primitive (texture slot) of each face."""
    num_parts: int
    augmentations: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)


def _primitive(kind: str, rng: np.random.Generator, detail: bool, low_poly: bool = False) -> trimesh.Trimesh:
    """A unit-ish primitive centred at the origin (its own size is set afterwards by scaling)."""
    if low_poly:  # wireframes: few, visible struts
        if kind == "sphere":
            return trimesh.creation.icosphere(subdivisions=1, radius=0.5)
        if kind == "capsule":
            return trimesh.creation.capsule(height=0.5, radius=0.25, count=(6, 4))
    sections = 8 if low_poly else 32 if detail else 24
    if kind == "box":
        return trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    if kind == "sphere":
        return trimesh.creation.icosphere(subdivisions=3 if detail else 2, radius=0.5)
    if kind == "cylinder":
        return trimesh.creation.cylinder(radius=0.5, height=1.0, sections=sections)
    if kind == "cone":
        mesh = trimesh.creation.cone(radius=0.5, height=1.0, sections=sections)
        mesh.apply_translation((0.0, 0.0, -0.5))
        return mesh
    if kind == "torus":
        minor = float(rng.uniform(0.08, 0.2))
        return trimesh.creation.torus(
            major_radius=0.5 - minor, minor_radius=minor, major_sections=sections, minor_sections=6 if low_poly else 12
        )
    if kind == "capsule":
        return trimesh.creation.capsule(height=0.5, radius=0.25, count=(16, 16))
    raise ValueError(f"unknown primitive kind {kind!r}")


def _random_rotation(rng: np.random.Generator) -> Float[np.ndarray, "3 3"]:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _placed(mesh: trimesh.Trimesh, rng: np.random.Generator, cfg: ShapeConfig) -> trimesh.Trimesh:
    scale = rng.uniform(*cfg.scale_range, size=3)
    transform = np.eye(4)
    transform[:3, :3] = _random_rotation(rng) @ np.diag(scale)
    transform[:3, 3] = rng.uniform(-cfg.translation_range, cfg.translation_range, size=3)
    mesh = mesh.copy()
    mesh.apply_transform(transform)
    return mesh


def _wireframe(mesh: trimesh.Trimesh, radius: float) -> trimesh.Trimesh:
    """Replace a primitive by square struts along its feature edges (edges between non-coplanar faces)."""
    edges = mesh.face_adjacency_edges[mesh.face_adjacency_angles > np.deg2rad(1.0)]
    if len(edges) == 0:
        edges = mesh.edges_unique
    a, b = mesh.vertices[edges[:, 0]], mesh.vertices[edges[:, 1]]
    axis = b - a
    length = np.linalg.norm(axis, axis=1, keepdims=True)
    keep = length[:, 0] > 1e-6
    a, b, axis, length = a[keep], b[keep], axis[keep], length[keep]
    axis /= length
    helper = np.where(np.abs(axis[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(axis, u)
    # Each strut: a box from a-r*axis to b+r*axis so that struts overlap at the corners.
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * radius
    ring = corners[None, :, :1] * u[:, None] + corners[None, :, 1:] * v[:, None]  # [E, 4, 3]
    start = (a - radius * axis)[:, None] + ring
    end = (b + radius * axis)[:, None] + ring
    verts = np.concatenate([start, end], axis=1)  # [E, 8, 3]
    box_faces = np.array(
        [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7]]
        + [f for i in range(4) for f in ([i, (i + 1) % 4, 4 + (i + 1) % 4], [i, 4 + (i + 1) % 4, 4 + i])]
    )
    faces = box_faces[None] + 8 * np.arange(len(verts))[:, None, None]
    return trimesh.Trimesh(verts.reshape(-1, 3), faces.reshape(-1, 3), process=False)


def _smooth_noise(points: Float[np.ndarray, "N 3"], rng: np.random.Generator, octaves: int = 3) -> np.ndarray:
    """Band-limited noise in [-1, 1]: a sum of random sinusoids (cheap, deterministic, seamless)."""
    out = np.zeros(len(points))
    for octave in range(octaves):
        freq = rng.uniform(2.0, 4.0) * 2**octave
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        phase = rng.uniform(0, 2 * np.pi)
        out += np.sin(points @ direction * freq + phase) / 2**octave
    return out / 1.75


def _height_field(mesh: trimesh.Trimesh, rng: np.random.Generator, cfg: ShapeConfig) -> trimesh.Trimesh:
    """Displace the surface along vertex normals by smooth noise; the mesh is refined first so bumps show."""
    mesh = mesh.subdivide_to_size(max_edge=0.06, max_iter=6)
    amplitude = rng.uniform(*cfg.height_field_amplitude)
    offset = amplitude * _smooth_noise(mesh.vertices, rng)
    return trimesh.Trimesh(mesh.vertices + offset[:, None] * mesh.vertex_normals, mesh.faces, process=False)


def _concatenate(parts: list[trimesh.Trimesh]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    verts, faces, part_ids, offset = [], [], [], 0
    for i, mesh in enumerate(parts):
        verts.append(np.asarray(mesh.vertices, dtype=np.float64))
        faces.append(np.asarray(mesh.faces, dtype=np.int64) + offset)
        part_ids.append(np.full(len(mesh.faces), i, dtype=np.int64))
        offset += len(mesh.vertices)
    return np.concatenate(verts), np.concatenate(faces), np.concatenate(part_ids)


def _boolean_difference(
    parts: list[trimesh.Trimesh], cutter: trimesh.Trimesh
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Union of the parts minus the cutter (manifold3d); the part index rides along as a vertex property."""
    import manifold3d

    def to_manifold(mesh: trimesh.Trimesh, part: int) -> manifold3d.Manifold:
        props = np.concatenate([mesh.vertices, np.full((len(mesh.vertices), 1), part)], axis=1).astype(np.float32)
        return manifold3d.Manifold(manifold3d.Mesh(vert_properties=props, tri_verts=mesh.faces.astype(np.uint32)))

    solids = [to_manifold(m, i) for i, m in enumerate(parts)]
    if any(s.is_empty() for s in solids):
        return None
    union = manifold3d.Manifold.batch_boolean(solids, manifold3d.OpType.Add) if len(solids) > 1 else solids[0]
    result = union - to_manifold(cutter, len(parts))
    out = result.to_mesh()
    props = np.asarray(out.vert_properties, dtype=np.float64)
    faces = np.asarray(out.tri_verts, dtype=np.int64)
    if len(faces) == 0:
        return None
    part = np.rint(props[faces[:, 0], 3]).astype(np.int64)
    return props[:, :3], faces, part


def normalize_vertices(
    vertices: Float[np.ndarray, "V 3"], extent: float = 0.9, radius: float = 1.0
) -> Float[np.ndarray, "V 3"]:
    """Centre the bounding box at the origin; scale so max |coord| = extent and the bounding sphere <= radius."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centred = vertices - (lo + hi) / 2
    max_abs = float(np.abs(centred).max())
    max_norm = float(np.linalg.norm(centred, axis=1).max())
    if not np.isfinite(max_abs) or max_abs < 1e-9:
        raise ValueError("cannot normalise a degenerate (zero-size or non-finite) mesh")
    return centred * min(extent / max_abs, radius / max_norm)


def make_object(rng: np.random.Generator, cfg: ShapeConfig) -> ProceduralObject:
    """Draw one Zeroverse-style object: primitives, then at most one of boolean / wireframe, maybe a height field."""
    n = int(rng.integers(cfg.min_primitives, cfg.max_primitives + 1))
    weights = np.asarray(cfg.primitive_weights or [1.0] * len(cfg.primitive_kinds), dtype=np.float64)
    kinds = [str(k) for k in rng.choice(cfg.primitive_kinds, size=n, p=weights / weights.sum())]
    augment = rng.uniform(size=3)
    do_height = bool(augment[0] < cfg.height_field_prob)
    do_boolean = bool(augment[1] < cfg.boolean_prob)
    do_wire = bool(augment[2] < cfg.wireframe_prob) and not do_boolean
    wire = int(rng.integers(n)) if do_wire else -1
    parts = [
        _placed(_primitive(k, rng, detail=not do_height, low_poly=i == wire), rng, cfg) for i, k in enumerate(kinds)
    ]
    augmentations = []
    if do_height:
        # Displace before any boolean so that carved faces stay sharp.
        parts = [p if i == wire else _height_field(p, rng, cfg) for i, p in enumerate(parts)]
        augmentations.append("height_field")
    if do_wire:
        parts[wire] = _wireframe(parts[wire], cfg.wireframe_radius)
        augmentations.append("wireframe")
    result = None
    if do_boolean:
        cutter = _placed(_primitive(str(rng.choice(cfg.primitive_kinds)), rng, detail=True), rng, cfg)
        result = _boolean_difference(parts, cutter)
        if result is not None:
            augmentations.append("boolean")
    if result is None:
        result = _concatenate(parts)
    vertices, faces, part = result
    vertices = normalize_vertices(vertices, cfg.normalize_extent, cfg.normalize_radius)
    return ProceduralObject(vertices, faces, part, num_parts=n + 1, augmentations=augmentations, kinds=kinds)
