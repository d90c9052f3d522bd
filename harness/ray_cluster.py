"""A Ray cluster for Flower's simulation engine: a head node this harness starts (and stops, by
pid), and the environment a SuperLink needs to attach its simulations to it.

    with ray_head(num_cpus=2) as head:                    # ray start --head, its own temp dir and port
        env = flower_env(tmp, {"RAY_ADDRESS": head.address})
        with simulation_superlink(tmp, env) as link:       # flwr-simulation's ray.init() attaches
            link.submit(...)

Flower forwards no address to `ray.init()`: the simulation attaches because `RAY_ADDRESS` is in
the SuperLink's environment (SuperExec and flwr-simulation inherit it). While attached, the
run may not set `init-args-num-cpus` / `-num-gpus` (Ray refuses them); the cluster's nodes
decide the CPUs (`ray start --num-cpus`). The head gets a temp dir of its own, so no other
`ray.init()` on the machine joins it by accident, and is stopped by the pids it started, never
by `ray stop` (which stops every Ray process on the machine). Workers on other hosts join
with `ray start --address <head address>` (see docs/running.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .flower_env import find_venv_bin, free_port
from .processes import HARNESS_TAG_VAR, ProcessReaper

# pytest: never collect anything from this module
__test__ = False


@dataclass
class RayHead:
    address: str  # "127.0.0.1:<port>": RAY_ADDRESS for the SuperLink, --address for joining workers
    temp_dir: Path  # the cluster's sessions and logs (session_latest/logs: every worker's output)
    reaper: ProcessReaper  # the cluster's processes, by the tag in their environment

    def worker_logs(self) -> str:
        """Every worker's output in the current session (actors log their class name there)."""
        logs = self.temp_dir / "session_latest" / "logs"
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("worker-*")) if p.is_file())


def ray_command() -> str:
    return str(find_venv_bin() / "ray")


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, host: str = "127.0.0.1", port: int | None = None,
             temp_dir: str | None = None, timeout: float = 120.0) -> Iterator[RayHead]:
    """`ray start --head` on `host`, with `num_cpus` CPUs, a temp dir of its own (short: Ray's
    socket paths must stay under 108 characters) and a free port outside Ray's worker-port range
    (10002-19999); stopped, with every process it started, on exit."""
    tag = uuid.uuid4().hex
    temp = Path(temp_dir or tempfile.mkdtemp(prefix="ray", dir="/tmp")).resolve()
    port = port or _port_outside_worker_range()
    env = {**os.environ, HARNESS_TAG_VAR: tag}
    env.pop("RAY_ADDRESS", None)
    cmd = [ray_command(), "start", "--head", f"--node-ip-address={host}", f"--port={port}", f"--temp-dir={temp}",
           f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats"]
    reaper = ProcessReaper(tag)
    try:
        proc = reaper.spawn(cmd, env=env, cwd=temp, log_path=temp / "ray-start.log")
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:  # `ray start` returns once the head is up
            time.sleep(0.2)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start --head failed ({proc.returncode}): "
                               f"{(temp / 'ray-start.log').read_text(errors='replace')[-2000:]}")
        yield RayHead(f"{host}:{port}", temp, reaper)
    finally:
        left = reaper.stop()
        if left:
            print(f"ray_head: processes survived SIGTERM+SIGKILL: {left}", file=sys.stderr)


def _port_outside_worker_range() -> int:
    for _ in range(50):
        port = free_port()
        if not 10002 <= port <= 19999:
            return port
    raise RuntimeError("no free port outside Ray's worker-port range 10002-19999")
