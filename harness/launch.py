"""``python -m harness.launch [--supernodes N] [key=value ...]``: the experiment as a real
``flwr run`` on a simulation SuperLink of its own, its progress streamed, then the results
table; every process it started is stopped.

The harness it stands on, one concern a module: ``processes.py`` (starting and stopping by
pid), ``flower_env.py`` (environment, config, the ``flwr`` command), ``superlink.py``
(simulation SuperLinks and runs), ``deployment.py`` (a real SuperLink and SuperNodes).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from app.results import check_run_directory, output_directory
from sltestbed.experiment import ExperimentConfig

from .flower_env import flower_env
from .processes import Interrupted, MemoryWatch, interrupts_raise
from .superlink import RunResult, simulation_superlink, thread_plan

LAUNCH_RECORD = "launch.json"  # in the run directory: the flwr run's wall time and its processes' peak memory

# pytest: never collect anything from this module
__test__ = False


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` words to a run config; values are read as JSON where they parse
    (numbers, true/false), as strings otherwise."""
    cfg: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"run-config override {item!r} is not key=value")
        key, val = item.split("=", 1)
        try:
            cfg[key] = json.loads(val)
        except json.JSONDecodeError:
            cfg[key] = val
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.launch [--supernodes N] [key=value ...]``: the experiment as a
    real ``flwr run`` on a simulation SuperLink of its own, then the results table."""
    import argparse

    defaults = ExperimentConfig().to_dict()
    parser = argparse.ArgumentParser(
        description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run-config keys (key=value), with their defaults:\n" + "\n".join(
            f"  {key:22} {value!r}" for key, value in defaults.items()))
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="a GPU share per ClientApp actor (e.g. 0.5: two actors a GPU); with device=auto or cuda")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--ray-address", help="attach the simulation to this Ray cluster (host:port of its head; "
                                              "the cluster's nodes decide the CPUs and GPUs)")
    parser.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    args = parser.parse_intermixed_args(argv)
    app_dir = Path(__file__).resolve().parent.parent
    cfg = parse_overrides(args.overrides)
    here = Path.cwd()
    for key, default in (("output-dir", ExperimentConfig.output_dir), ("cache-dir", ExperimentConfig.cache_dir)):
        cfg[key] = str((here / str(cfg.get(key, default))).resolve())  # relative to where this was typed
    try:  # every key and value, and the run directory, before a SuperLink or Ray starts
        exp = ExperimentConfig.from_run_config(cfg)
        check_run_directory(output_directory(exp), exp, args.supernodes)  # the ServerApp says when it replaces a run
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        plan = thread_plan(args.cpus_per_client)
        federation = plan.federation(args.gpus_per_client, attached=bool(args.ray_address))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = here / ".flwr_runs" / time.strftime("%Y%m%d-%H%M%S")
    print(f"flwr run {app_dir} with {args.supernodes} SuperNodes; overrides {cfg}; {plan.describe()}", flush=True)
    try:
        with interrupts_raise():  # leaving the SuperLink's context stops everything it started, by pid
            result = run_simulation_with_echo(app_dir, work, cfg, args.supernodes, federation, args.timeout,
                                              plan.env(args.ray_address))
    except Interrupted as stop:
        print(f"launch: stopped by {stop}; every process it started is stopped", file=sys.stderr, flush=True)
        return stop.exit_code
    print(f"run {result.run_id}: {result.status} in {result.seconds:.1f} s; peak memory of its processes "
          f"{result.peak_memory_bytes / 2**20:,.0f} MiB (proportional set size, {result.peak_processes} processes)",
          flush=True)
    if not result.ok:
        print(result.status_details or result.stderr[-3000:], file=sys.stderr)
        return 1
    run_dir = Path(output_directory(exp))
    if run_dir.is_dir():  # what only the launcher sees: the whole command's time and memory
        (run_dir / LAUNCH_RECORD).write_text(json.dumps(
            {"supernodes": args.supernodes, "seconds": round(result.seconds, 1),
             "peak_memory_bytes": result.peak_memory_bytes, "peak_processes": result.peak_processes}, indent=2))
    return 0


def run_simulation_with_echo(app_dir, tmp_dir, run_config, num_supernodes, federation_config, timeout,
                             extra_env: dict | None = None) -> RunResult:
    """One `flwr run` on a simulation SuperLink of its own, its lines echoed and its processes'
    memory watched; `extra_env`: what the SuperLink's environment adds (`ThreadPlan.env`: the
    ServerApp's threads, a Ray cluster's address)."""
    env = flower_env(tmp_dir, extra_env) if extra_env else None
    with simulation_superlink(tmp_dir, env) as link, MemoryWatch(link.reaper) as memory:
        result = link.submit(app_dir, run_config, num_supernodes, federation_config, timeout,
                             echo=lambda text: print(text, flush=True))
    result.peak_memory_bytes, result.peak_processes = memory.peak_bytes, memory.peak_processes
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
