"""Multi-process training on CPU (gloo): nerfstudio's launcher through `ns-train`, and DDP's gradients."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_same_grads, tiny_trainer_config
from nerfstudio.cameras.rays import RayBundle
from torch.nn.parallel import DistributedDataParallel

WORLD_SIZE = 2
TINY_FLAGS = [
    "--pipeline.datamanager.num-workers", "0",
    "--pipeline.datamanager.objects-per-batch", "2",
    "--pipeline.datamanager.target-views-per-object", "2",
    "--pipeline.datamanager.patch-size", "16",
    "--pipeline.datamanager.eval-resolution", "32",
]  # fmt: skip
"""lrm-tiny shrunk so that a few ns-train steps take seconds."""


def test_ns_train_two_cpu_processes(procedural_dataset, tmp_path):
    """`ns-train lrm-tiny --machine.device-type cpu --machine.num-devices 2`: nerfstudio's launcher spawns 2 gloo
    ranks that train on disjoint objects; evaluation (every 2 steps here) and the checkpoint happen on rank 0, and
    the checkpoint of the DDP model loads into a single-process pipeline."""
    out, logs = tmp_path / "outputs", tmp_path / "objects"
    cmd = [
        str(Path(sys.executable).parent / "ns-train"), "lrm-tiny",
        "--data", str(procedural_dataset),
        "--output-dir", str(out),
        "--machine.device-type", "cpu",
        "--machine.num-devices", str(WORLD_SIZE),
        "--max-num-iterations", "4",
        "--steps-per-save", "2",
        "--steps-per-eval-batch", "2",
        "--steps-per-eval-image", "3",
        "--vis", "tensorboard",
        "--pipeline.object-log-dir", str(logs),
        *TINY_FLAGS,
    ]  # fmt: skip
    run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    checkpoint_dirs = list(out.rglob("nerfstudio_models"))
    assert len(checkpoint_dirs) == 1, checkpoint_dirs
    assert [p.name for p in checkpoint_dirs[0].iterdir()] == ["step-000000003.ckpt"]

    steps: dict[int, dict[int, list[str]]] = {}
    for rank in range(WORLD_SIZE):
        for line in (logs / f"objects-rank{rank}.jsonl").read_text().splitlines():
            row = json.loads(line)
            steps.setdefault(row["step"], {})[rank] = row["objects"]
    assert sorted(steps) == [0, 1, 2, 3]
    for step, by_rank in steps.items():
        assert sorted(by_rank) == list(range(WORLD_SIZE)), step
        assert not set(by_rank[0]) & set(by_rank[1]), (step, by_rank)  # each step: different objects per rank
    # the first epoch: the 6 training objects split 3 + 3
    first_epoch = [set(steps[0][r]) | {steps[1][r][0]} for r in range(WORLD_SIZE)]
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 6

    from nerfstudio.utils.eval_utils import eval_setup

    state = torch.load(next(checkpoint_dirs[0].iterdir()), map_location="cpu", weights_only=False)
    assert any(key.startswith("_model.module.") for key in state["pipeline"])  # saved from the DDP wrapper
    _, pipeline, _, step = eval_setup(checkpoint_dirs[0].parent / "config.yml", test_mode="test")
    assert step == 3 and not isinstance(pipeline._model, DistributedDataParallel)
    weights = {key[len("_model.module.") :]: value for key, value in state["pipeline"].items() if "_model." in key}
    for name, value in pipeline.model.state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)


def test_ns_train_two_machines(procedural_dataset, tmp_path):
    """`--machine.num-machines 2 --machine.machine-rank R --machine.dist-url tcp://...` pass through: two ns-train
    launches of one process each (two "machines" on localhost, each with its own output folder) form one gloo
    group. Both processes are local rank 0 on their machine, yet they shard by global rank; only machine 0 saves."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logs = tmp_path / "objects"
    launches = []
    for machine in range(WORLD_SIZE):
        cmd = [
            str(Path(sys.executable).parent / "ns-train"), "lrm-tiny",
            "--data", str(procedural_dataset),
            "--output-dir", str(tmp_path / f"machine{machine}"),
            "--machine.device-type", "cpu",
            "--machine.num-devices", "1",
            "--machine.num-machines", str(WORLD_SIZE),
            "--machine.machine-rank", str(machine),
            "--machine.dist-url", f"tcp://127.0.0.1:{port}",
            "--max-num-iterations", "2",
            "--vis", "tensorboard",
            "--pipeline.object-log-dir", str(logs),
            *TINY_FLAGS,
        ]  # fmt: skip
        launches.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for machine, launch in enumerate(launches):
        output, _ = launch.communicate(timeout=1200)
        assert launch.returncode == 0, f"machine {machine} failed:\n{output[-3000:]}"
    assert len(list((tmp_path / "machine0").rglob("*.ckpt"))) == 1
    assert not list((tmp_path / "machine1").rglob("*.ckpt"))
    objects = [
        [json.loads(line)["objects"] for line in (logs / f"objects-rank{r}.jsonl").read_text().splitlines()]
        for r in range(WORLD_SIZE)
    ]
    assert len(objects[0]) == len(objects[1]) == 2
    for step in range(2):
        assert not set(objects[0][step]) & set(objects[1][step]), objects


def no_jitter(pipeline) -> None:
    """Deterministic samples, so that a ray renders the same whichever process and batch it is in."""
    pipeline.model.sampler_uniform.train_stratified = False
    pipeline.model.sampler_pdf.train_stratified = False


def split_by_object(ray_bundle: RayBundle, batch: dict[str, Any]) -> list[tuple[RayBundle, dict[str, Any]]]:
    """One (ray bundle, batch) per object of a training batch, its object index renumbered to 0."""
    n_obj = batch["source_images"].shape[0]
    per = len(ray_bundle) // n_obj
    parts = []
    for b in range(n_obj):
        rays = slice(b * per, (b + 1) * per)
        part = ray_bundle[rays]
        part.metadata = {key: value[rays] for key, value in ray_bundle.metadata.items()}
        part.metadata["object_index"] = part.metadata["object_index"] - b
        part.camera_indices = part.camera_indices - b
        half = {
            "image": batch["image"][rays],
            "alpha": batch["alpha"][rays],
            "source_images": batch["source_images"][b : b + 1],
            "source_cameras": batch["source_cameras"][b : b + 1],
            "patch_hw": batch["patch_hw"],
            "object_ids": batch["object_ids"][b : b + 1],
        }
        parts.append((part, half))
    return parts


def loss_and_grads(pipeline, ray_bundle, batch) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Losses of one forward through `pipeline._model` (DDP when distributed) and the gradients of their sum."""
    pipeline.model.zero_grad(set_to_none=True)
    outputs = pipeline._forward_batch(ray_bundle, batch)
    losses = pipeline.model.get_loss_dict(outputs, batch)
    torch.stack(list(losses.values())).sum().backward()
    grads = {name: p.grad.clone() for name, p in pipeline.model.named_parameters() if p.grad is not None}
    return {name: float(value.detach()) for name, value in losses.items()}, grads


def ddp_worker(rank: int, init_file: str, data: str, inputs: str, out_dir: str) -> None:
    """One of WORLD_SIZE gloo processes: its shard of the fixed batch through the pipeline's DDP model."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        pipeline = tiny_trainer_config(Path(data)).pipeline.setup(
            device="cpu", test_mode="val", world_size=WORLD_SIZE, local_rank=rank
        )
        assert isinstance(pipeline._model, DistributedDataParallel)
        saved = torch.load(inputs, weights_only=False)
        pipeline.model.load_state_dict(saved["weights"])
        pipeline.train()
        no_jitter(pipeline)
        ray_bundle, batch = saved["shards"][rank]
        losses, grads = loss_and_grads(pipeline, ray_bundle, batch)

        pipeline.model.zero_grad(set_to_none=True)
        pipeline._deferred_step(ray_bundle, batch)  # bypasses DDP's hooks: averages with average_gradients
        deferred = {name: p.grad.clone() for name, p in pipeline.model.named_parameters() if p.grad is not None}
        torch.save({"losses": losses, "grads": grads, "deferred": deferred}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_gradient_equals_single_process_gradient(procedural_dataset, tmp_path):
    """2 gloo ranks, one object each of a fixed 2-object batch, equal ray counts (so the mean of the per-rank mean
    losses is the full batch's mean loss): the all-reduced gradient is the single-process full-batch gradient, and
    each rank's loss is the single-process loss of its object. Deferred back-propagation averages the same way."""
    torch.manual_seed(0)
    pipeline = tiny_trainer_config(procedural_dataset).pipeline.setup(device="cpu", test_mode="val")
    pipeline.train()
    no_jitter(pipeline)
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    assert len(batch["object_ids"]) == WORLD_SIZE
    shards = split_by_object(ray_bundle, batch)
    full_losses, full_grads = loss_and_grads(pipeline, ray_bundle, batch)
    shard_losses = [loss_and_grads(pipeline, *shard)[0] for shard in shards]
    inputs = tmp_path / "inputs.pt"
    torch.save({"weights": pipeline.model.state_dict(), "shards": shards}, inputs)

    mp.spawn(
        ddp_worker,
        args=(str(tmp_path / "init"), str(procedural_dataset), str(inputs), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    for rank, result in enumerate(results):
        assert result["losses"].keys() == full_losses.keys()
        for name, value in result["losses"].items():
            assert abs(value - shard_losses[rank][name]) <= 1e-6 * max(1.0, abs(value)), (rank, name)
        assert_same_grads(result["grads"], full_grads)
        assert_same_grads(result["deferred"], full_grads)
    for name, value in full_losses.items():  # equal shards: the mean of per-rank means is the global mean
        mean = sum(losses[name] for losses in shard_losses) / WORLD_SIZE
        assert abs(mean - value) <= 1e-6 * max(1.0, abs(value)), name
