"""Writing a run's results: config.json, ledger.csv, metrics.csv, summary.json, and the
summary table printed at the end."""

from __future__ import annotations

import csv
import json
import os
import platform
from dataclasses import asdict
from importlib.metadata import version

from sltestbed.checkpoint_files import checkpoint_about
from sltestbed.experiment import LOCATION_KEYS, ExperimentConfig

PACKAGES = ("flwr", "torch", "transformers", "numpy", "constriction", "sltestbed")


def output_directory(cfg: ExperimentConfig) -> str:
    """<output-dir>/<run-name>; a relative output-dir resolves against the directory `flwr run`
    was typed in when Flower passes it on (SLTESTBED_WORKDIR), else the app's working directory."""
    base = cfg.output_dir
    if not os.path.isabs(base):
        base = os.path.join(os.environ.get("SLTESTBED_WORKDIR", os.getcwd()), base)
    return os.path.join(base, cfg.name)


def scalar_writer(cfg: ExperimentConfig, directory: str):
    """With `tensorboard` set, a TensorBoard writer into <run>/tensorboard (`tensorboard
    --logdir <output-dir>` shows every run); else None."""
    if not cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(directory, "tensorboard"))


class RunDirectoryTaken(ValueError):
    """A run directory holds the results of another config."""


def stored_differences(directory, cfg: ExperimentConfig, supernodes: int | None = None) -> dict | None:
    """None where `directory` holds no run's config.json; else what differs between the run
    stored there and `cfg`, key -> (stored, requested) ({} when they agree). Where the files
    go does not count; a key the stored run predates counts only when `cfg` sets it to other
    than its default. `supernodes`: compared with the stored run's clients when given."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    diff = config_differences(stored.get("config", {}), cfg)
    if supernodes is not None and len(stored.get("clients", [])) != supernodes:
        diff["supernodes"] = (len(stored.get("clients", [])), supernodes)
    return diff


def config_differences(stored: dict, cfg: ExperimentConfig) -> dict:
    """What differs between a stored run config (hyphenated keys) and `cfg`, key -> (stored,
    requested); where files go does not count, nor a key the stored run predates that `cfg`
    leaves at its default."""
    old = {k: v for k, v in stored.items() if k not in LOCATION_KEYS}
    new, default = cfg.results_config(), ExperimentConfig().results_config()
    diff = {}
    for key in sorted(set(old) | set(new)):
        if key not in old:
            if new[key] != default[key]:
                diff[key] = ("(not recorded)", new[key])
        elif old[key] != new.get(key, "(unknown key)"):
            diff[key] = (old[key], new.get(key, "(unknown key)"))
    return diff


def describe(diff: dict) -> str:
    return ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in diff.items())


def check_run_directory(directory, cfg: ExperimentConfig, supernodes: int | None = None) -> bool:
    """Before a run starts: True where `directory` holds a run of this same config (its results
    will be replaced by equal ones), False where it holds none; raises `RunDirectoryTaken`,
    naming the keys that differ, where it holds another config's run."""
    diff = stored_differences(directory, cfg, supernodes)
    if diff:
        raise RunDirectoryTaken(f"{directory} holds a run of another config ({describe(diff)}): "
                                "choose another output-dir or run-name, or move that run away")
    about = checkpoint_about(directory)
    unfinished = {} if about is None else config_differences(about["config"], cfg)
    if unfinished:
        raise RunDirectoryTaken(f"{directory} holds the checkpoint of an unfinished run of another config "
                                f"({describe(unfinished)}): choose another output-dir or run-name, or move it away")
    return diff is not None


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except Exception:  # not installed as a distribution
            out[name] = None
    return out


def machine() -> dict:
    """What the README says changes floating-point results: the CPU model, the cores, torch's
    threads in this process; and the code: the git commit the harness ran (SLTESTBED_GIT_COMMIT,
    "-dirty" with uncommitted changes; None where the run was started otherwise)."""
    import torch

    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "git_commit": os.environ.get("SLTESTBED_GIT_COMMIT") or None}


def write_results(directory: str, report, seconds: float) -> dict:
    """Write a `strategies.strategy.RunReport` into `directory`; returns the summary."""
    cfg = report.cfg
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"config": cfg.to_dict(), "seed": cfg.seed, "versions": package_versions(), "machine": machine(),
                   "base_model": report.base_dir, "clients": [asdict(c) for c in report.clients]}, f, indent=2)
    report.ledger.write_csv(os.path.join(directory, "ledger.csv"))
    if report.calibration:
        with open(os.path.join(directory, "calibration.json"), "w") as f:
            json.dump(report.calibration, f)
    with open(os.path.join(directory, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["round", "loss", "accuracy", "bytes_up", "bytes_down", "round_trips", "failures", "seconds"])
        for r in report.rounds:
            writer.writerow([r.round, r.loss, r.accuracy, r.bytes_up, r.bytes_down, r.round_trips, r.failures,
                             round(r.seconds, 3)])
    if report.model is not None:
        report.model.save_pretrained(os.path.join(directory, "model"))
    last = report.rounds[-1]
    summary = {
        "accuracy": last.accuracy, "accuracy_by_type": last.accuracy_by_type,
        "strategy": cfg.strategy, "quantizer": cfg.quantizer, "bits": "auto" if cfg.auto_bits else cfg.act_bits,
        "modality_bits": cfg.widths,
        "grad_quantizer": cfg.grad_quantizer, "grad_bits": cfg.gradient_bits, "labels": cfg.labels,
        "entropy_coding": cfg.entropy_coding, "seed": cfg.seed, "num_rounds": cfg.num_rounds,
        "clients": len(report.clients), "round_trips": report.round_trips, "seconds": seconds,
        "failures": [asdict(f) for f in report.failures],
        "bytes": report.ledger.totals(),
    }
    if report.resumed_after:
        summary["resumed_after_round"] = report.resumed_after  # `seconds`: of the resumed part only
    if report.calibration:
        summary["calibration"] = {m: {"bits": b, **{k: [r[m][k] for r in report.calibration["clients"].values()]
                                                    for k in ("entropy_bits", "needed_bits")}}
                                  for m, b in report.calibration["bits"].items()}
    if report.roundtrip:
        summary["roundtrip_benchmark"] = report.roundtrip
    if report.privacy:
        from sltestbed.privacy import after_training as privacy  # torch: not for the harness's checks

        privacy.write(directory, report.privacy, report.privacy_images, report.observation, report.client_state,
                      report.trained_quantizer)
        summary["privacy"] = privacy.summary(report.privacy)
    with open(os.path.join(directory, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def summary_table(summary: dict, directory: str) -> str:
    lines = [f"results in {directory}",
             f"strategy {summary['strategy']}, activations {summary['quantizer']} {_widths(summary)} bits, "
             f"gradients {summary['grad_quantizer']} {summary['grad_bits']} bits, labels at the {summary['labels']}",
             f"final accuracy {summary['accuracy']:.4f}  "
             + "  ".join(f"{q} {a:.3f}" for q, a in summary["accuracy_by_type"].items()),
             f"{summary['clients']} clients, {summary['num_rounds']} rounds, {summary['round_trips']} round trips, "
             f"{len(summary['failures'])} failures, {summary['seconds']:.1f} s",
             "",
             f"{'direction':9s} {'kind':12s} {'ideal bytes':>14s} {'serialized bytes':>17s}"]
    for direction, kinds in sorted(summary["bytes"].items(), key=lambda kv: kv[0] != "up"):
        for kind, cell in sorted(kinds.items()):
            lines.append(f"{direction:9s} {kind:12s} {cell['ideal']:>14,} {cell['serialized']:>17,}")
    for level, row in summary.get("privacy", {}).items():
        ceiling = (f"; ceiling {row['ceiling_bits_per_image']:.1f} bits per image"
                   if "ceiling_bits_per_image" in row else "")
        lines.append(f"\nattacks ({level}, {row['samples']} training samples; mean image {row['baseline_psnr']:.2f} dB"
                     f"{ceiling}):")
        if row.get("best"):
            lines.append("  leakage, best attack per metric: " + "  ".join(
                f"{k} {v['value']:.3f} ({v['attack']})" for k, v in row["best"].items()))
        for attack, scores in row.items():
            if isinstance(scores, dict) and attack != "best":
                lines.append(f"  {attack:18s} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return "\n".join(lines)


def _widths(summary: dict) -> str:
    widths = summary["modality_bits"]
    label = str(widths["image"]) if len(set(widths.values())) == 1 else ", ".join(f"{m} {b}" for m, b in widths.items())
    return f"{label} (auto)" if summary["bits"] == "auto" else label
