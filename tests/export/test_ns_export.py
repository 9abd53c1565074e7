"""nerfstudio's own `ns-export pointcloud` and `ns-export poisson` on an LRM run (docs/ARCHITECTURE.md, nerfstudio's traps)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import trimesh
import yaml
from lrm_run_helpers import run_tool, save_tiny_run, tool
from nerfstudio.utils.eval_utils import eval_setup

BOX_TOLERANCE = 0.1
"""Poisson surfaces bulge past the points they fit: the random test model's fog reaches the box faces (1.08 seen)."""


@pytest.fixture(scope="module")
def tiny_run(procedural_dataset, tmp_path_factory):
    return save_tiny_run(procedural_dataset, tmp_path_factory.mktemp("run"))


def with_display(config_path, ref: str):
    """A copy of the run's config.yml (beside it) whose exported / displayed reconstruction is `ref`."""
    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    config.pipeline.datamanager.display_object = ref
    path = config_path.with_name("config_display.yml")
    path.write_text(yaml.dump(config))
    return path


def test_display_object_defaults_to_first_test_object(tiny_run, procedural_dataset):
    splits = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]
    _, pipeline, _, _ = eval_setup(tiny_run, test_mode="test")
    assert pipeline.datamanager.display_source[2] == splits["test"][0]
    _, pipeline, _, _ = eval_setup(with_display(tiny_run, splits["val"][0]), test_mode="test")
    assert pipeline.datamanager.display_source[2] == splits["val"][0]


@pytest.mark.slow
def test_ns_export_pointcloud(tiny_run, tmp_path):
    out = tmp_path / "pc"
    run_tool([tool("ns-export"), "pointcloud", "--load-config", str(tiny_run), "--output-dir", str(out),
              "--num-points", "4000", "--num-rays-per-batch", "4096"])  # fmt: skip
    pcd = o3d.io.read_point_cloud(str(out / "point_cloud.ply"))
    points = np.asarray(pcd.points)
    assert len(points) > 1000
    assert np.abs(points).max() <= 1.0 + 1e-4
    assert pcd.has_colors() and pcd.has_normals()
    np.testing.assert_allclose(np.linalg.norm(np.asarray(pcd.normals), axis=1), 1.0, atol=1e-3)


@pytest.mark.slow
def test_ns_export_poisson_of_an_image(tiny_run, procedural_dataset, tmp_path):
    # an image path as the export source (a test view rendered by the generator, RGBA)
    test_id = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]["test"][0]
    image = procedural_dataset / test_id / "images" / "003.png"
    out = tmp_path / "poisson"
    run_tool([tool("ns-export"), "poisson", "--load-config", str(with_display(tiny_run, str(image))),
              "--output-dir", str(out), "--num-points", "4000", "--num-rays-per-batch", "4096",
              "--num-pixels-per-side", "128", "--target-num-faces", "2000"])  # fmt: skip
    mesh = trimesh.load(out / "poisson_mesh.ply", force="mesh", process=False)
    assert len(mesh.faces) > 100
    assert np.abs(mesh.vertices).max() <= 1.0 + BOX_TOLERANCE
    assert mesh.visual.kind == "vertex" and len(mesh.visual.vertex_colors) == len(mesh.vertices)
    assert len(mesh.vertex_normals) == len(mesh.vertices)
    textured = trimesh.load(out / "mesh.obj", force="mesh")
    assert len(textured.faces) > 0 and (out / "material_0.png").is_file()


def _empty_field(config) -> None:
    # an untrained model whose field starts empty (the density bias a far-from-converged run can end with)
    config.pipeline.model.field.density_bias = -30.0


def test_opacity_check_refuses_an_empty_reconstruction(procedural_dataset, tmp_path):
    from lrm_nerfstudio.lrm_pipeline import EmptyReconstructionError

    _, pipeline, _, _ = eval_setup(
        save_tiny_run(procedural_dataset, tmp_path, configure=_empty_field), test_mode="test"
    )
    name = pipeline.datamanager.display_source[2]
    with pytest.raises(EmptyReconstructionError, match=f"reconstruction of '{name}' is empty.*display_object"):
        pipeline.datamanager.next_train(0)
    pipeline.datamanager.config.min_opaque_fraction = 0.0  # the check can be switched off
    pipeline.datamanager.set_display_object(name)
    bundle, _ = pipeline.datamanager.next_train(0)
    assert len(bundle) == pipeline.datamanager.config.train_num_rays_per_batch


def test_opacity_check_passes_an_opaque_reconstruction(tiny_run, capsys):
    _, pipeline, _, _ = eval_setup(tiny_run, test_mode="test")
    capsys.readouterr()
    fraction = pipeline.check_display_opacity()  # the random test model's fog is opaque (see the pointcloud test)
    assert fraction > pipeline.datamanager.config.min_opaque_fraction
    probes = len(pipeline.datamanager.display_probe_rays())
    assert probes <= 2 * pipeline.datamanager.config.opacity_probe_rays
    # the message states what was measured (the probe), not a points-per-batch guess that the opaque-cell sampling
    # which follows makes untrue
    said = " ".join(capsys.readouterr().out.split())
    assert f"{fraction:.1%} of {probes} probe rays of its export orbit are opaque" in said, said
    assert "per batch" not in said


@pytest.mark.slow
def test_ns_export_poisson_of_an_empty_reconstruction_fails_fast(procedural_dataset, tmp_path):
    """Before: nerfstudio's point-cloud loop waited forever for opaque rays (13+ minutes seen). Now: an error."""
    run = save_tiny_run(procedural_dataset, tmp_path / "run", configure=_empty_field)
    start = time.monotonic()
    out = run_tool([tool("ns-export"), "poisson", "--load-config", str(run), "--output-dir", str(tmp_path / "out"),
                    "--num-points", "4000", "--num-rays-per-batch", "4096"], timeout=180, expect=None)  # fmt: skip
    elapsed = time.monotonic() - start
    test_id = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]["test"][0]
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0, text[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"The reconstruction of '{test_id}' is empty or nearly empty" in text
    assert "Train the model longer" in text and "pipeline.datamanager.display_object" in text
    assert elapsed < 180


@pytest.mark.slow
def test_benchmark_ns_export_times_each_stage(tiny_run, tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_ns_export.py"
    out = run_tool([sys.executable, str(script), str(tiny_run), "--output-dir",
                    str(tmp_path / "out"), "--num-points", "3000", "--target-num-faces", "500",
                    "--num-pixels-per-side", "64"])  # fmt: skip
    record = json.loads(out.stdout)  # nothing but the JSON on stdout
    stages = record["stages_s"]
    assert set(stages) == {"load", "point_cloud", "poisson_and_save", "decimate", "xatlas_unwrap",
                           "texture_render_and_save"}  # fmt: skip
    assert all(value >= 0 for value in stages.values()) and sum(stages.values()) <= record["total_s"] + 1e-6
    assert record["options"]["num_points"] == 3000
    assert {"poisson_mesh.ply", "mesh.obj", "material_0.png"} <= set(record["files_bytes"])
