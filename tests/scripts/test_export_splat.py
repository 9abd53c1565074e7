"""`lrm-export-splat`: a training run's display object as a 3DGS PLY, ns-export style; bad configs exit 2.

(tests/test_readme.py runs the console script's --help with the README's flags.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lrm_run_helpers import save_tiny_run
from plyfile import PlyData

from lrm_nerfstudio.scripts.export_splat import ExportSplatConfig, main
from lrm_nerfstudio.splat.convert import SplatConversionConfig
from lrm_nerfstudio.splat.ply import ply_property_names, read_gaussians_ply


@pytest.fixture(scope="module")
def tiny_run(procedural_dataset, tmp_path_factory) -> Path:
    return save_tiny_run(procedural_dataset, tmp_path_factory.mktemp("run"))


def test_exports_the_display_object(tiny_run, procedural_dataset, tmp_path, capsys):
    splits = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]
    out = tmp_path / "exports"
    conversion = SplatConversionConfig(num_gaussians=2000, resolution=32)
    assert main(ExportSplatConfig(load_config=tiny_run, output_dir=out, conversion=conversion)) == 0
    printed = capsys.readouterr().out
    assert splits["test"][0] in printed  # the default display object: the first test object
    ply = PlyData.read(str(out / "splat.ply"))
    assert [p.name for p in ply["vertex"].properties] == ply_property_names(0)
    g = read_gaussians_ply(out / "splat.ply")
    assert 0 < len(g) <= 2000 and (g.means.abs() <= 1).all()
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(len(g)))

    # another object: another reconstruction
    other = ExportSplatConfig(load_config=tiny_run, output_dir=out, output_filename="val.ply",
                              display_object=splits["val"][0], conversion=conversion)  # fmt: skip
    assert main(other) == 0
    assert splits["val"][0] in capsys.readouterr().out
    assert not torch.equal(read_gaussians_ply(out / "val.ply").means[:10], g.means[:10])


def test_bad_inputs(tiny_run, tmp_path, capsys):
    foreign = tmp_path / "foreign.yml"
    foreign.write_text(yaml.dump({"method_name": "nerfacto"}))
    assert main(ExportSplatConfig(load_config=foreign, output_dir=tmp_path / "o")) == 2
    assert str(foreign) in capsys.readouterr().out.replace("\n", "")
    bad_count = ExportSplatConfig(load_config=tiny_run, output_dir=tmp_path / "o",
                                  conversion=SplatConversionConfig(num_gaussians=0))  # fmt: skip
    assert main(bad_count) == 2
    assert "--num-gaussians must be > 0" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()
