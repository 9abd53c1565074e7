"""Which process this is in multi-process training (torch.distributed), for any layer to ask.

training/distributed.py holds the rest of the multi-process machinery; these two questions live at the bottom so
that the datamanager can ask them without importing training.
"""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """Whether this process is one of several of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_rank() -> int:
    """Rank of this process among all processes of all machines (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
