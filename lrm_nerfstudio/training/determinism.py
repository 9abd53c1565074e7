"""Reproducible randomness of a training step.

The data side draws from generators seeded by (seed, step, rank). The renderer's stratified samplers draw from
torch's global RNG, so the pipeline re-seeds that too in every step, once the batch is fetched (building a DataLoader
iterator draws from it): a step's loss then depends only on the weights, the sampler position and (seed, step, rank),
which is what makes a resumed run repeat an uninterrupted one, and lets deferred back-propagation replay a chunk's
samples exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions, unlike hash())."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_torch_for_step(seed: int, step: int, rank: int) -> None:
    """Seed torch's global RNG (CPU and CUDA) from (seed, step, rank)."""
    torch.manual_seed(step_seed(seed, step, rank))


@contextmanager
def replayable_rng(seed: int, device: torch.device | str) -> Iterator[None]:
    """Run a block with torch's RNG seeded by `seed`, restoring the outer RNG state afterwards.

    Two blocks entered with the same seed draw the same random numbers (e.g. the samplers' stratified jitter), so
    a chunk rendered without a graph can be re-rendered with one on exactly the same samples.
    """
    device = torch.device(device)
    if device.type == "cuda":
        fork = torch.random.fork_rng(devices=[device], device_type="cuda")
    else:
        fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        yield
