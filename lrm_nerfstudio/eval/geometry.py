"""Geometry metrics of a predicted mesh against a ground-truth mesh, and the alignments papers compare them under.

Metrics (`geometry_metrics`), from `num_samples` seeded area-uniform surface samples of each mesh:

* `chamfer_l1`: the mean of the two directed mean distances (prediction -> truth, "accuracy"; truth -> prediction,
  "completeness"). Distances are to the other mesh's *surface* (open3d's exact point-to-triangle query), not to
  its samples, so the metric has no sampling bias: a sphere of radius r against one of radius s scores |r - s|.
* `fscore@t`: harmonic mean of precision (prediction samples within t of the truth) and recall (truth samples
  within t of the prediction), for t in `thresholds`.
* `normal_consistency`: mean |cos| between each sample's face normal and the normal of the closest triangle of the
  other mesh, averaged over both directions (orientation-free, as in Occupancy Networks).

Alignments (`align_meshes`), each mapping both meshes into one frame:

* `none`: the model's world, the data's coordinates as they are (LRM is view-centric: same frame by construction);
* `box`: each mesh centred on its bounding-box centre and scaled so that its largest bounding-box side is 1;
* `search`: `box`, then the rotation about +Z (the up axis) that best fits the prediction to the truth out of
  `num_angles`, refined by open3d's point-to-point ICP with scale (the TripoSR / SF3D protocol for models whose output frame is
  not the input view's).

Distances and thresholds are in the frame's units: world units for `none` (the scene box is 2 wide), bounding-box
sides for `box` and `search`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import trimesh
from jaxtyping import Float
from scipy.spatial import cKDTree

Alignment = Literal["none", "box", "search"]
ALIGNMENTS: tuple[Alignment, ...] = ("none", "box", "search")
"""Every alignment, in the order reports list them."""
THRESHOLDS = (0.05, 0.1, 0.2)
"""F-score distance thresholds."""


@dataclass(frozen=True)
class SurfaceSamples:
    """Area-uniform points on a mesh with the normal of the face each lies on."""

    points: Float[np.ndarray, "N 3"]
    normals: Float[np.ndarray, "N 3"]


def sample_surface(mesh: trimesh.Trimesh, count: int, seed: int) -> SurfaceSamples:
    """`count` area-uniform surface samples of `mesh`, the same for the same seed."""
    points, face_index = trimesh.sample.sample_surface(mesh, int(count), seed=int(seed))
    normals = np.asarray(mesh.face_normals, dtype=np.float64)[face_index]
    return SurfaceSamples(np.asarray(points, dtype=np.float64), normals)


def closest_on_surface(
    mesh: trimesh.Trimesh, points: Float[np.ndarray, "N 3"]
) -> tuple[Float[np.ndarray, "N"], Float[np.ndarray, "N 3"]]:
    """Distance from each point to the surface of `mesh` and the unit normal of the closest triangle (open3d)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.ascontiguousarray(mesh.vertices, dtype=np.float32)),
        o3d.core.Tensor(np.ascontiguousarray(mesh.faces, dtype=np.uint32)),
    )
    result = scene.compute_closest_points(o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32)))
    closest = result["points"].numpy().astype(np.float64)
    normals = result["primitive_normals"].numpy().astype(np.float64)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return np.linalg.norm(points - closest, axis=1), normals


def geometry_metrics(
    pred: trimesh.Trimesh,
    gt: trimesh.Trimesh,
    num_samples: int = 10_000,
    seed: int = 0,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, float]:
    """Chamfer-L1, F-scores and normal consistency of `pred` against `gt`, both in the same frame (module doc).

    Returns:
        {"chamfer_l1", "accuracy", "completeness", "fscore@T" for each T, "normal_consistency"}.
    """
    if len(pred.faces) == 0 or len(gt.faces) == 0:
        raise ValueError("geometry_metrics: both meshes need triangles")
    pred_samples = sample_surface(pred, num_samples, seed)
    gt_samples = sample_surface(gt, num_samples, seed + 1)
    to_gt, gt_normals = closest_on_surface(gt, pred_samples.points)
    to_pred, pred_normals = closest_on_surface(pred, gt_samples.points)
    accuracy, completeness = float(to_gt.mean()), float(to_pred.mean())
    out = {"chamfer_l1": 0.5 * (accuracy + completeness), "accuracy": accuracy, "completeness": completeness}
    for t in thresholds:
        precision, recall = float((to_gt < t).mean()), float((to_pred < t).mean())
        out[f"fscore@{t:g}"] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    cos_pred = np.abs(np.einsum("nc,nc->n", pred_samples.normals, gt_normals))
    cos_gt = np.abs(np.einsum("nc,nc->n", gt_samples.normals, pred_normals))
    out["normal_consistency"] = float(0.5 * (cos_pred.mean() + cos_gt.mean()))
    return out


def empty_prediction_metrics(thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, float | None]:
    """What an empty prediction scores: recall 0, so every F-score is 0; distances and normals are undefined."""
    out: dict[str, float | None] = {"chamfer_l1": None, "accuracy": None, "completeness": None}
    out |= {f"fscore@{t:g}": 0.0 for t in thresholds}
    out["normal_consistency"] = None
    return out


# ------------------------------------------------------------------------------------------------------- alignment
def box_normalization(mesh: trimesh.Trimesh) -> Float[np.ndarray, "4 4"]:
    """The similarity transform that centres `mesh`'s bounding box at the origin and makes its largest side 1."""
    lo, hi = np.asarray(mesh.bounds, dtype=np.float64)
    extent = float((hi - lo).max())
    if not extent > 0:
        raise ValueError("box_normalization: the mesh has no extent")
    transform = np.eye(4)
    transform[:3, :3] /= extent
    transform[:3, 3] = -0.5 * (lo + hi) / extent
    return transform


def rotation_z(angle_rad: float) -> Float[np.ndarray, "4 4"]:
    """Homogeneous rotation by `angle_rad` about +Z."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    out = np.eye(4)
    out[:2, :2] = [[c, -s], [s, c]]
    return out


def _apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:3, :3].T + transform[:3, 3]


def _point_chamfer(a: np.ndarray, b: np.ndarray, tree_b: cKDTree, tree_a: cKDTree) -> float:
    return 0.5 * (float(tree_b.query(a)[0].mean()) + float(tree_a.query(b)[0].mean()))


def search_alignment(
    pred_points: Float[np.ndarray, "N 3"],
    gt_points: Float[np.ndarray, "M 3"],
    num_angles: int = 24,
    icp_distances: tuple[float, ...] = (0.1, 0.05, 0.02),
) -> Float[np.ndarray, "4 4"]:
    """Rigid transform that fits `pred_points` onto `gt_points` (both box-normalised): the best of `num_angles`
    rotations about +Z by point Chamfer, refined by ICP (rotation, offset and scale) with shrinking correspondence
    distances."""
    import open3d as o3d

    tree_gt = cKDTree(gt_points)
    best, best_score = np.eye(4), np.inf
    for k in range(num_angles):
        candidate = rotation_z(2 * np.pi * k / num_angles)
        moved = _apply(candidate, pred_points)
        score = _point_chamfer(moved, gt_points, tree_gt, cKDTree(moved))
        if score < best_score:
            best, best_score = candidate, score
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pred_points))
    target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(gt_points))
    # with scale: a box-normalised scale depends on the pose (a rotated object has another bounding box)
    estimation = o3d.pipelines.registration.TransformationEstimationPointToPoint(with_scaling=True)
    criteria = o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=50)
    transform = best
    for distance in icp_distances:
        result = o3d.pipelines.registration.registration_icp(source, target, distance, transform, estimation, criteria)
        transform = np.asarray(result.transformation, dtype=np.float64)
    refined = _apply(transform, pred_points)
    if _point_chamfer(refined, gt_points, tree_gt, cKDTree(refined)) > best_score:
        return best  # ICP never makes the fit worse than the rotation it started from
    return transform


@dataclass(frozen=True)
class AlignedPair:
    """Both meshes in the frame of one alignment, and the transforms from their own coordinates into it."""

    pred: trimesh.Trimesh
    gt: trimesh.Trimesh
    pred_transform: Float[np.ndarray, "4 4"]
    gt_transform: Float[np.ndarray, "4 4"]


def align_meshes(
    pred: trimesh.Trimesh, gt: trimesh.Trimesh, mode: Alignment, seed: int = 0, search_samples: int = 4000
) -> AlignedPair:
    """Map `pred` and `gt` into the frame of alignment `mode` (module docstring)."""
    if mode == "none":
        return AlignedPair(pred, gt, np.eye(4), np.eye(4))
    if mode not in ALIGNMENTS:
        raise ValueError(f"align_meshes: unknown alignment {mode!r}; expected one of {ALIGNMENTS}")
    pred_t, gt_t = box_normalization(pred), box_normalization(gt)
    if mode == "search":
        pred_points = _apply(pred_t, sample_surface(pred, search_samples, seed + 2).points)
        gt_points = _apply(gt_t, sample_surface(gt, search_samples, seed + 3).points)
        pred_t = search_alignment(pred_points, gt_points) @ pred_t
    return AlignedPair(pred.copy().apply_transform(pred_t), gt.copy().apply_transform(gt_t), pred_t, gt_t)


def geometry_by_alignment(
    pred: trimesh.Trimesh | None,
    gt: trimesh.Trimesh,
    num_samples: int = 10_000,
    seed: int = 0,
    alignments: tuple[Alignment, ...] = ALIGNMENTS,
) -> dict[str, dict[str, float | None]]:
    """`geometry_metrics` under each alignment; an empty prediction (None) gets `empty_prediction_metrics`."""
    if pred is None or len(pred.faces) == 0:
        return {mode: empty_prediction_metrics() for mode in alignments}
    out: dict[str, dict[str, float | None]] = {}
    for mode in alignments:
        pair = align_meshes(pred, gt, mode, seed)
        out[mode] = dict(geometry_metrics(pair.pred, pair.gt, num_samples, seed))
    return out
