"""Checkpoints that nerfstudio 1.1.5 writes load under torch >= 2.6's `weights_only=True` default.

nerfstudio's cosine/exponential schedulers compute learning rates with numpy, so once warm-up is over the optimiser
and scheduler states in every checkpoint hold `numpy.float64` scalars. `torch.load` (as called by `ns-train
--load-dir`, `ns-eval`, `ns-viewer` and `ns-export`) then refuses the file. numpy scalars and dtypes are plain data,
so they are allow-listed when the plugin is imported (which nerfstudio does before loading any LRM checkpoint).
"""

from __future__ import annotations

import numpy as np
import torch


def allow_numpy_scalars_in_checkpoints() -> None:
    """Let `torch.load(..., weights_only=True)` read numpy scalars (and their dtypes) in checkpoints."""
    try:
        from numpy.core.multiarray import scalar  # numpy 1.x name, the one pickles written under numpy 1.x use
    except ImportError:  # pragma: no cover - numpy 2 without the compatibility alias
        from numpy._core.multiarray import scalar
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    torch.serialization.add_safe_globals([scalar, np.dtype, *dtype_classes])
