"""`lrm-reconstruct --formats ... splat`: a valid gaussians.ply, only the formats asked for, bad options refused."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from plyfile import PlyData
from test_reconstruct import SMALL, inputs, tiny_run  # noqa: F401 (module-scoped fixtures of that module)

from lrm_nerfstudio.scripts.reconstruct import ReconstructConfig, main
from lrm_nerfstudio.splat.ply import ply_property_names, read_gaussians_ply
from lrm_nerfstudio.splat.render import gsplat_unavailable_reason


def test_formats_splat_writes_a_valid_gaussian_ply(tiny_run, inputs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "recon"
    options = replace(SMALL, formats=("glb", "splat"), splat_count=3000, splat_sh_degree=1, splat_refine_steps=5)
    assert main(ReconstructConfig(images=[inputs["rgba"]], load_config=tiny_run, output_dir=out, output=options)) == 0
    printed = capsys.readouterr().out.replace("\n", " ")
    folder = out / inputs["rgba"].stem
    # only the formats asked for; the turntable, triplane and config as always
    assert (folder / "mesh.glb").is_file() and not (folder / "mesh.obj").exists() and not (folder / "mesh.ply").exists()
    assert (folder / "turntable.gif").is_file() and (folder / "config.yml").is_file()

    ply = PlyData.read(str(folder / "gaussians.ply"))
    assert [p.name for p in ply["vertex"].properties] == ply_property_names(1)
    assert ply.byte_order == "<" and not ply.text
    g = read_gaussians_ply(folder / "gaussians.ply")
    assert 0 < len(g) <= 3000
    assert (g.means.abs() <= 1).all() and (g.opacities >= 1 / 255).all()
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(len(g)))
    assert np.isfinite(g.log_scales.numpy()).all() and (g.rgb >= 0).all() and (g.rgb <= 1).all()

    report = json.loads((out / "timings.json").read_text())["images"][folder.name]
    assert report["splat"]["num_gaussians"] == len(g)
    assert report["files"]["splat"] == str(folder / "gaussians.ply")
    assert "splat" in report["timings_s"]
    reason = gsplat_unavailable_reason()
    if reason is not None:  # on the CPU: said once, written unrefined, the NeRF turntable stays
        assert "refinement needs gsplat on CUDA" in printed and "NeRF render" in printed
        assert set(report["splat"]["refine"]) == {"skipped"} and "CUDA" in report["splat"]["refine"]["skipped"]
        assert not (folder / "turntable_splat.gif").exists()
    else:
        assert report["splat"]["refine"]["psnr_vs_nerf_after"] > 0
        assert (folder / "turntable_splat.gif").is_file() or (folder / "turntable_splat.mp4").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"splat_count": 0}, "--splat-count must be > 0"),
        ({"splat_count": -3}, "--splat-count must be > 0"),
        ({"splat_refine_steps": 10}, "add splat to --formats"),
        ({"formats": ("splat",), "splat_sh_degree": 5}, "--splat-sh-degree must be 0..3"),
    ],
)
def test_bad_splat_options_exit_2(inputs, tmp_path, capsys, change, message):  # noqa: F811
    options = replace(SMALL, **change)
    code = main(ReconstructConfig(images=[inputs["rgba"]], load_config=tmp_path / "unused.yml", output=options,
                                  output_dir=tmp_path / "o"))  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().out.replace("\n", " ")
    assert not (tmp_path / "o").exists()


def test_splat_only_from_the_command_line(tiny_run, inputs, tmp_path):  # noqa: F811
    import tyro

    out = tmp_path / "recon"
    args = [str(inputs["rgba"]), "--load-config", str(tiny_run), "--output-dir", str(out), "--formats", "splat",
            "--splat-count", "500", "--resolution", "32", "--turntable-frames", "0"]  # fmt: skip
    config = tyro.cli(ReconstructConfig, args=args)
    assert config.output.formats == ("splat",) and config.output.splat_count == 500
    assert main(config) == 0
    folder = out / inputs["rgba"].stem
    assert not list(folder.glob("mesh.*"))
    assert 0 < len(read_gaussians_ply(folder / "gaussians.ply")) <= 500


def test_a_transparent_splat_fails_the_image_but_keeps_the_mesh(tiny_run, inputs, tmp_path, capsys, monkeypatch):  # noqa: F811
    from lrm_nerfstudio import reconstruction
    from lrm_nerfstudio.splat.gaussians import EmptyReconstructionError

    def transparent(*args, **kwargs):
        raise EmptyReconstructionError("empty reconstruction: all 10 Gaussians are below 1/255 opacity")

    monkeypatch.setattr(reconstruction, "splat_stage", transparent)
    out = tmp_path / "recon"
    options = replace(SMALL, formats=("ply", "splat"), turntable_frames=0)
    assert main(ReconstructConfig(images=[inputs["rgba"]], load_config=tiny_run, output_dir=out, output=options)) == 1
    printed = capsys.readouterr().out.replace("\n", " ")
    assert str(inputs["rgba"]) in printed and "below 1/255 opacity" in printed and "no gaussians.ply" in printed
    folder = out / inputs["rgba"].stem
    assert (folder / "mesh.ply").is_file() and not (folder / "gaussians.ply").exists()
    report = json.loads((out / "timings.json").read_text())
    assert "below 1/255" in report["images"][folder.name]["splat"]["error"] and str(inputs["rgba"]) in report["failed"]
