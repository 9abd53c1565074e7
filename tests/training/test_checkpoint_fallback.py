"""A kill during a checkpoint save must not lose the run: saves go through a temporary file, and every loader
(resume, `lrm-export-weights`, nerfstudio's `ns-export`) skips a truncated newest checkpoint for the previous one.
A checkpoint carrying code is refused with a message, and the code never runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_trainer_config
from lrm_run_helpers import run_tool, tool

from lrm_nerfstudio.io.checkpoint_files import checkpoint_problem, newest_complete_checkpoint
from lrm_nerfstudio.io.checkpoints import find_checkpoint, read_trainer_config


def _trainer(data: Path, output: Path, steps: int, load_dir: Path | None = None):
    config = tiny_trainer_config(
        data,
        output_dir=output,
        max_num_iterations=steps,
        load_dir=load_dir,
        vis="tensorboard",
        steps_per_save=2,
        save_only_latest_checkpoint=False,
        steps_per_eval_batch=1000,
        steps_per_eval_image=1000,
        steps_per_eval_all_images=1000,
    )
    config.pipeline.model.field.density_bias = -1.0  # visible fog after 4 steps: ns-export refuses an empty model
    config.set_timestamp()
    config.save_config()
    torch.manual_seed(0)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return config, trainer


@pytest.fixture(scope="module")
def cut_run(procedural_dataset, tmp_path_factory):
    """A real 4-step run with checkpoints at steps 2 and 3, the newest then cut short as a kill would leave it."""
    config, trainer = _trainer(procedural_dataset, tmp_path_factory.mktemp("run"), 4)
    ckpt_dir = trainer.checkpoint_dir
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "step-000000001.ckpt.partial").write_bytes(b"PK")  # what a kill during an earlier save leaves
    trainer.train()
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert names == ["step-000000002.ckpt", "step-000000003.ckpt"], names  # and no .partial is left behind
    newest = ckpt_dir / "step-000000003.ckpt"
    assert checkpoint_problem(newest) is None
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    return config.get_base_dir() / "config.yml", ckpt_dir


def test_truncated_newest_checkpoint_is_skipped(cut_run, recwarn):
    config_path, ckpt_dir = cut_run
    assert "truncated" in checkpoint_problem(ckpt_dir / "step-000000003.ckpt")
    assert newest_complete_checkpoint(ckpt_dir).name == "step-000000002.ckpt"
    assert any("step-000000003.ckpt" in str(w.message) for w in recwarn)  # the skipped file is named
    assert find_checkpoint(read_trainer_config(config_path), config_path).name == "step-000000002.ckpt"


def test_resume_from_the_previous_checkpoint(cut_run, procedural_dataset, tmp_path, capsys):
    _, ckpt_dir = cut_run
    _, trainer = _trainer(procedural_dataset, tmp_path / "resumed", 2, load_dir=ckpt_dir)
    assert trainer._start_step == 3  # the step after step-2, not a crash on step-3
    assert "step-000000003.ckpt" in " ".join(capsys.readouterr().out.split())  # the warning names the skipped file
    trainer.train()  # and it trains on from there: steps 3 and 4
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == ["step-000000004.ckpt"]


@pytest.mark.slow
def test_export_weights_and_ns_export_fall_back(cut_run, tmp_path):
    config_path, _ = cut_run
    out = run_tool(
        [tool("lrm-export-weights"), "--load-config", str(config_path), "--output", str(tmp_path / "w.safetensors")]
    )
    assert "step-000000003.ckpt" in out.stdout and "step 2" in out.stdout, out.stdout
    out = run_tool([tool("ns-export"), "pointcloud", "--load-config", str(config_path), "--output-dir",
                    str(tmp_path / "pc"), "--num-points", "2000", "--num-rays-per-batch", "2048"])  # fmt: skip
    text = " ".join((out.stdout + out.stderr).split())  # rich wraps long paths
    assert "skipping checkpoint" in text and "step-000000003.ckpt" in text, text[-3000:]
    assert "step-000000002.ckpt" in text
    assert (tmp_path / "pc" / "point_cloud.ply").is_file()


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.slow
def test_pickled_checkpoint_is_refused_with_a_message(cut_run, tmp_path):
    config_path, _ = cut_run
    config = read_trainer_config(config_path)
    config.output_dir = tmp_path / "outputs"  # a copy of the run, where ns-export's eval_setup looks
    run = config.get_base_dir()
    shutil.copytree(config_path.parent, run)
    (run / "config.yml").write_text(yaml.dump(config))
    marker = tmp_path / "pwned"
    evil = run / "nerfstudio_models" / "step-000000009.ckpt"
    torch.save({"step": 9, "pipeline": {"x": _Payload(marker)}, "optimizers": {}, "scalers": {}}, evil)
    out = run_tool([tool("ns-export"), "pointcloud", "--load-config", str(run / "config.yml"), "--output-dir",
                    str(tmp_path / "pc"), "--num-points", "2000"], expect=None)  # fmt: skip
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    assert "Traceback" not in text, text[-3000:]
    assert "step-000000009.ckpt" in text and "cannot load the checkpoint" in text, text[-3000:]
    assert not marker.exists()
    out = run_tool([tool("lrm-export-weights"), "--load-config", str(run / "config.yml"), "--output",
                    str(tmp_path / "w.safetensors")], expect=2)  # fmt: skip
    text = " ".join((out.stdout + out.stderr).split())
    assert "step-000000009.ckpt" in text and "Traceback" not in text, text
    assert not marker.exists() and not (tmp_path / "w.safetensors").exists()


def _resume_error(data: Path, tmp_path: Path, **where) -> str:
    """The error of resuming a tiny run from `where` (load_dir= or load_checkpoint=); nerfstudio reads the checkpoint
    before it touches the pipeline, so the trainer is not set up."""
    from lrm_nerfstudio.io.checkpoints import ModelLoadError

    config = tiny_trainer_config(data, output_dir=tmp_path / "outputs", vis="tensorboard", **where)
    trainer = config.setup(local_rank=0, world_size=1)
    with pytest.raises(ModelLoadError) as caught:
        trainer._load_checkpoint()
    return str(caught.value)


def test_resume_from_a_bad_checkpoint_is_one_message(procedural_dataset, tmp_path):
    marker = tmp_path / "pwned"
    pickled = tmp_path / "pickled" / "step-000000005.ckpt"
    pickled.parent.mkdir()
    torch.save({"step": 5, "pipeline": {"x": _Payload(marker)}, "optimizers": {}, "scalers": {}}, pickled)
    cut = tmp_path / "cut" / "step-000000007.ckpt"
    cut.parent.mkdir()
    cut.write_bytes(pickled.read_bytes()[:100])
    (tmp_path / "empty").mkdir()
    refused = (
        "it holds Python objects besides tensors and plain data, which could run code: refused, nothing in it ran)"
    )
    cases = [
        ({"load_dir": pickled.parent}, f"{pickled}: cannot resume from this checkpoint ({refused}"),
        ({"load_checkpoint": pickled}, f"{pickled}: cannot resume from this checkpoint ({refused}"),
        ({"load_dir": cut.parent}, f"{cut}: cannot resume from this checkpoint (not a complete checkpoint"),
        ({"load_checkpoint": cut}, f"{cut}: cannot resume from this checkpoint (not a complete checkpoint"),
        ({"load_dir": tmp_path / "empty"}, f"{tmp_path / 'empty'}: no checkpoint (step-*.ckpt)"),
        ({"load_dir": tmp_path / "nowhere"}, f"{tmp_path / 'nowhere'}: checkpoint folder not found"),
        ({"load_dir": pickled.parent, "load_step": 3}, f"{pickled.parent / 'step-000000003.ckpt'}: checkpoint not"),
        ({"load_checkpoint": tmp_path / "no.ckpt"}, f"{tmp_path / 'no.ckpt'}: checkpoint file not found"),
    ]
    for where, message in cases:
        assert _resume_error(procedural_dataset, tmp_path, **where).startswith(message), where
    assert not marker.exists()  # the pickle's code never ran


@pytest.mark.slow
def test_ns_train_load_dir_of_a_pickled_checkpoint_prints_one_line(procedural_dataset, tmp_path):
    marker = tmp_path / "pwned"
    pickled = tmp_path / "models" / "step-000000005.ckpt"
    pickled.parent.mkdir()
    torch.save({"step": 5, "pipeline": {"x": _Payload(marker)}, "optimizers": {}, "scalers": {}}, pickled)
    out = run_tool([tool("ns-train"), "lrm-tiny", "--data", str(procedural_dataset), "--output-dir",
                    str(tmp_path / "outputs"), "--vis", "tensorboard", "--pipeline.datamanager.num-workers", "0",
                    "--machine.device-type", "cpu", "--load-dir", str(pickled.parent)], expect=1)  # fmt: skip
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {pickled}: cannot resume from this checkpoint (")
    assert not marker.exists()


def test_eval_setup_names_the_file_when_no_checkpoint_loads(cut_run, tmp_path, capsys):
    """ns-export / ns-viewer / ns-eval (eval_setup) on a run whose only checkpoint is cut short, or that has none: one
    line naming the file or folder (before: nerfstudio's IndexError, or torch's zip error with the folder named)."""
    from nerfstudio.utils.eval_utils import eval_setup

    config_path, _ = cut_run
    config = read_trainer_config(config_path)
    config.output_dir = tmp_path / "outputs"
    run = config.get_base_dir()
    shutil.copytree(config_path.parent, run)
    (run / "config.yml").write_text(yaml.dump(config))
    (run / "nerfstudio_models" / "step-000000002.ckpt").unlink()  # only the truncated step 3 is left
    for expected in ("step-000000003.ckpt: cannot load the checkpoint (not a complete checkpoint",
                     "nerfstudio_models: no checkpoint (step-*.ckpt) in this folder"):  # fmt: skip
        capsys.readouterr()
        with pytest.raises(SystemExit) as caught:
            eval_setup(run / "config.yml")
        assert caught.value.code == 2
        text = " ".join(capsys.readouterr().out.split())
        assert f"error: {run / 'nerfstudio_models'}" in text and expected in text, text[-2000:]
        (run / "nerfstudio_models" / "step-000000003.ckpt").unlink(missing_ok=True)


def test_lrm_commands_refuse_a_pickled_checkpoint_in_one_line(tmp_path):
    """What lrm-reconstruct / lrm-eval / lrm-export-weights (model_state_from_checkpoint) and lrm-import-weights (a
    TripoSR model.ckpt) say about a checkpoint whose pickle would run code: one line, and the code does not run."""
    from lrm_nerfstudio.convert.common import WeightsImportError
    from lrm_nerfstudio.convert.triposr import read_state
    from lrm_nerfstudio.io.checkpoints import ModelLoadError, model_state_from_checkpoint

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.ckpt"
    torch.save({"step": 1, "pipeline": {"x": _Payload(marker)}}, evil)
    refused = "it holds Python objects besides tensors and plain data, which could run code: refused, nothing in it ran"
    with pytest.raises(ModelLoadError) as caught:
        model_state_from_checkpoint(evil)
    assert str(caught.value) == f"{evil}: unreadable checkpoint ({refused})"
    with pytest.raises(WeightsImportError) as caught:
        read_state(tmp_path)
    assert str(caught.value) == f"{evil}: unreadable checkpoint ({refused})"
    assert not marker.exists()
