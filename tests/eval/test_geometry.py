"""Geometry metrics against known answers, and the alignments (box, rotation search + ICP) against known poses."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from lrm_nerfstudio.eval.geometry import (
    align_meshes,
    box_normalization,
    empty_prediction_metrics,
    geometry_by_alignment,
    geometry_metrics,
    rotation_z,
)


def _sphere(radius: float) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=radius)


def _asymmetric() -> trimesh.Trimesh:
    """An L-shaped object with a post: no symmetry about +Z, so a rotation about it is identifiable."""
    parts = [
        trimesh.creation.box((0.8, 0.3, 0.2)),
        trimesh.creation.box((0.2, 0.2, 0.6)).apply_translation((0.3, 0.1, 0.2)),
        trimesh.creation.cylinder(0.1, 0.5).apply_translation((-0.3, -0.05, 0.0)),
    ]
    return trimesh.util.concatenate(parts)


def test_chamfer_of_concentric_spheres_is_the_radius_difference():
    # every point of one sphere is |r - s| from the other's surface, in both directions
    metrics = geometry_metrics(_sphere(0.5), _sphere(0.65), num_samples=4000, seed=0)
    assert metrics["chamfer_l1"] == pytest.approx(0.15, abs=2e-3)
    assert metrics["accuracy"] == pytest.approx(0.15, abs=2e-3)
    assert metrics["completeness"] == pytest.approx(0.15, abs=2e-3)
    # thresholds below the gap find nothing, above it everything
    assert metrics["fscore@0.05"] == 0.0 and metrics["fscore@0.1"] == 0.0 and metrics["fscore@0.2"] == 1.0
    assert metrics["normal_consistency"] == pytest.approx(1.0, abs=1e-3)  # radial normals on both


def test_fscore_and_normal_consistency_of_a_mesh_with_itself_are_one():
    mesh = _asymmetric()
    metrics = geometry_metrics(mesh, mesh.copy(), num_samples=3000, seed=1)
    assert metrics["chamfer_l1"] < 1e-6
    for t in ("0.05", "0.1", "0.2"):
        assert metrics[f"fscore@{t}"] == 1.0
    assert metrics["normal_consistency"] == pytest.approx(1.0, abs=1e-6)


def test_samples_are_seeded():
    a, b = _sphere(0.5), _asymmetric()
    assert geometry_metrics(a, b, 2000, seed=3) == geometry_metrics(a, b, 2000, seed=3)
    assert geometry_metrics(a, b, 2000, seed=3) != geometry_metrics(a, b, 2000, seed=4)


def test_box_alignment_removes_offset_and_scale():
    mesh = _asymmetric()
    moved = mesh.copy().apply_scale(2.5).apply_translation((0.3, -0.2, 0.1))
    pair = align_meshes(moved, mesh, "box")
    assert np.allclose(pair.pred.vertices, pair.gt.vertices, atol=1e-9)
    assert (pair.gt.bounds[1] - pair.gt.bounds[0]).max() == pytest.approx(1.0)
    assert np.allclose(pair.gt.bounds.mean(axis=0), 0.0)
    assert np.allclose(box_normalization(mesh) @ np.r_[mesh.bounds.mean(axis=0), 1.0], [0, 0, 0, 1])


@pytest.mark.parametrize("angle_deg", [50.0, 170.0, -100.0])
def test_search_alignment_recovers_a_known_rotation_and_offset(angle_deg):
    mesh = _asymmetric()
    pose = rotation_z(np.deg2rad(angle_deg))
    pose[:3, 3] = (0.2, -0.1, 0.05)
    moved = mesh.copy().apply_transform(pose)
    pair = align_meshes(moved, mesh, "search", seed=0)
    # prediction's coordinates -> ground truth's: undoes `pose` exactly (rotation, offset, scale 1)
    recovered = np.linalg.inv(pair.gt_transform) @ pair.pred_transform
    assert np.abs(recovered @ pose - np.eye(4)).max() < 5e-3
    assert geometry_metrics(pair.pred, pair.gt, 3000)["chamfer_l1"] < 2e-3
    # without the search, box alignment leaves the rotation in
    boxed = align_meshes(moved, mesh, "box")
    assert geometry_metrics(boxed.pred, boxed.gt, 3000)["chamfer_l1"] > 0.02


def test_every_alignment_is_reported_and_an_empty_prediction_scores_zero_recall():
    gt = _asymmetric()
    out = geometry_by_alignment(gt.copy().apply_translation((0.05, 0, 0)), gt, num_samples=2000)
    assert set(out) == {"none", "box", "search"}
    assert out["none"]["chamfer_l1"] > out["box"]["chamfer_l1"] - 1e-9
    empty = geometry_by_alignment(None, gt, num_samples=2000)
    assert empty["search"] == empty_prediction_metrics()
    assert empty["none"]["fscore@0.1"] == 0.0 and empty["none"]["chamfer_l1"] is None
