"""Resuming (`ns-train ... --load-dir .../nerfstudio_models`) repeats the uninterrupted run: model, optimiser,
scheduler, data-sampler position and per-step randomness all come back."""

from pathlib import Path

import torch
from conftest import tiny_trainer_config

N, K = 3, 3  # N steps, save, resume for K more: compared with N + K uninterrupted steps


def train(data: Path, output: Path, steps: int, load_dir: Path | None = None):
    """Trainer of nerfstudio's `ns-train` path (LRMTrainer), in-process; returns (trainer, {step: loss})."""
    config = tiny_trainer_config(
        data,
        output_dir=output,
        max_num_iterations=steps,
        load_dir=load_dir,
        vis="tensorboard",
        steps_per_save=1000,
        steps_per_eval_batch=2,  # evaluation in the first part must not disturb the second
        steps_per_eval_image=1000,
        steps_per_eval_all_images=1000,
    )
    config.pipeline.datamanager.background = "random"  # per-step colours from the sampler's seeding
    config.pipeline.progressive = ((0, 16, 32, 64, 12, 12), (N + 1, 8, 16, 32, 8, 6))  # a boundary after resuming
    config.set_timestamp()
    torch.manual_seed(config.machine.seed)  # ns-train seeds the weights' initialisation the same way
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    losses: dict[int, float] = {}
    train_iteration = trainer.train_iteration

    def recording_train_iteration(step: int):  # the trainer's own step, its loss noted
        loss, loss_dict, metrics_dict = train_iteration(step)
        losses[step] = float(loss.detach())
        return loss, loss_dict, metrics_dict

    trainer.train_iteration = recording_train_iteration
    trainer.train()
    return trainer, losses


def test_resume_repeats_the_uninterrupted_run(procedural_dataset, tmp_path):
    whole, whole_losses = train(procedural_dataset, tmp_path / "whole", N + K)
    first, first_losses = train(procedural_dataset, tmp_path / "first", N)
    assert sorted(first_losses) == list(range(N))
    checkpoints = first.checkpoint_dir
    assert [p.name for p in checkpoints.iterdir()] == [f"step-{N - 1:09d}.ckpt"]
    resumed, resumed_losses = train(procedural_dataset, tmp_path / "resumed", K, load_dir=checkpoints)

    assert sorted(resumed_losses) == list(range(N, N + K))  # nerfstudio's _start_step: the step after the checkpoint
    for step in range(N + K):
        got = first_losses[step] if step < N else resumed_losses[step]
        assert abs(got - whole_losses[step]) <= 1e-6 * abs(whole_losses[step]), (step, got, whole_losses[step])
    assert len(set(whole_losses.values())) == N + K  # the steps differ: the comparison is not vacuous

    got, want = resumed.pipeline.state_dict(), whole.pipeline.state_dict()
    assert got.keys() == want.keys()
    for name, value in want.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7, msg=name)
    assert got["datamanager._extra_state"] == want["datamanager._extra_state"]
    for group, optimizer in whole.optimizers.optimizers.items():
        resumed_optimizer = resumed.optimizers.optimizers[group]
        assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"], group
        assert resumed.optimizers.schedulers[group].last_epoch == whole.optimizers.schedulers[group].last_epoch
        for p_got, p_want in zip(resumed_optimizer.param_groups[0]["params"], optimizer.param_groups[0]["params"]):
            state_got, state_want = resumed_optimizer.state[p_got], optimizer.state[p_want]
            assert state_got.keys() == state_want.keys()  # empty for a parameter that never had a gradient
            for key in state_want:
                torch.testing.assert_close(state_got[key], state_want[key], rtol=1e-6, atol=1e-9)
