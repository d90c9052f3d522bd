"""What a split step costs on each of Flower's engines, side by side in one command:

    python -m harness.latency_bench [--supernodes 2] [--paths in-process,simulation,deployment] [key=value ...]

The same run config (default: the tiny preset, one round, a small training share) runs
in-process (the strategies over the in-process transport: no Flower), through `flwr run` on a
simulation SuperLink, and on a loopback deployment (a real SuperLink and SuperNodes on
127.0.0.1), one after another. Each run ends with the round-trip benchmark
(`benchmark-roundtrips`): the median seconds of a training step, and of a bare round trip of
the same message sizes with no model. Printed per path: seconds per step, per bare round trip,
per round (its wall time: training and evaluation) and milliseconds per training sample, and
each figure's ratio to the in-process run. Whole seconds of start-up (SuperLink, Ray, the
first ClientApp) are outside every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from app.in_process import run_in_process

from .deployment import deployment
from .launch import parse_overrides
from .superlink import simulation_superlink

APP = Path(__file__).resolve().parent.parent
PATHS = ("in-process", "simulation", "deployment")
DEFAULTS = {"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.9, "public-fraction": 0.05,
            "benchmark-roundtrips": 10, "checkpoint": False}


def _figures(summary: dict, metrics: list[dict], train_samples: int) -> dict:
    bench = summary["roundtrip_benchmark"]
    round_seconds = sum(float(m["seconds"]) for m in metrics) / len(metrics)
    return {"step_s": bench["step_median_s"], "roundtrip_s": bench["bare_roundtrip_median_s"],
            "round_s": round_seconds, "sample_ms": 1e3 * round_seconds / train_samples,
            "roundtrips_per_round": sum(int(m["round_trips"]) for m in metrics) / len(metrics)}


def _read(directory: Path) -> dict:
    import csv

    summary = json.loads((directory / "summary.json").read_text())
    with open(directory / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    clients = json.loads((directory / "config.json").read_text())["clients"]
    return _figures(summary, metrics, sum(int(c["train_size"]) for c in clients))


def in_process(run_config: dict, supernodes: int) -> dict:
    report, _ = run_in_process(run_config, supernodes)
    metrics = [{"seconds": r.seconds, "round_trips": r.round_trips} for r in report.rounds]
    return _figures({"roundtrip_benchmark": report.roundtrip}, metrics, sum(c.train_size for c in report.clients))


def simulation(run_config: dict, supernodes: int, work: Path) -> dict:
    with simulation_superlink(work / "simulation") as link:
        result = link.submit(APP, run_config, supernodes, {"client-resources-num-cpus": 1}, timeout=3600)
    if not result.ok:
        raise RuntimeError(f"the simulation run failed: {result.status_details or result.stderr[-2000:]}")
    return _read(Path(run_config["output-dir"]) / run_config["run-name"])


def loopback_deployment(run_config: dict, supernodes: int, work: Path) -> dict:
    configs = [{"partition-id": i, "num-partitions": supernodes} for i in range(supernodes)]
    with deployment(APP, work / "deployment", num_supernodes=supernodes, node_configs=configs) as dep:
        result = dep.submit(run_config, timeout=3600)
    if not result.ok:
        raise RuntimeError(f"the deployment run failed: {result.status_details or result.stderr[-2000:]}")
    return _read(Path(run_config["output-dir"]) / run_config["run-name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.latency_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"a comma-separated choice of {', '.join(PATHS)}")
    parser.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    args = parser.parse_intermixed_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if unknown or not paths:
        parser.error(f"--paths: {unknown or 'none'} not among {', '.join(PATHS)}")
    if args.supernodes < 1:
        parser.error(f"--supernodes must be >= 1, got {args.supernodes}")
    from sltestbed.experiment import ExperimentConfig

    config = {**DEFAULTS, **parse_overrides(args.overrides)}
    try:
        ExperimentConfig.from_run_config(config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = {}
    with tempfile.TemporaryDirectory(prefix="sl-latency-") as tmp:
        work = Path(tmp)
        for path in paths:
            run_config = {**config, "output-dir": str(work / "results"), "run-name": path}
            print(f"[{path}] {args.supernodes} clients ...", flush=True)
            started = time.perf_counter()
            if path == "in-process":
                rows[path] = in_process(run_config, args.supernodes)
            elif path == "simulation":
                rows[path] = simulation(run_config, args.supernodes, work)
            else:
                rows[path] = loopback_deployment(run_config, args.supernodes, work)
            print(f"[{path}] done in {time.perf_counter() - started:.0f} s", flush=True)
    print(report(rows, args.supernodes))
    return 0


def report(rows: dict, supernodes: int) -> str:
    base = rows.get("in-process") or next(iter(rows.values()))
    name = "in-process" if "in-process" in rows else next(iter(rows))
    lines = [f"{supernodes} clients; ratios to {name}",
             f"{'path':12} {'step s':>9} {'bare trip s':>12} {'round s':>9} {'trips/round':>12} {'ms/sample':>10} "
             f"{'step x':>8} {'round x':>8} {'sample x':>9}"]
    for path, r in rows.items():
        lines.append(f"{path:12} {r['step_s']:9.4f} {r['roundtrip_s']:12.4f} {r['round_s']:9.2f} "
                     f"{r['roundtrips_per_round']:12.0f} {r['sample_ms']:10.3f} {r['step_s'] / base['step_s']:8.2f} "
                     f"{r['round_s'] / base['round_s']:8.2f} {r['sample_ms'] / base['sample_ms']:9.2f}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
