"""The known third-party FutureWarnings are silenced at the project's entry points, and nothing else is."""

from __future__ import annotations

import subprocess
import sys
import warnings
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
