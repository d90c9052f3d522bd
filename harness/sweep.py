"""Sweeps: a grid of Flower simulations (bits x quantizer x strategy x seed, or any run-config
key), each a real `flwr run` of the same app as `flwr run .`, one run directory per point.

    python -m harness.sweep harness/sweeps/readme.toml
    python -m harness.sweep --quantizer learned:1,2,4 fp32 --strategy parallel --seed 0 1 \\
        --out runs/mine num-rounds=3

A sweep file (TOML):

    out = "runs/readme"            # where the run directories go (relative to the current directory)
    strategies = ["parallel"]      # every point runs with each strategy...
    seeds = [0, 1]                 # ...and each seed
    supernodes = 2
    [config]                       # run-config keys for every point
    num-rounds = 5
    [[points]]                     # a point: run-config keys; a list expands into one point per value
    quantizer = "learned"
    bits = [1, 2, 3, 4, 8]
    [[points]]
    strategy = "fedavg"            # a point's own strategy replaces the list
    quantizer = "fp32"

Every point is validated before the first run starts. `--jobs K` runs K points at a time, each
worker on a simulation SuperLink of its own (the points are independent seeded runs: their
numbers are the serial ones). A point whose `<out>/<name>/` holds a finished run of the same
config (`config.json` compared key by key, where files go aside) is skipped, so a sweep that was
interrupted finishes only the missing points when run again; a point whose run was killed
mid-way resumes from its last checkpoint (resume = true). A point whose directory holds a
run (or a checkpoint) of another config is never counted as done: the sweep refuses, naming the keys that
differ, or with `--replace-changed` moves that run aside (`<name>.replaced-<time>`) and runs the
point again. `<out>/sweep.json` lists the points and how each went.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sltestbed.experiment import ExperimentConfig

from app.results import config_differences, describe, stored_differences
from sltestbed.checkpoint_files import checkpoint_about

from .flower_env import flower_env
from .launch import parse_overrides
from .processes import Interrupted, interrupts_raise
from .superlink import simulation_superlink, thread_plan

APP_DIR = Path(__file__).resolve().parent.parent


def expand(points: list[dict], strategies: list[str], seeds: list[int], common: dict) -> list[dict]:
    """Run configs of every point: lists expand (cartesian), then x strategies x seeds."""
    configs = []
    for point in points or [{}]:
        keys = list(point)
        values = [v if isinstance(v, list) else [v] for v in point.values()]
        for combo in itertools.product(*values):
            own = dict(zip(keys, combo))
            for strategy in [own.pop("strategy")] if "strategy" in own else strategies:
                for seed in [own["seed"]] if "seed" in own else seeds:
                    configs.append({**common, **own, "strategy": strategy, "seed": seed})
    return configs


def plan(configs: list[dict], out: Path) -> list[tuple[str, dict]]:
    """(name, run config) per point, validated; names are unique. Raises ValueError naming the
    point and the problem before anything runs."""
    named, seen = [], {}
    for i, cfg in enumerate(configs):
        try:
            exp = ExperimentConfig.from_run_config({k: v for k, v in cfg.items() if k not in ("output-dir", "run-name")})
        except ValueError as exc:
            raise ValueError(f"sweep point {i + 1} ({cfg}): {exc}") from None
        name = cfg.get("run-name") or exp.name
        if name in seen:
            raise ValueError(f"sweep points {seen[name] + 1} and {i + 1} both run as {name!r}: give one a run-name")
        seen[name] = i
        named.append((name, {**cfg, "run-name": name, "output-dir": str(out)}))
    return named


def stored_run(out: Path, name: str, cfg: dict, supernodes: int | None = None) -> dict | None:
    """What `<out>/<name>/` holds against the point: None, no finished run (to run, resuming
    from its checkpoint where a killed run of this config left one); {}, a finished run of this
    very config (done); else the keys that differ, stored and requested (a run, or a
    checkpoint, of another config: never counted as done, never resumed)."""
    exp = ExperimentConfig.from_run_config(cfg)
    if not (out / name / "summary.json").is_file():
        about = checkpoint_about(out / name)
        diff = None if about is None else config_differences(about["config"], exp)
        if about is not None and supernodes is not None and len(about["partitions"]) not in (0, supernodes):
            diff["supernodes"] = (len(about["partitions"]), supernodes)
        return diff or None
    return stored_differences(out / name, exp, supernodes)


def point_state(diff: dict | None, directory: Path | None = None) -> str:
    """A point's line in --dry-run, from `stored_run`."""
    if diff is None:
        about = checkpoint_about(directory) if directory is not None else None
        return "to run" if about is None else f"to run (resumes after round {about['round']})"
    return "done" if not diff else f"differs: {describe(diff)}"


def resumed(directory: Path, cfg: dict) -> tuple[dict, int]:
    """The point's run config, with resume = true where its directory holds a checkpoint of a
    killed run (`stored_run` has checked it is this config's), and the checkpoint's round."""
    about = checkpoint_about(directory)
    return ({**cfg, "resume": True}, about["round"]) if about else (cfg, 0)


def stored_runs(named: list[tuple[str, dict]], out: Path, supernodes: int | None = None) -> dict[str, dict | None]:
    """`stored_run` of every point, by name."""
    return {n: stored_run(out, n, c, supernodes) for n, c in named}


def move_aside(directory: Path) -> Path:
    """Keep a run that is to be replaced, as <name>.replaced-<time>."""
    target = directory.with_name(f"{directory.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    directory.rename(target)
    return target


def run_sweep(named: list[tuple[str, dict]], out: Path, supernodes: int = 2, cpus_per_client: float = 1,
              timeout: float = 3600, work_dir: Path | None = None, log=print, jobs: int = 1,
              gpus_per_client: float = 0, ray_address: str | None = None) -> dict[str, str]:
    """Run the points not yet done; return {name: status}. `jobs` points run at once, each
    worker on a simulation SuperLink of its own (the points are independent runs, each with
    its own seed: running them side by side changes no number)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    out.mkdir(parents=True, exist_ok=True)
    diffs = stored_runs(named, out, supernodes)
    changed = {n: d for n, d in diffs.items() if d}
    if changed:
        raise ValueError(f"{len(changed)} point(s) in {out} hold runs of another config: "
                         + "; ".join(f"{n} ({describe(d)})" for n, d in changed.items()))
    todo = [(n, c) for n, c in named if diffs[n] is None]
    plan = thread_plan(cpus_per_client, min(jobs, max(1, len(todo))))  # the cores divided among the runs at once
    federation = plan.federation(gpus_per_client, attached=bool(ray_address))
    status = {n: "done before" for n, _ in named if diffs[n] == {}}
    log(f"sweep: {len(named)} points, {len(status)} already done, {len(todo)} to run"
        f"{f', {jobs} at a time' if jobs > 1 else ''}; results in {out}; per run, {plan.describe()}")
    _write_index(out, named, status)
    if not todo:
        return status
    work = work_dir or Path.cwd() / ".flwr_runs" / ("sweep-" + time.strftime("%Y%m%d-%H%M%S"))
    started = time.perf_counter()
    queue = list(enumerate(todo, 1))
    lock = threading.Lock()
    finished = []
    stopping = threading.Event()  # set on SIGINT / SIGTERM: each worker ends its run and its SuperLink

    ended = [threading.Event() for _ in range(min(jobs, len(todo)))]

    def worker(w: int) -> None:
        try:
            run_points(w)
        finally:
            ended[w].set()

    def run_points(w: int) -> None:
        where = work / f"worker-{w}" if jobs > 1 else work
        with simulation_superlink(where, flower_env(where, plan.env(ray_address))) as link:
            while not stopping.is_set():
                with lock:
                    if not queue:
                        return
                    k, (name, cfg) = queue.pop(0)
                    status[name] = "running"
                t0 = time.perf_counter()
                cfg, after = resumed(out / name, cfg)
                log(f"[{k}/{len(todo)}] {name}" + (f": resumes from its checkpoint after round {after}" if after else ""))
                result = link.submit(APP_DIR, cfg, supernodes, federation, timeout,
                                     echo=_echo(k, len(todo), log), should_stop=stopping.is_set)
                seconds = time.perf_counter() - t0
                with lock:
                    if result.status == "interrupted":
                        status[name] = "interrupted"
                        _write_index(out, named, status)
                        return
                    finished.append(name)
                    if result.ok and (out / name / "summary.json").is_file():
                        summary = json.loads((out / name / "summary.json").read_text())
                        status[name] = "ok"
                        left = (time.perf_counter() - started) / len(finished) * (len(todo) - len(finished))
                        log(f"[{k}/{len(todo)}] {name}: accuracy {summary['accuracy']:.4f} in {seconds:.0f} s "
                            f"({len(finished)} of {len(todo)} done, about {left / 60:.0f} min left)")
                    else:
                        status[name] = f"failed: {result.status} {result.status_details}".strip()
                        log(f"[{k}/{len(todo)}] {name}: {status[name]}\n{result.stderr[-2000:]}")
                    _write_index(out, named, status)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(len(ended))]
    for t in threads:
        t.start()
    # Waits by sleeping, never in Thread.join: a signal handler that raises inside join() can
    # mark a running thread as stopped (CPython 3.11), and the process would then exit under
    # it without its SuperLink being stopped.
    try:
        while not all(e.is_set() for e in ended):
            time.sleep(0.2)
    except BaseException:  # Interrupted (SIGINT / SIGTERM), KeyboardInterrupt: stop every worker's run first
        stopping.set()
        deadline = time.monotonic() + 120
        while not all(e.is_set() for e in ended) and time.monotonic() < deadline:
            time.sleep(0.2)
        with lock:
            for name, state in status.items():
                if state == "running":
                    status[name] = "interrupted"
            _write_index(out, named, status)
        raise
    return status


def _echo(k: int, total: int, log):
    def echo(text: str) -> None:
        for line in text.splitlines():
            if "[sltestbed]" in line:
                log(f"[{k}/{total}]   {line.split('[sltestbed]', 1)[1].strip()}")
    return echo


def _write_index(out: Path, named: list[tuple[str, dict]], status: dict) -> None:
    index = [{"name": n, "status": status.get(n, "to run"), "config": c} for n, c in named]
    (out / "sweep.json").write_text(json.dumps(index, indent=2))


def _absolute(cfg: dict, key: str, default: str, here: Path) -> None:
    cfg[key] = str((here / str(cfg.get(key, default))).resolve())


def from_file(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except FileNotFoundError:
        raise SystemExit(f"sweep file {path!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"sweep file {path!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(spec) - {"out", "strategies", "seeds", "supernodes", "config", "points"})
    if unknown:
        raise SystemExit(f"sweep file {path!r}: unknown key(s) {unknown}; "
                         "known: out, strategies, seeds, supernodes, config, points")
    return spec


def quantizer_points(items: list[str], bits: list[int] | None) -> list[dict]:
    """'learned:1,2,4' / 'fp32' words (bits after the colon, else --bits) to sweep points."""
    points = []
    for item in items:
        name, _, widths = item.partition(":")
        point: dict[str, Any] = {"quantizer": name}
        if widths:
            point["bits"] = [w if w == "auto" else int(w) for w in widths.split(",")]
        elif bits:
            point["bits"] = bits
        points.append(point)
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a grid of Flower simulations (see the module doc).")
    parser.add_argument("file", nargs="?", help="a sweep file (TOML); flags below add to / replace its settings")
    parser.add_argument("--quantizer", nargs="+", help="quantizers, each optionally with bits: learned:1,2,4 fp32")
    parser.add_argument("--bits", nargs="+", type=int, help="bits for quantizers given without any")
    parser.add_argument("--strategy", nargs="+", help="strategies (default: the file's, else parallel)")
    parser.add_argument("--seed", nargs="+", type=int, help="seeds (default: the file's, else 0)")
    parser.add_argument("--out", help="directory for the run directories (default: the file's, else runs/sweep)")
    parser.add_argument("--supernodes", type=int, help="SuperNodes per run (default: the file's, else 2)")
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--gpus-per-client", type=float, default=0.0, help="a GPU share per ClientApp actor")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--jobs", type=int, default=1, help="points run at once, each on a SuperLink of its own")
    parser.add_argument("--ray-address", help="attach every run to this Ray cluster (host:port of its head)")
    parser.add_argument("--dry-run", action="store_true", help="list the points and whether each is done")
    parser.add_argument("--replace-changed", action="store_true",
                        help="points whose directory holds a run of another config: move it aside and run again "
                             "(without this flag the sweep refuses)")
    parser.add_argument("overrides", nargs="*", help="run-config key=value pairs for every point")
    args = parser.parse_intermixed_args(argv)
    if args.file and "=" in args.file and not os.path.exists(args.file):  # no file: the first override
        args.overrides.insert(0, args.file)
        args.file = None
    spec = from_file(args.file) if args.file else {}
    points = quantizer_points(args.quantizer, args.bits) if args.quantizer else spec.get("points", [])
    here = Path.cwd()
    common = {**spec.get("config", {}), **parse_overrides(args.overrides)}
    _absolute(common, "cache-dir", ExperimentConfig.cache_dir, here)
    out = (here / (args.out or spec.get("out", "runs/sweep"))).resolve()
    configs = expand(points, args.strategy or spec.get("strategies", ["parallel"]),
                     args.seed if args.seed is not None else spec.get("seeds", [0]), common)
    try:
        named = plan(configs, out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    supernodes = args.supernodes or spec.get("supernodes", 2)
    diffs = stored_runs(named, out, supernodes)
    if args.dry_run:
        for name, _ in named:
            print(f"{point_state(diffs[name], out / name):7s} {name}")
        return 0
    changed = {n: d for n, d in diffs.items() if d}
    if changed and not args.replace_changed:
        for name, diff in changed.items():
            print(f"error: {out / name} holds a run of another config ({describe(diff)})", file=sys.stderr)
        print(f"error: {len(changed)} point(s) would replace other configs' runs: use another --out, or "
              "--replace-changed to move those runs aside (as <name>.replaced-<time>) and run the points again",
              file=sys.stderr)
        return 2
    for name in changed:
        print(f"{name}: its run of another config moved to {move_aside(out / name)}", flush=True)
    if args.jobs < 1:
        print(f"error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    try:
        with interrupts_raise():
            status = run_sweep(named, out, supernodes, args.cpus_per_client, args.timeout, log=lambda m: print(m, flush=True),
                               jobs=args.jobs, gpus_per_client=args.gpus_per_client, ray_address=args.ray_address)
    except Interrupted as stop:
        print(f"sweep: stopped by {stop}; every process it started is stopped; the interrupted point is marked "
              f"so in {out / 'sweep.json'} and runs again next time", file=sys.stderr, flush=True)
        return stop.exit_code
    failed = {n: s for n, s in status.items() if s.startswith("failed")}
    print(f"sweep: {len(status) - len(failed)} of {len(named)} points done; results in {out}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
