import math
import warnings

import numpy as np
import pytest
import torch
import trimesh

from lrm_nerfstudio.mesh.marching_cubes import NoSurfaceError, choose_iso_level, extract_mesh, save_mesh

CENTRE = (0.2, -0.1, 0.3)


def sphere_density(centre=CENTRE, radius=0.5, scale=1.0, width=0.03):
    c = torch.tensor(centre)
    return lambda p: scale * torch.sigmoid((radius - (p - c).norm(dim=-1)) / width)


@pytest.mark.parametrize("scale", [1.0, 10.0, 1000.0])
def test_adaptive_level_recovers_sphere_at_any_scale(scale):
    res = 48
    voxel = 2.0 / (res - 1)
    mesh = extract_mesh(sphere_density(scale=scale), resolution=res)
    assert len(mesh.faces) > 1000
    assert mesh.is_watertight and mesh.euler_number == 2
    radii = np.linalg.norm(mesh.vertices - np.array(CENTRE), axis=1)
    assert abs(radii.mean() - 0.5) < 1.0 * voxel
    # Off-centre sphere: the grid axes are (x, y, z) and mapped to the bbox correctly.
    np.testing.assert_allclose(mesh.vertices.mean(0), CENTRE, atol=0.5 * voxel)
    assert mesh.metadata["iso_method"] == "max-mean-gradient"


def test_fixed_level_fails_where_adaptive_does_not():
    # A level that suits densities of scale 1000 finds nothing at scale 1: why the default is adaptive.
    with pytest.raises(NoSurfaceError, match="no surface found"):
        extract_mesh(sphere_density(scale=1.0), resolution=24, iso_level=10.0)


def test_normals_point_outward():
    mesh = extract_mesh(sphere_density(centre=(0, 0, 0)), resolution=32)
    assert mesh.volume > 0
    dots = np.einsum("ij,ij->i", mesh.vertex_normals, mesh.vertices)
    assert (dots > 0).all()


def test_blocked_equals_single_block():
    kw = {"resolution": 40, "chunk_size": 40 * 40 * 3 + 17}
    blocked = extract_mesh(sphere_density(), block_size=7, **kw)
    single = extract_mesh(sphere_density(), block_size=1000, **kw)
    assert len(blocked.vertices) == len(single.vertices) and len(blocked.faces) == len(single.faces)
    a = np.unique(np.round(blocked.vertices, 6), axis=0)
    b = np.unique(np.round(single.vertices, 6), axis=0)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert blocked.area == pytest.approx(single.area, rel=1e-9)
    assert blocked.volume == pytest.approx(single.volume, rel=1e-9)
    assert blocked.is_watertight


def test_float16_grid_matches_float32():
    from lrm_nerfstudio.mesh import marching_cubes as mc

    grid32 = mc.sample_density_grid(sphere_density(scale=1000.0), 32)
    grid16 = mc.sample_density_grid(sphere_density(scale=1000.0), 32, dtype=np.float16)
    lvl32, lvl16 = choose_iso_level(grid32).value, choose_iso_level(grid16).value
    assert lvl16 == pytest.approx(lvl32, rel=0.05)


def test_vertex_colours_and_bbox():
    bbox = ((-0.5, -0.6, -0.4), (0.9, 0.5, 1.0))
    mesh = extract_mesh(sphere_density(radius=0.3), resolution=32, bbox=bbox, color_fn=lambda p: (p + 1) / 2)
    assert (mesh.vertices >= np.array(bbox[0]) - 1e-9).all() and (mesh.vertices <= np.array(bbox[1]) + 1e-9).all()
    colours = mesh.visual.vertex_colors[:, :3].astype(float) / 255
    np.testing.assert_allclose(colours, (mesh.vertices + 1) / 2, atol=1 / 255 + 1e-6)


def test_empty_and_constant_fields_raise_with_stats():
    with pytest.raises(NoSurfaceError, match="no surface found.*max="):
        extract_mesh(lambda p: torch.zeros(len(p)), resolution=16)
    with pytest.raises(NoSurfaceError, match="no surface found"):
        extract_mesh(lambda p: torch.full((len(p),), 3.0), resolution=16)


def test_level_stays_inside_a_narrow_density_range():
    """An untrained model's field: dense everywhere, little contrast (0.33..0.40). The smoothed histogram spills
    below the minimum; the level must not follow it there, where it would cut nothing."""
    rng = np.random.default_rng(0)
    grid = (0.40 - 0.07 * rng.random((32, 32, 32)) ** 4).astype(np.float32)
    level = choose_iso_level(grid).value
    assert grid.min() < level < grid.max()


def test_accepts_trailing_singleton_density():
    mesh = extract_mesh(lambda p: sphere_density()(p)[:, None], resolution=24)
    assert len(mesh.faces) > 0


def test_save_mesh_writes_all_formats(tmp_path):
    mesh = extract_mesh(sphere_density(centre=(0, 0, 0)), resolution=24, color_fn=lambda p: torch.rand(len(p), 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = save_mesh(mesh, tmp_path / "out", "obj0")
    assert set(paths) == {"glb", "obj", "ply"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.suffix == ".tmp"]
    ply = trimesh.load(paths["ply"], process=False)
    np.testing.assert_allclose(ply.vertices, mesh.vertices, atol=1e-6)
    obj = trimesh.load(paths["obj"], process=False)
    assert len(obj.vertices) == len(mesh.vertices) and obj.visual.kind == "vertex"
    np.testing.assert_array_equal(obj.visual.vertex_colors[:, :3], mesh.visual.vertex_colors[:, :3])
    glb = trimesh.load(paths["glb"], force="mesh")
    assert len(glb.faces) == len(mesh.faces)
    # GLB is +Y up: the old +Z extent is now the +Y extent.
    np.testing.assert_allclose(glb.bounds[:, 1], mesh.bounds[:, 2], atol=1e-5)


def test_soft_fog_gets_the_level_its_renders_show():
    """A Gaussian fog (peak 4, width s = 0.3), as a briefly trained model predicts. The mean gradient peaks at
    peak / sqrt(e), whose sphere (radius s) shows a third of what the renders show. The level whose silhouettes match the field's own 50 %-opacity
    renders is, analytically, ln 2 / (s sqrt(2 pi)), and the mesh is a sphere of radius s sqrt(2 ln(4 / level))."""
    s, peak, res = 0.3, 4.0, 97
    ax = np.linspace(-1, 1, res)
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    grid = (peak * np.exp(-(x**2 + y**2 + z**2) / (2 * s**2))).astype(np.float32)
    voxel = 2 / (res - 1)
    assert choose_iso_level(grid).method == "max-mean-gradient"  # without the lattice step: the old choice
    assert choose_iso_level(grid).value == pytest.approx(peak * np.exp(-0.5), rel=0.05)

    iso = choose_iso_level(grid, spacing=voxel)
    expected = np.log(2) / (s * np.sqrt(2 * np.pi))
    assert iso.method == "opacity-silhouette"
    assert iso.value == pytest.approx(expected, rel=0.1)

    def density(p):
        return peak * torch.exp(-(p**2).sum(-1) / (2 * s**2))

    mesh = extract_mesh(density, resolution=res)
    assert mesh.metadata["iso_method"] == "opacity-silhouette"
    radius = s * np.sqrt(2 * np.log(peak / expected))
    assert np.linalg.norm(mesh.vertices, axis=1).mean() == pytest.approx(radius, abs=1.5 * voxel)
    assert mesh.is_watertight


# ------------------------------------------------------------------------------------------ coarse to fine
def torus_density(p, major=0.5, minor=0.15, width=0.02):
    q = torch.stack([(p[:, 0] ** 2 + p[:, 1] ** 2).sqrt() - major, p[:, 2]], -1)
    return 10.0 * torch.sigmoid((minor - q.norm(dim=-1)) / width)


def thin_plate_density(p, half_thickness=0.012, width=0.004):
    # a tilted plate 0.024 thick: under two lattice steps at resolution 129, less than the coarse stride's double
    d = (p @ torch.tensor([0.3, -0.2, 0.93]) / 0.9945 - 0.05).abs()
    box = (p.abs() < 0.7).all(-1).float()
    return 5.0 * torch.sigmoid((half_thickness - d) / width) * box


def two_parts_density(p):
    a = torch.sigmoid((0.3 - (p - torch.tensor([-0.5, 0.0, 0.1])).norm(dim=-1)) / 0.02)
    b = torch.sigmoid((0.15 - (p - torch.tensor([0.55, 0.3, -0.4])).norm(dim=-1)) / 0.02)
    return 3.0 * (a + b)


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    return max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max())


ANALYTIC = {
    "sphere": sphere_density(),
    "torus": torus_density,
    "thin_plate": thin_plate_density,
    "two_parts": two_parts_density,
}


@pytest.mark.parametrize("name", list(ANALYTIC))
def test_coarse_to_fine_equals_dense(name):
    """The coarse-to-fine search (stride 2 at 129^3) gives the dense lattice's mesh: same level, same vertices."""
    from lrm_nerfstudio.mesh.marching_cubes import coarse_stride

    res = 129
    assert coarse_stride(res) == 2
    voxel = 2.0 / (res - 1)
    dense = extract_mesh(ANALYTIC[name], resolution=res, coarse_to_fine=False)
    fast = extract_mesh(ANALYTIC[name], resolution=res)
    # the adaptive level from the coarse lattice is the dense lattice's within a few percent
    assert fast.metadata["iso_level"] == pytest.approx(dense.metadata["iso_level"], rel=0.05)
    assert fast.metadata["density_stats"]["density_queries"] < 0.5 * res**3
    assert len(fast.vertices) == pytest.approx(len(dense.vertices), rel=0.02)
    assert _hausdorff(fast.vertices, dense.vertices) < voxel
    assert len(fast.split(only_watertight=False)) == len(dense.split(only_watertight=False))
    # at the same (fixed) level the two are the same mesh
    level = dense.metadata["iso_level"]
    fixed = extract_mesh(ANALYTIC[name], resolution=res, iso_level=level)
    fixed_dense = extract_mesh(ANALYTIC[name], resolution=res, iso_level=level, coarse_to_fine=False)
    assert len(fixed.vertices) == len(fixed_dense.vertices) and len(fixed.faces) == len(fixed_dense.faces)
    np.testing.assert_allclose(
        np.unique(np.round(fixed.vertices, 5), axis=0), np.unique(np.round(fixed_dense.vertices, 5), axis=0), atol=2e-5
    )


@pytest.mark.parametrize("plane", [102.0, 101.3])
def test_coarse_to_fine_keeps_a_part_thinner_than_the_coarse_stride(monkeypatch, plane):
    """A plate one lattice layer thick at 193^3 (coarse stride 4), between two planes of the coarse lattice (100 and
    104; at 102 on the half-stride lattice, at 101.3 off it): no coarse point lies inside it, so only the thin-part
    margin finds it; the surface following then recovers all of it."""
    from lrm_nerfstudio.mesh import marching_cubes as mc

    res = 193
    h = 2.0 / (res - 1)
    assert mc.coarse_stride(res) == 4
    z0 = -1.0 + plane * h

    def density(p):
        inside_xy = (p[:, :2].abs() < 0.7).all(-1).float()
        return 5.0 * torch.sigmoid((0.6 * h - (p[:, 2] - z0).abs()) / (1.5 * h)) * inside_xy

    level = 2.5
    fast = extract_mesh(density, resolution=res, iso_level=level)
    dense = extract_mesh(density, resolution=res, iso_level=level, coarse_to_fine=False)
    assert len(fast.faces) == len(dense.faces)
    assert _hausdorff(fast.vertices, dense.vertices) < 1e-4
    monkeypatch.setattr(mc, "THIN_MARGIN", 0.0)
    with pytest.raises(NoSurfaceError):  # without the margin the coarse search never sees the plate
        extract_mesh(density, resolution=res, iso_level=level)


def test_a_soft_shell_is_not_queried_whole(monkeypatch):
    """A trained model's soft fall-off puts many coarse cells just below the level (thin-part candidates) around
    the surface. The half-stride check skips those whose density peaks at a coarse corner, so they cost 19 queries
    instead of a whole brick, and the mesh is still the dense lattice's."""
    from lrm_nerfstudio.mesh import marching_cubes as mc

    def blob(p):  # a slow exponential fall-off: the level 2 at radius 0.3, half of it 0.1 further out
        r = (p - torch.tensor([0.05, -0.1, 0.02])).norm(dim=-1)
        return 2.0 * torch.exp(-(r - 0.3) * math.log(2) / 0.1)

    res, level = 193, 2.0
    fast = extract_mesh(blob, resolution=res, iso_level=level)
    dense = extract_mesh(blob, resolution=res, iso_level=level, coarse_to_fine=False)
    assert len(fast.faces) == len(dense.faces)
    assert _hausdorff(fast.vertices, dense.vertices) < 1e-4
    monkeypatch.setattr(mc, "_thin_seeds", lambda lattice, candidates, level: candidates)  # every candidate whole
    unchecked = extract_mesh(blob, resolution=res, iso_level=level)
    assert len(unchecked.faces) == len(dense.faces)
    queries = fast.metadata["density_stats"]["density_queries"]
    assert queries < 0.7 * unchecked.metadata["density_stats"]["density_queries"]


def test_coarse_to_fine_iso_levels_of_the_existing_fields():
    """The levels chosen from the coarse lattice match the dense choice on the fields above (soft fog included)."""
    s, peak = 0.3, 4.0

    def fog(p):
        return peak * torch.exp(-(p**2).sum(-1) / (2 * s**2))

    for density in (fog, sphere_density(scale=1000.0)):
        fast = extract_mesh(density, resolution=129)
        dense = extract_mesh(density, resolution=129, coarse_to_fine=False)
        assert fast.metadata["iso_method"] == dense.metadata["iso_method"]
        assert fast.metadata["iso_level"] == pytest.approx(dense.metadata["iso_level"], rel=0.05)


def test_surface_everywhere_falls_back_to_the_dense_lattice():
    """A field that crosses its level in every coarse cell (an untrained model's fog): the search would refine the
    whole volume, so the dense lattice is queried instead, and the mesh is still the dense one."""

    def fog(p):
        return 1.0 + 0.1 * torch.sin(40 * p[:, 0]) * torch.sin(40 * p[:, 1]) * torch.sin(40 * p[:, 2])

    fast = extract_mesh(fog, resolution=97, iso_level=1.0)
    dense = extract_mesh(fog, resolution=97, iso_level=1.0, coarse_to_fine=False)
    assert fast.metadata["density_stats"]["density_queries"] > 97**3
    assert len(fast.faces) == len(dense.faces)
