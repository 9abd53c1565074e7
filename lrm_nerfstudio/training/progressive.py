"""Progressive resolution: cheap, low-resolution supervision first, full resolution later (Hong et al. 2023, §4.1
trains on random-resolution patches; coarse-to-fine schedules are the usual way to spend fewer early steps).

A schedule is a list of stages `(start_step, patch_size, min_render_res, max_render_res, num_coarse, num_importance)`.
The stage in force at a step is the last one whose start is <= that step, so the settings are a function of the step
only: a resumed run picks up the same stage as an uninterrupted one. Before the first stage the method's own
datamanager and model settings apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

ProgressiveSpec = tuple[int, int, int, int, int, int]
"""(start_step, patch_size, min_render_res, max_render_res, num_coarse_samples, num_importance_samples)."""


class ProgressiveStage(NamedTuple):
    """Training-ray settings from `start_step` on."""

    start_step: int
    patch_size: int
    min_render_res: int
    max_render_res: int
    num_coarse_samples: int
    num_importance_samples: int

    @property
    def render_resolution_range(self) -> tuple[int, int]:
        return (self.min_render_res, self.max_render_res)


def parse_schedule(spec: Sequence[Sequence[int]]) -> list[ProgressiveStage]:
    """Checked stages from the config's tuples.

    Raises:
        ValueError: a stage does not have 6 integers, the start steps do not increase, or a stage breaks
            `1 <= patch_size <= min_render_res <= max_render_res` or has fewer than 1 sample of either kind.
    """
    stages = []
    for i, row in enumerate(spec):
        if len(row) != 6:
            raise ValueError(
                f"pipeline.progressive stage {i}: {tuple(row)} must be (start_step, patch_size, min_render_res, "
                "max_render_res, num_coarse_samples, num_importance_samples)"
            )
        stage = ProgressiveStage(*(int(v) for v in row))
        if not 1 <= stage.patch_size <= stage.min_render_res <= stage.max_render_res:
            raise ValueError(
                f"pipeline.progressive stage {i}: {tuple(row)} needs 1 <= patch_size <= min_render_res <= "
                "max_render_res"
            )
        if stage.num_coarse_samples < 1 or stage.num_importance_samples < 1 or stage.start_step < 0:
            raise ValueError(
                f"pipeline.progressive stage {i}: {tuple(row)} needs start_step >= 0, num_coarse_samples >= 1 and "
                "num_importance_samples >= 1"
            )
        if stages and stage.start_step <= stages[-1].start_step:
            raise ValueError(f"pipeline.progressive: start steps must increase, got {[tuple(s) for s in spec]}")
        stages.append(stage)
    return stages


def stage_at(stages: Sequence[ProgressiveStage], step: int) -> ProgressiveStage | None:
    """The stage in force at `step` (None before the first stage or without a schedule)."""
    current = None
    for stage in stages:
        if stage.start_step > step:
            break
        current = stage
    return current
