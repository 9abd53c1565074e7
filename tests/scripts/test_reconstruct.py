"""`lrm-reconstruct`: every output written and loadable, and every bad input reported without stopping the others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml
from lrm_run_helpers import run_tool, save_tiny_run, tool
from nerfstudio.utils.eval_utils import eval_setup
from PIL import Image
from safetensors.torch import load_file

from lrm_nerfstudio.scripts.export_weights import ExportWeightsConfig
from lrm_nerfstudio.scripts.export_weights import main as export_weights
from lrm_nerfstudio.scripts.reconstruct import OutputOptions, ReconstructConfig, main

SMALL = OutputOptions(resolution=48, turntable_frames=3, turntable_resolution=24, texture_resolution=64)


@pytest.fixture(scope="module")
def tiny_run(procedural_dataset, tmp_path_factory) -> Path:
    return save_tiny_run(procedural_dataset, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def inputs(procedural_dataset, tmp_path_factory) -> dict[str, Path]:
    """A rendered RGBA view, the same view as RGB on grey (no alpha), and four bad files."""
    folder = tmp_path_factory.mktemp("inputs")
    test_id = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]["test"][0]
    rgba_path = procedural_dataset / test_id / "images" / "000.png"
    rgba = np.asarray(Image.open(rgba_path).convert("RGBA")).astype(np.float32) / 255
    rgb = rgba[..., :3] * rgba[..., 3:] + (200 / 255) * (1 - rgba[..., 3:])
    paths = {"rgba": folder / "object_rgba.png", "rgb": folder / "object_rgb.png"}
    Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").save(paths["rgba"])
    Image.fromarray((rgb * 255 + 0.5).astype(np.uint8), "RGB").save(paths["rgb"])
    paths["text"] = folder / "notes.png"
    paths["text"].write_text("this is not an image\n")
    paths["empty"] = folder / "empty.png"
    paths["empty"].write_bytes(b"")
    paths["transparent"] = folder / "transparent.png"
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(paths["transparent"])
    paths["huge"] = folder / "huge.png"
    Image.new("RGB", (300, 300), (255, 255, 255)).save(paths["huge"])  # over the 128^2 limit set below
    return paths


def check_outputs(out: Path, expected_triplane_shape) -> dict[str, Path]:
    files = {
        "glb": out / "mesh.glb",
        "obj": out / "mesh.obj",
        "ply": out / "mesh.ply",
        "gif": out / "turntable.gif",
        "triplane": out / "triplane.safetensors",
        "source": out / "source.png",
        "config": out / "config.yml",
    }
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0, path
    texture = np.asarray(Image.open(out / "mesh.png"))
    assert texture.shape == (SMALL.texture_resolution, SMALL.texture_resolution, 3)
    for fmt in ("glb", "obj", "ply"):
        mesh = trimesh.load(files[fmt], force="mesh")
        assert len(mesh.faces) > 0, fmt
        assert np.abs(mesh.vertices).max() <= 1.0 + 1e-5, fmt
        if fmt == "ply":  # the PLY keeps vertex colours; GLB and OBJ carry the baked texture
            assert mesh.visual.kind == "vertex", fmt
            assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4), fmt
        else:
            assert mesh.visual.kind == "texture", fmt
            image = mesh.visual.material.baseColorTexture if fmt == "glb" else mesh.visual.material.image
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), texture)
    frames = Image.open(files["gif"])
    assert frames.n_frames == SMALL.turntable_frames and frames.size == (24, 24)
    triplane = load_file(files["triplane"])["triplane"]
    assert tuple(triplane.shape) == tuple(expected_triplane_shape)
    assert torch.isfinite(triplane).all()
    return files


def test_reconstruct_rgba_rgb_and_bad_inputs(tiny_run, inputs, tmp_path, capsys):
    out = tmp_path / "recon"
    order = ["text", "rgba", "empty", "transparent", "rgb", "huge"]
    code = main(
        ReconstructConfig(
            images=[inputs[k] for k in order], load_config=tiny_run, output_dir=out, max_pixels=128 * 128, output=SMALL
        )
    )
    printed = capsys.readouterr().out
    assert code == 1  # some images failed, the good ones were still done

    # bad inputs: one clear line each, naming the file; no result folder left behind
    for key, problem in [
        ("text", "not an image"),
        ("empty", "empty file"),
        ("transparent", "fully transparent"),
        ("huge", "over the limit"),
    ]:
        lines = [line for line in printed.splitlines() if str(inputs[key]) in line and problem in line]
        assert lines, f"no error line for {key}:\n{printed}"
        assert not (out / inputs[key].stem).exists()
    report = json.loads((out / "timings.json").read_text())
    assert set(report["failed"]) == {str(inputs[k]) for k in ("text", "empty", "transparent", "huge")}

    # good inputs: every file, loadable, and the config opens exactly this reconstruction in nerfstudio
    for key in ("rgba", "rgb"):
        folder = out / inputs[key].stem
        _, pipeline, _, step = eval_setup(folder / "config.yml", test_mode="test")
        display = pipeline.model.display_triplanes().cpu()
        files = check_outputs(folder, display.shape)
        assert step == 0
        torch.testing.assert_close(load_file(files["triplane"])["triplane"], display, atol=1e-5, rtol=1e-4)
        timings = report["images"][folder.name]["timings_s"]
        assert set(timings) >= {"preprocess", "encode", "decode", "mesh", "cleanup", "unwrap", "bake", "turntable",
                                "write", "total"}  # fmt: skip
    assert report["load_s"] > 0
    for stage in ("load", "preprocess", "encode", "decode", "mesh", "write"):
        assert stage in printed


def test_reconstruct_from_exported_weights(tiny_run, inputs, tmp_path):
    weights = tmp_path / "tiny.safetensors"
    assert export_weights(ExportWeightsConfig(load_config=tiny_run, output=weights)) == 0
    out = tmp_path / "recon"
    assert main(ReconstructConfig(images=[inputs["rgba"]], weights=weights, output_dir=out, output=SMALL)) == 0
    folder = out / inputs["rgba"].stem
    _, pipeline, _, _ = eval_setup(folder / "config.yml", test_mode="test")
    display = pipeline.model.display_triplanes().cpu()
    files = check_outputs(folder, display.shape)
    torch.testing.assert_close(load_file(files["triplane"])["triplane"], display, atol=1e-5, rtol=1e-4)
    assert list((out / "nerfstudio_models").glob("step-*.ckpt"))


def test_bad_config_exits_2_naming_the_path(tiny_run, inputs, tmp_path, capsys):
    # not a TrainerConfig, not LRM's, and a weights file that is no safetensors: in-process, exit code 2
    foreign = tmp_path / "foreign.yml"
    foreign.write_text(yaml.dump({"method_name": "nerfacto"}))
    from nerfstudio.configs.method_configs import method_configs

    nerfacto = tmp_path / "nerfacto.yml"
    nerfacto.write_text(yaml.dump(method_configs["nerfacto"]))
    fake_weights = tmp_path / "fake.safetensors"
    fake_weights.write_bytes(b"garbage")
    for bad in (foreign, nerfacto, fake_weights):
        assert main(ReconstructConfig(images=[inputs["rgba"]], load_config=bad, output_dir=tmp_path / "o")) == 2
        printed = capsys.readouterr().out
        assert str(bad) in printed.replace("\n", "") and "Traceback" not in printed

    # the real console script with a missing config: exit 2, one message naming the path, no traceback
    missing = tmp_path / "nowhere" / "config.yml"
    result = run_tool(
        [tool("lrm-reconstruct"), str(inputs["rgba"]), "--load-config", str(missing), "--output-dir", str(tmp_path)],
        expect=2,
    )
    text = result.stdout + result.stderr
    assert str(missing) in text.replace("\n", "") and "config file not found" in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"texture_resolution": -1}, "--texture-resolution must be 0 (vertex colours only) or 1..8192 texels, got -1"),
        ({"texture_resolution": 9000}, "--texture-resolution must be 0 (vertex colours only) or 1..8192 texels"),
        ({"target_faces": 0}, "--target-faces must be > 0"),
        ({"min_component_fraction": 2.0}, "--min-component-fraction must be in [0, 1]"),
    ],
)
def test_bad_mesh_options_exit_2_before_loading(inputs, tmp_path, capsys, options, message):
    missing = tmp_path / "never_read" / "config.yml"  # refused before any model is loaded
    config = ReconstructConfig(images=[inputs["rgba"]], load_config=missing, output=OutputOptions(**options))
    assert main(config) == 2
    assert message in capsys.readouterr().out.replace("\n", "")


def test_bad_texture_resolution_flag_from_the_console(inputs, tmp_path):
    result = run_tool(
        [tool("lrm-reconstruct"), str(inputs["rgba"]), "--weights", str(tmp_path / "w.safetensors"),
         "--texture-resolution", "-3", "--target-faces", "20000"],
        expect=2,
    )  # fmt: skip
    text = (result.stdout + result.stderr).replace("\n", "")
    assert "--texture-resolution must be 0" in text and "got -3" in text and "Traceback" not in text
