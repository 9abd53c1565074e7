"""nerfstudio's Trainer with the main-process-only duties of multi-process training made so.

nerfstudio 1.1.5 already saves checkpoints and writes logs on the global rank 0 only (`check_main_thread`), but:
- `Trainer.eval_iteration` runs on every rank: each rank would render the same held-out views, and rank 0's eval
  forward would be its alone anyway. Here it runs on rank 0 only; the other ranks wait for it in the next step's
  all-reduce.
- `Trainer.setup` starts a viewer on every machine's local rank 0. Here only the global rank 0 starts one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import comms
from nerfstudio.utils.rich_utils import CONSOLE

from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.state_keys import load_stable_state

_NO_VIEWER = {"viewer": "tensorboard", "viewer_legacy": "tensorboard", "viewer+wandb": "wandb",
              "viewer+tensorboard": "tensorboard", "viewer+comet": "comet"}  # fmt: skip
"""A non-main rank's `vis`: the same loggers without the viewer (loggers write on the main process only anyway)."""


@dataclass
class LRMTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig, building `LRMTrainer`."""

    _target: type = field(default_factory=lambda: LRMTrainer)


class LRMTrainer(Trainer):
    """Trainer whose evaluation and viewer run on the global rank 0 only (see the module docstring)."""

    config: LRMTrainerConfig

    def __init__(self, config: TrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        if not comms.is_main_process() and config.vis in _NO_VIEWER:
            config = replace(config, vis=_NO_VIEWER[config.vis])  # type: ignore[arg-type]
        super().__init__(config, local_rank=local_rank, world_size=world_size)

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
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

    def eval_iteration(self, step: int) -> None:
        if comms.is_main_process():
            super().eval_iteration(step)
