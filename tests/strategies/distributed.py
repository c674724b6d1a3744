"""Running a test function on several CPU processes joined by a gloo process group."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(rank: int, world_size: int, port: int, function: Callable[..., None], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        function(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn(function: Callable[..., None], world_size: int = 2, *args: Any) -> None:
    """Run ``function(rank, world_size, *args)`` on ``world_size`` new processes; an exception in any fails the call.

    ``function`` must be defined at the top level of an importable module (the processes import it).
    """
    mp.spawn(_run, args=(world_size, free_port(), function, args), nprocs=world_size, join=True)
