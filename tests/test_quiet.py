"""The known third-party FutureWarnings are silenced at the project's entry points, and nothing else is."""

from __future__ import annotations

import subprocess
import sys
import warnings
from copy import deepcopy
from pathlib import Path

from lrm_nerfstudio.quiet import silence_known_warnings


def _shown(message: str, category, module: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        # pytest manages the filters of each test: install the package's (what `import lrm_nerfstudio` does) here
        warnings.simplefilter("default")
        silence_known_warnings()
        warnings.warn_explicit(message, category, "activations.py", 32, module=module, registry={})
    return [str(w.message) for w in caught]


def test_only_the_known_warnings_are_silenced():
    known = "`torch.cuda.amp.custom_fwd(args...)` is deprecated. Please use `torch.amp.custom_fwd(args...)`"
    assert _shown(known, FutureWarning, "nerfstudio.field_components.activations") == []
    assert _shown(known.replace("fwd", "bwd"), FutureWarning, "nerfstudio.field_components.activations") == []
    # the same words from our own code, another category, or another message still show
    assert _shown(known, FutureWarning, "lrm_nerfstudio.model.lrm_model") != []
    assert _shown(known, DeprecationWarning, "nerfstudio.field_components.activations") != []
    assert _shown("something else is deprecated", FutureWarning, "nerfstudio.fields.base_field") != []


def test_cli_help_prints_no_future_warning():
    exe = Path(sys.executable).parent / "lrm-reconstruct"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FutureWarning" not in out.stderr and "custom_fwd" not in out.stderr, out.stderr[-2000:]


# each warning as seen in the stderr of ns-train lrm-tiny / lrm-eval / lrm-demo (message, category, issuing module)
SEEN = [
    ("`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use `torch.amp.GradScaler('cuda', args...)` instead.",
     FutureWarning, "nerfstudio.engine.trainer"),
    (("Using a non-tuple sequence for multidimensional indexing is deprecated and will be changed in pytorch 2.9; use "
     "x[tuple(seq)] instead of x[seq]."), UserWarning, "nerfstudio.cameras.cameras"),
    (("Converting a tensor with requires_grad=True to a scalar may lead to unexpected behavior.\nConsider using "
     "tensor.detach() first."), UserWarning, "nerfstudio.utils.writer"),
    (("Importing `spectral_angle_mapper` from `torchmetrics.functional` was deprecated and will be removed in 2.0. "
     "Import `spectral_angle_mapper` from `torchmetrics.image` instead."), FutureWarning, "torchmetrics.utilities.prints"),
]  # fmt: skip


def test_each_seen_library_warning_is_silenced_only_where_it_comes_from():
    for message, category, module in SEEN:
        assert _shown(message, category, module) == [], message
        assert _shown(message, category, "lrm_nerfstudio.scripts.eval") != [], message  # our own code still warns


def test_short_ns_train_prints_none_of_them(procedural_dataset, tmp_path):
    """nerfstudio's ns-train entry point, 2 steps: none of the known warnings (those nerfstudio raises while it
    imports its models included), while an unrelated warning raised in the same process still shows."""
    script = (
        "import sys, warnings\n"
        f"sys.argv = ['ns-train', 'lrm-tiny', '--data', {str(procedural_dataset)!r}, '--output-dir', {str(tmp_path)!r},"
        " '--max-num-iterations', '2', '--vis', 'tensorboard', '--pipeline.datamanager.num-workers', '0',"
        " '--machine.device-type', 'cpu']\n"
        "from nerfstudio.scripts.train import entrypoint\n"
        "warnings.warn_explicit('an unrelated thing is deprecated', FutureWarning, 'x.py', 1,"
        " module='nerfstudio.fields.x')\n"
        "entrypoint()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "an unrelated thing is deprecated" in out.stderr
    assert list(tmp_path.rglob("step-*.ckpt")), "the run did not train"
    for needle in ("custom_fwd", "custom_bwd", "GradScaler", "non-tuple sequence", "requires_grad=True to a scalar",
                   "torchmetrics.functional"):  # fmt: skip
        assert needle not in out.stderr, out.stderr[-3000:]


def test_project_errors_print_as_one_line_without_traceback(tmp_path):
    """An uncaught project error in any process that loaded the plugin (ns-export, ns-train, ...) is one `error:` line;
    other exceptions keep their traceback."""
    import subprocess
    import sys

    script = (
        "import lrm_nerfstudio, sys\n"
        "from lrm_nerfstudio.data.dataset_format import DatasetFormatError\n"
        "if sys.argv[1] == 'ours':\n"
        "    raise DatasetFormatError('/data/x/transforms.json: frames[0].file_path: outside the object folder')\n"
        "raise ValueError('a plain bug')\n"
    )
    ours = subprocess.run(
        [sys.executable, "-c", script, "ours"], check=False, capture_output=True, text=True, timeout=300
    )
    assert ours.returncode == 1
    assert ours.stderr.strip().splitlines()[-1] == (
        "error: /data/x/transforms.json: frames[0].file_path: outside the object folder"
    )
    assert "Traceback" not in ours.stderr
    other = subprocess.run(
        [sys.executable, "-c", script, "bug"], check=False, capture_output=True, text=True, timeout=300
    )
    assert other.returncode == 1 and "Traceback" in other.stderr and "a plain bug" in other.stderr


def _bad_configs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Unreadable --load-config files, each with the message it must give."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {
        "malformed": (b"a: [\n", "not a readable nerfstudio config (ParserError: expected the node content"),
        "list": (b"- 1\n- 2\n", "not a nerfstudio config (it holds a list, not a TrainerConfig)"),
        "missing-class": (
            b"!!python/object:lrm_nerfstudio.training.trainer.NoSuchConfig\nmethod_name: lrm-tiny\n",
            (
                "not a readable nerfstudio config (ConstructorError: cannot find 'NoSuchConfig' in the module "
                "'lrm_nerfstudio.training.trainer' (line 1, column 1))"
            ),
        ),
        "binary": (b"\xff\xfe\x00", "not a readable nerfstudio config (UnicodeDecodeError"),
    }
    out = {}
    for name, (data, message) in cases.items():
        (folder / f"{name}.yml").write_bytes(data)
        out[name] = (folder / f"{name}.yml", message)
    out["missing"] = (folder / "missing.yml", "config file not found")
    return out


def _message_of(call) -> str | None:
    from lrm_nerfstudio.quiet import config_read_message

    try:
        call()
    except Exception as err:  # noqa: BLE001 (whatever nerfstudio raises is what the hook sees)
        return config_read_message(err, err.__traceback__)
    raise AssertionError("no error")


def test_unreadable_load_config_is_named_with_its_problem(tmp_path, monkeypatch):
    """nerfstudio reads --load-config itself (eval_setup for ns-export / ns-viewer / ns-eval, ns-train's main), before
    the plugin sees it: the message hook recognises those reads, and only those."""
    from nerfstudio.scripts import train
    from nerfstudio.utils.eval_utils import eval_setup

    from lrm_nerfstudio.lrm_config import lrm_tiny_method

    for name, (path, message) in _bad_configs(tmp_path).items():
        assert _message_of(lambda p=path: eval_setup(p)).startswith(f"{path}: {message}"), name
        config = deepcopy(lrm_tiny_method.config)
        config.load_config = path
        # ns-train's main has replaced its config by what the file built when a non-config fails: the command line
        # names the file then
        monkeypatch.setattr(sys, "argv", ["ns-train", "lrm-tiny", "--load-config", str(path)])
        assert _message_of(lambda c=config: train.main(c)).startswith(f"{path}: {message}"), name

    def elsewhere():
        raise KeyError("yaml.load(")  # not raised while nerfstudio reads a config

    assert _message_of(elsewhere) is None


def test_ns_export_on_a_malformed_config_prints_one_line(tmp_path):
    path, message = _bad_configs(tmp_path)["malformed"]
    out = subprocess.run([str(Path(sys.executable).parent / "ns-export"), "poisson", "--load-config", str(path),
                          "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                         check=False)  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {path}: {message}"), out.stderr[-3000:]
    assert not list((tmp_path / "out").iterdir())  # nerfstudio makes the folder first; nothing is written in it


def test_lrm_commands_read_a_bad_config_in_one_line(tmp_path):
    """The lrm-* commands read --load-config themselves (read_trainer_config): their message is one line as well."""
    import pytest

    from lrm_nerfstudio.io.checkpoints import ModelLoadError, read_trainer_config

    for name, (path, _) in _bad_configs(tmp_path).items():
        with pytest.raises(ModelLoadError) as caught:
            read_trainer_config(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, (name, message)
    with pytest.raises(
        ModelLoadError, match=r"ParserError: expected the node content, but found '<stream end>' \(line 2"
    ):
        read_trainer_config(tmp_path / "malformed.yml")


def test_dataset_tools_name_a_missing_or_wrong_folder_with_a_project_error(tmp_path, capsys):
    """lrm-pack-shards, lrm-render-meshes and lrm-generate on a missing input or an output that is a file: an error the
    message hook prints as one line (before: FileNotFoundError, or a plain ValueError, with a traceback)."""
    import pytest

    from lrm_nerfstudio.data.shards import PackShardsConfig
    from lrm_nerfstudio.data.shards import main as pack
    from lrm_nerfstudio.generate.dataset_writer import check_output_dir
    from lrm_nerfstudio.generate.render_meshes import RenderMeshesConfig
    from lrm_nerfstudio.generate.render_meshes import main as render

    assert pack(PackShardsConfig(dataset=tmp_path / "nowhere", output=tmp_path / "shards")) == 2
    assert capsys.readouterr().err.strip() == f"lrm-pack-shards: {tmp_path / 'nowhere'}: dataset folder not found"
    for call, message in [
        (lambda: render(RenderMeshesConfig(input=tmp_path / "nowhere", output=tmp_path / "out")), "input is not a"),
        (lambda: render(RenderMeshesConfig(input=tmp_path, output=tmp_path / "out")), "no mesh files"),
    ]:
        with pytest.raises(ValueError, match=message) as caught:
            call()
        assert type(caught.value).__module__.startswith("lrm_nerfstudio.")  # what the hook prints as one line
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="output exists and is not a directory") as caught:
        check_output_dir(tmp_path / "file")
    assert type(caught.value).__module__.startswith("lrm_nerfstudio.")
