"""Compute threads: how many a party's torch uses, so that one run's parties together start no
more than the cores they are given. The harness plans the split (`harness.superlink.thread_plan`);
the Flower apps apply it from their environment. Torch-free until a party applies it, so the
harness can plan before anything heavy loads.
"""

from __future__ import annotations

import os

SERVER_THREADS_VAR = "SLTESTBED_SERVER_THREADS"  # the ServerApp's share, set in the SuperLink's environment


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def fit_threads(variable: str) -> int:
    """torch's intra-op threads from the environment variable `variable` (a whole number >= 1:
    Ray's OMP_NUM_THREADS, an actor's CPU share; SERVER_THREADS_VAR, the ServerApp's); left at
    torch's default (every core) where it is unset. Returns the threads in use."""
    import torch

    value = os.environ.get(variable, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{variable} = {value!r}: must be a whole number >= 1")
        torch.set_num_threads(int(value))
    return torch.get_num_threads()
