"""Multi-process training through nerfstudio's own launcher, on CUDA (NCCL) and on CPU (gloo).

nerfstudio 1.1.5 supports `--machine.device-type cpu` with more than one device only on paper:
- `nerfstudio.scripts.train._distributed_worker` asserts `torch.cuda.is_available()` before initialising the gloo
  group, and
- `VanillaPipeline.__init__` wraps the model in `DistributedDataParallel(model, device_ids=[local_rank])`, which
  torch refuses for a CPU module.
`install_cpu_launcher` and `cpu_friendly_ddp` fix both from inside the plugin, leaving the CUDA path as it was.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lrm_nerfstudio.ranks import global_rank, is_distributed  # (they lived here; both used below)

_NERFSTUDIO_WORKER: Callable[..., Any] | None = None


def is_main_process() -> bool:
    return global_rank() == 0


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of `params` across processes, as DDP's hooks would.

    Used where the backward pass does not go through DDP's forward (deferred back-propagation). As under DDP's
    `find_unused_parameters`, a parameter without a gradient on this rank counts as a zero gradient, and one without a
    gradient on every rank keeps none (so that the optimiser skips it, weight decay included). All ranks must pass the
    same parameters in the same order.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(has_grad)
    params = [p for p, n in zip(params, has_grad.tolist()) if n > 0]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


class _CPUFriendlyDDP(DistributedDataParallel):
    """DDP that drops `device_ids` for a CPU module (torch accepts device ids for GPU modules only)."""

    def __init__(self, module: torch.nn.Module, device_ids: list[int] | None = None, **kwargs: Any) -> None:
        if all(p.device.type == "cpu" for p in module.parameters()):
            device_ids = None
        super().__init__(module, device_ids=device_ids, **kwargs)


@contextmanager
def cpu_friendly_ddp() -> Iterator[None]:
    """Within the block, nerfstudio's pipeline module builds DDP wrappers that also work on CPU (gloo)."""
    from nerfstudio.pipelines import base_pipeline

    original = base_pipeline.DDP
    base_pipeline.DDP = _CPUFriendlyDDP  # type: ignore[misc]
    try:
        yield
    finally:
        base_pipeline.DDP = original  # type: ignore[misc]


def install_cpu_launcher() -> None:
    """Let `ns-train ... --machine.device-type cpu --machine.num-devices N` spawn gloo workers.

    Replaces `nerfstudio.scripts.train._distributed_worker` (looked up by `launch()` at call time) with
    `distributed_worker`, which hands CUDA runs to nerfstudio's own worker. A no-op unless nerfstudio's train script is
    loaded, so importing the plugin elsewhere (ns-export, tests) changes nothing.
    """
    global _NERFSTUDIO_WORKER
    train = sys.modules.get("nerfstudio.scripts.train")
    current = getattr(train, "_distributed_worker", None)
    if current is None or current is distributed_worker:
        return
    _NERFSTUDIO_WORKER = current
    train._distributed_worker = distributed_worker  # type: ignore[union-attr]


def distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_devices_per_machine: int,
    machine_rank: int,
    dist_url: str,
    config: Any,
    timeout: timedelta = timedelta(minutes=30),
    device_type: str = "cuda",
) -> Any:
    """nerfstudio's spawned worker, without its CUDA-only assertions on CPU; same arguments."""
    if device_type != "cpu":
        worker = _NERFSTUDIO_WORKER
        if worker is None:
            from nerfstudio.scripts import train

            worker = train._distributed_worker
        if worker is distributed_worker:
            raise RuntimeError("nerfstudio's distributed worker is not available")
        return worker(
            local_rank, main_func, world_size, num_devices_per_machine, machine_rank, dist_url, config, timeout,
            device_type,
        )  # fmt: skip
    from nerfstudio.utils import comms

    # N processes on one machine share its cores; without this each would start a thread per core.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_devices_per_machine))
    rank = machine_rank * num_devices_per_machine + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    for i in range(world_size // num_devices_per_machine):
        group = dist.new_group(list(range(i * num_devices_per_machine, (i + 1) * num_devices_per_machine)))
        if i == machine_rank:
            comms.LOCAL_PROCESS_GROUP = group
    try:
        output = main_func(local_rank, world_size, config, rank)
        comms.synchronize()
    finally:
        dist.destroy_process_group()
    return output
