"""nerfstudio's Trainer with the main-process-only duties of multi-process training made so.

nerfstudio 1.1.5 already saves checkpoints and writes logs on the global rank 0 only (`check_main_thread`), but:
- `Trainer.eval_iteration` runs on every rank: each rank would render the same held-out views, and rank 0's eval
  forward would be its alone anyway. Here it runs on rank 0 only; the other ranks wait for it in the next step's
  all-reduce.
- `Trainer.setup` starts a viewer on every machine's local rank 0. Here only the global rank 0 starts one.

Checkpoints survive a kill: `Trainer.save_checkpoint` writes `step-*.ckpt` in place, so a kill during the save
leaves a truncated newest file that every later `--load-dir`, `ns-viewer` or `ns-export` would pick and fail on.
Here the file is written under a temporary name and renamed. Loading the newest checkpoint (resume with `--load-dir`
and no `--load-step`, and nerfstudio's `eval_setup` for an LRM config) skips a newest file that is not completely
written, with a warning naming it, and takes the previous one; nothing of the user's is renamed or deleted. A
checkpoint that does not load (a pickle with code in it, say: torch.load keeps `weights_only`) ends `ns-viewer` /
`ns-export` with one message naming the file instead of a traceback. Loading an LRM config also puts the project's
texture unwrap (`mesh.ns_texture`) in place of nerfstudio's, whose rasteriser takes hours at `ns-export`'s defaults.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import comms
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from lrm_nerfstudio.io.checkpoint_files import (
    CHECKPOINT_GLOB,
    checkpoint_step,
    load_failure,
    newest_complete_checkpoint,
)
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.state_keys import load_stable_state
from lrm_nerfstudio.quiet import print_error

_NO_VIEWER = {"viewer": "tensorboard", "viewer_legacy": "tensorboard", "viewer+wandb": "wandb",
              "viewer+tensorboard": "tensorboard", "viewer+comet": "comet"}  # fmt: skip
"""A non-main rank's `vis`: the same loggers without the viewer (loggers write on the main process only anyway)."""


@dataclass
class LRMTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig, building `LRMTrainer`."""

    _target: type = field(default_factory=lambda: LRMTrainer)

    def __setstate__(self, state: dict) -> None:
        # PyYAML builds a config.yml's object through here: the moment an LRM config is read, eval_setup's
        # checkpoint choice gets its fallback (see install_eval_fallback)
        self.__dict__.update(state)
        install_eval_fallback()
        install_fast_texture_unwrap()


def _warn(message: str) -> None:
    CONSOLE.print(f"[bold yellow]warning:[/bold yellow] {message}", soft_wrap=True, highlight=False)


def choose_complete_checkpoint(config: TrainerConfig) -> None:
    """Set `config.load_step` to the newest completely written checkpoint of `config.load_dir` when no step is set
    (nerfstudio would take the newest file whatever its state). Leaves the config alone when there is none."""
    if config.load_dir is None or config.load_step is not None or not Path(config.load_dir).is_dir():
        return
    ckpt = newest_complete_checkpoint(Path(config.load_dir), warn=_warn)
    if ckpt is not None:
        config.load_step = checkpoint_step(ckpt)


def checkpoint_to_load(config: TrainerConfig) -> Path | None:
    """The file that nerfstudio's `Trainer._load_checkpoint` (`--load-dir` / `--load-step`, or `--load-checkpoint`)
    or `eval_load_checkpoint` will read, its step pinned in the config so that nerfstudio reads that one: the newest
    complete checkpoint of the folder, or its newest file when none is complete (its load then fails with a
    message). None when there is nothing to load.

    Raises:
        ModelLoadError: the folder or file does not exist, or the folder holds no checkpoint.
    """
    if config.load_dir is not None:
        folder = Path(config.load_dir)
        if not folder.is_dir():
            raise ModelLoadError(f"{folder}: checkpoint folder not found")
        choose_complete_checkpoint(config)  # resume from the newest complete checkpoint, not a truncated one
        if config.load_step is None:
            steps = [step for p in folder.glob(CHECKPOINT_GLOB) if (step := checkpoint_step(p)) is not None]
            if not steps:
                raise ModelLoadError(f"{folder}: no checkpoint (step-*.ckpt) in this folder")
            config.load_step = max(steps)
        path = folder / f"step-{config.load_step:09d}.ckpt"
        if not path.is_file():
            raise ModelLoadError(f"{path}: checkpoint not found (load step {config.load_step})")
        return path
    if config.load_checkpoint is not None:
        path = Path(config.load_checkpoint)
        if not path.is_file():
            raise ModelLoadError(f"{path}: checkpoint file not found (--load-checkpoint)")
        return path
    return None


def _eval_load_checkpoint_with_fallback(config, pipeline):
    """nerfstudio's `eval_load_checkpoint`, for LRM configs: the newest complete checkpoint, and a message (exit 2)
    naming the file when it does not load."""
    original = _eval_load_checkpoint_with_fallback.original  # type: ignore[attr-defined]
    if not isinstance(config, LRMTrainerConfig):
        return original(config, pipeline)
    where = config.load_dir
    try:
        where = checkpoint_to_load(config)
        return original(config, pipeline)
    except ModelLoadError as err:
        print_error(str(err))
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 (torch.load and load_state_dict raise many types for a bad file)
        print_error(f"{where}: cannot load the checkpoint ({load_failure(where, err)})")
        sys.exit(2)


def install_eval_fallback() -> None:
    """Route nerfstudio's `eval_load_checkpoint` (used by `eval_setup`: ns-viewer, ns-export, ns-eval) through
    `_eval_load_checkpoint_with_fallback`; other methods' configs pass through unchanged. Idempotent, and a no-op
    until nerfstudio's eval_utils is imported (every command that calls eval_setup has imported it by then)."""
    eval_utils = sys.modules.get("nerfstudio.utils.eval_utils")
    current = getattr(eval_utils, "eval_load_checkpoint", None)
    if current is None or current is _eval_load_checkpoint_with_fallback:
        return
    _eval_load_checkpoint_with_fallback.original = current  # type: ignore[attr-defined]
    eval_utils.eval_load_checkpoint = _eval_load_checkpoint_with_fallback  # type: ignore[union-attr]


def install_fast_texture_unwrap() -> None:
    """Replace nerfstudio's `texture_utils.unwrap_mesh_with_xatlas` (the texture stage of `ns-export poisson` and
    `tsdf`: hours on a CPU for the default 2048^2 texture) with `mesh.ns_texture`'s, which returns the same
    thing in seconds. Called when an LRM config is loaded; replaces nerfstudio's own function only (a wrapper
    someone put there, such as scripts/benchmark_ns_export.py's timer, stays)."""
    from nerfstudio.exporter import texture_utils

    from lrm_nerfstudio.mesh.ns_texture import unwrap_mesh_with_xatlas

    if getattr(texture_utils.unwrap_mesh_with_xatlas, "__module__", None) == texture_utils.__name__:
        texture_utils.unwrap_mesh_with_xatlas = unwrap_mesh_with_xatlas


class LRMTrainer(Trainer):
    """Trainer whose evaluation and viewer run on the global rank 0 only (see the module docstring)."""

    config: LRMTrainerConfig

    def __init__(self, config: TrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        if not comms.is_main_process() and config.vis in _NO_VIEWER:
            config = replace(config, vis=_NO_VIEWER[config.vis])  # type: ignore[arg-type]
        super().__init__(config, local_rank=local_rank, world_size=world_size)

    def _load_checkpoint(self) -> None:
        path = checkpoint_to_load(self.config)
        try:
            super()._load_checkpoint()
        except Exception as err:  # torch.load and load_state_dict raise many types for a bad file
            if path is None:
                raise
            raise ModelLoadError(f"{path}: cannot resume from this checkpoint ({load_failure(path, err)})") from err
        init_from = getattr(self.pipeline.model.config, "init_from", None)
        if self.config.load_dir is not None or self.config.load_checkpoint is not None:
            return
        if init_from is None:
            if self.config.method_name in ("lrm-triposr", "lrm-openlrm"):
                CONSOLE.print(
                    f"[bold yellow]{self.config.method_name}: no --pipeline.model.init-from, so the released "
                    "architecture starts from RANDOM weights (import the released ones with lrm-import-weights)."
                    "[/bold yellow]",
                    soft_wrap=True,
                )
            return
        from lrm_nerfstudio.pretrained import load_pretrained

        state = load_pretrained(init_from).state
        model = self.pipeline.model
        try:
            load_stable_state(model, state)
        except RuntimeError as err:
            raise ModelLoadError(f"{init_from}: the weights do not fit the model ({err})") from err
        model.refresh_display()
        CONSOLE.print(f"Initialised the model from {init_from} ({len(state)} tensors)", soft_wrap=True)

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint (same keys, name and pruning), written to a temporary file and renamed."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),  # type: ignore[union-attr]
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        tmp = path.with_name(path.name + ".partial")  # matches no step-*.ckpt glob
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for stale in self.checkpoint_dir.glob("step-*.ckpt.partial"):  # left by a save that a kill interrupted
            stale.unlink(missing_ok=True)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("step-*.ckpt"):
                if old != path:
                    old.unlink()

    def eval_iteration(self, step: int) -> None:
        if comms.is_main_process():
            super().eval_iteration(step)


install_eval_fallback()  # when nerfstudio's eval_utils is already imported (ns-export, ns-viewer import it first)
