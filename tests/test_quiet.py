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
