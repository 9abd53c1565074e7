"""`lrm-reconstruct` goes on past an image that fails in an unforeseen way, names it, and exits 1 at the end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lrm_run_helpers import save_tiny_run

from lrm_nerfstudio.scripts import reconstruct
from lrm_nerfstudio.scripts.reconstruct import OutputOptions, ReconstructConfig, main

SMALL = OutputOptions(resolution=32, turntable_frames=2, turntable_resolution=16)


@pytest.mark.slow
def test_one_failing_image_does_not_stop_the_batch(procedural_dataset, tmp_path, monkeypatch, capsys):
    run = save_tiny_run(procedural_dataset, tmp_path / "run")
    test_id = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]["test"][0]
    images = []
    for name in ("first", "bad", "last"):
        images.append(tmp_path / f"{name}.png")
        shutil.copy(procedural_dataset / test_id / "images" / "000.png", images[-1])
    real = reconstruct.reconstruct_file

    def failing_on_bad(loaded, path: Path, *args, **kwargs):
        if path.stem == "bad":  # an error of no type the command knows about (e.g. one from a library)
            raise RuntimeError("simulated failure inside the renderer")
        return real(loaded, path, *args, **kwargs)

    monkeypatch.setattr(reconstruct, "reconstruct_file", failing_on_bad)
    out = tmp_path / "out"
    assert main(ReconstructConfig(images=images, load_config=run, output_dir=out, output=SMALL)) == 1
    printed = " ".join(capsys.readouterr().out.split())
    assert f"{images[1]}: reconstruction failed (RuntimeError: simulated failure inside the renderer)" in printed
    for name in ("first", "last"):
        assert (out / name / "mesh.glb").is_file(), name
    report = json.loads((out / "timings.json").read_text())
    assert list(report["failed"]) == [str(images[1])]
    assert set(report["images"]) == {"first", "last"}
