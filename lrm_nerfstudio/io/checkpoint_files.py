"""Checkpoints that nerfstudio 1.1.5 writes load under torch >= 2.6's `weights_only=True` default.

nerfstudio's cosine/exponential schedulers compute learning rates with numpy, so once warm-up is over the optimiser
and scheduler states in every checkpoint hold `numpy.float64` scalars. `torch.load` (as called by `ns-train
--load-dir`, `ns-eval`, `ns-viewer` and `ns-export`) then refuses the file. numpy scalars and dtypes are plain data,
so they are allow-listed when the plugin is imported (which nerfstudio does before loading any LRM checkpoint).

Checkpoints are written to a temporary name and renamed (`LRMTrainer.save_checkpoint`), and whoever picks the newest
one skips a file that is not completely written (`newest_complete_checkpoint`): a run killed during a save, or one
written by plain nerfstudio, then loads from the previous checkpoint.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

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


# ------------------------------------------------------------------------------------------ complete checkpoints
CHECKPOINT_GLOB = "step-*.ckpt"
"""Name pattern of nerfstudio's checkpoints (`step-000001000.ckpt`); partial writes never match it."""


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a completely written checkpoint, or None when it is.

    torch saves a zip archive whose central directory is written last, so a file cut short by a kill has none (or
    one pointing past its end). Only that directory is read: nothing is unpickled here.
    """
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"member {info.filename} ends past the end of the file (truncated)"
    except zipfile.BadZipFile as err:
        return f"not a complete checkpoint ({err}; truncated, e.g. by a kill during the save?)"
    except OSError as err:
        return f"unreadable ({err})"
    return None


def checkpoint_step(path: Path) -> int | None:
    """The step of `step-XXXXXXXXX.ckpt`, or None for another name."""
    digits = path.name.removeprefix("step-").removesuffix(".ckpt")
    return int(digits) if path.name.startswith("step-") and path.suffix == ".ckpt" and digits.isdigit() else None


def newest_complete_checkpoint(folder: Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest `step-*.ckpt` of `folder` that is completely written, skipping (with a warning) newer ones that are
    not; None when there is none at all."""
    ckpts = [p for p in Path(folder).glob(CHECKPOINT_GLOB) if checkpoint_step(p) is not None] if folder else []
    skipped: list[tuple[Path, str]] = []
    found = None
    for ckpt in sorted(ckpts, key=lambda p: checkpoint_step(p) or 0, reverse=True):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            found = ckpt
            break
        skipped.append((ckpt, problem))
    for ckpt, problem in skipped:
        then = f"falling back to the previous one, {found.name}" if found is not None else "no complete one is left"
        message = f"skipping checkpoint {ckpt}: {problem}; {then}"
        if warn is not None:
            warn(message)
        else:
            warnings.warn(message, UserWarning, stacklevel=2)
    return found


def load_failure(path: Path, err: BaseException) -> str:
    """Why `torch.load` (or loading its state) failed on checkpoint `path`, in one line for the user."""
    if isinstance(err, pickle.UnpicklingError):
        # torch.load's weights_only refusal: the file names Python callables, which unpickling would have run
        return (
            "it holds Python objects besides tensors and plain data, which could run code: refused, nothing in it ran"
        )
    problem = checkpoint_problem(path) if Path(path).is_file() else None
    if problem is not None:
        return problem
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:300]}" if first else type(err).__name__
