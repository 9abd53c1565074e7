"""Mesh clean-up before baking: drop floaters, decimate to a face budget, keep the winding outward.

Marching cubes of a NeRF leaves small disconnected blobs (floaters) and far more faces than a game engine or a web
viewer wants. Decimating first and then baking the colour into a texture keeps the colour detail that vertex
colours would lose with the faces (`scripts/benchmark_texture.py` measures both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

DEFAULT_MIN_COMPONENT_FRACTION = 0.05
"""Components with less than this fraction of the largest component's area are dropped (docs/RECONSTRUCT.md)."""


class MeshCleanupError(ValueError):
    """Options that cannot be met (a face budget of zero or below, a fraction outside [0, 1])."""


def check_cleanup_options(target_faces: int | None, min_component_fraction: float) -> str | None:
    """None when the clean-up options are usable, else what is wrong with them."""
    if target_faces is not None and target_faces <= 0:
        return f"--target-faces must be > 0 (or None to keep every face), got {target_faces}"
    if not 0.0 <= min_component_fraction <= 1.0:
        return f"--min-component-fraction must be in [0, 1] (0 keeps every component), got {min_component_fraction}"
    return None


@dataclass
class CleanupReport:
    """What `clean_mesh` did."""

    components_dropped: int
    faces_in: int
    faces_out: int


def drop_small_components(mesh: trimesh.Trimesh, min_fraction: float) -> tuple[trimesh.Trimesh, int]:
    """Keep the face-connected components whose area is at least `min_fraction` of the largest one's."""
    if min_fraction <= 0.0 or len(mesh.faces) == 0:
        return mesh, 0
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    area = np.bincount(labels, weights=mesh.area_faces)
    keep = area >= min_fraction * area.max()
    if keep.all():
        return mesh, 0
    out = mesh.submesh([np.flatnonzero(keep[labels])], append=True, repair=False)
    return out, int((~keep).sum())


WELD_FRACTION = 0.01
"""Vertices closer than this fraction of the median edge length are merged (`weld_slivers`)."""


def _to_open3d(mesh: trimesh.Trimesh):
    import open3d as o3d

    return o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(mesh.vertices, np.float64)),
        o3d.utility.Vector3iVector(np.asarray(mesh.faces, np.int32)),
    )


def _from_open3d(o3d_mesh) -> trimesh.Trimesh:
    out = trimesh.Trimesh(np.asarray(o3d_mesh.vertices), np.asarray(o3d_mesh.triangles), process=False)
    out.update_faces(out.nondegenerate_faces())
    out.remove_unreferenced_vertices()
    return out


def weld_slivers(mesh: trimesh.Trimesh, fraction: float = WELD_FRACTION) -> trimesh.Trimesh:
    """Merge vertices closer than `fraction` of the median edge and drop the triangles that collapse.

    Marching cubes leaves a few triangles a thousand times smaller than the others where the surface passes close
    to a lattice point; they have no area to bake into (xatlas gives them zero UV area). Merging their vertices
    moves the surface by at most `fraction` of an edge and keeps a closed mesh closed.

    Vertices within `eps` of each other (and chains of them) become one vertex at their mean; faces left with a
    repeated corner, or repeating another face's corners, are dropped. numpy and scipy only (open3d's
    `merge_close_vertices` did the same, 20 % slower on a 610 k-face mesh, and needed open3d imported even when
    no decimation follows).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if len(mesh.faces) == 0:
        return mesh
    vertices = np.asarray(mesh.vertices, np.float64)
    faces = np.asarray(mesh.faces, np.int64)
    corners = vertices[faces]
    # every face's three edges: interior edges count twice, which leaves the median of a closed mesh unchanged
    eps = fraction * float(np.median(np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=-1)))
    pairs = cKDTree(vertices).query_pairs(eps, output_type="ndarray")
    if len(pairs):
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(vertices),) * 2)
        count, label = connected_components(graph, directed=False)
        size = np.bincount(label, minlength=count)[:, None]
        vertices = np.stack([np.bincount(label, vertices[:, c], count) for c in range(3)], 1) / size
        faces = label[faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    faces = faces[keep]
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    faces = faces[np.sort(first)]
    out = trimesh.Trimesh(vertices, faces, process=False)
    out.update_faces(out.nondegenerate_faces())
    out.remove_unreferenced_vertices()
    return out


def decimate(mesh: trimesh.Trimesh, target_faces: int) -> trimesh.Trimesh:
    """Quadric-error decimation (open3d's `simplify_quadric_decimation`) to at most `target_faces` faces.

    The winding of the kept faces is unchanged (outward for a marching-cubes mesh). Vertex colours are not kept:
    the caller colours the new vertices from the field.
    """
    if len(mesh.faces) <= target_faces:  # open3d is imported only here: the import costs about 2 CPU s
        return mesh
    return _from_open3d(_to_open3d(mesh).simplify_quadric_decimation(int(target_faces)))


def clean_mesh(
    mesh: trimesh.Trimesh,
    *,
    min_component_fraction: float = DEFAULT_MIN_COMPONENT_FRACTION,
    target_faces: int | None = None,
) -> tuple[trimesh.Trimesh, CleanupReport]:
    """Weld slivers, drop floaters, then decimate to `target_faces` (None: keep every face). Metadata is carried
    over; vertex colours are not (colour the result from the field).

    Raises:
        MeshCleanupError: options out of bounds.
    """
    problem = check_cleanup_options(target_faces, min_component_fraction)
    if problem is not None:
        raise MeshCleanupError(problem)
    faces_in = len(mesh.faces)
    out, dropped = drop_small_components(weld_slivers(mesh), min_component_fraction)
    if target_faces is not None:
        out = decimate(out, target_faces)
    out.metadata.update(mesh.metadata)
    return out, CleanupReport(dropped, faces_in, len(out.faces))
