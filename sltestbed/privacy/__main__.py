"""python -m sltestbed.privacy RUN_DIR [--attack inversion|all] [--attack-steps N] [--out DIR]

Runs the attacks again on a finished run, from what its server kept (observation.pt, written
when the run had `attack` set), with the run's own config, seed and base model; writes
privacy.json and reconstructions.npz (into RUN_DIR, or --out; into RUN_DIR, the privacy
entry of its summary.json is brought up to date too) and prints the headline numbers. With
the run's settings it gives the run's numbers; --attack and --attack-steps change what is run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from types import SimpleNamespace

import torch

from ..base_model import build_model
from ..experiment import ExperimentConfig
from ..model import TinyLlava
from ..splits import vocab_size
from . import after_training as runs


def load_run(directory: str, **overrides):
    """(config, clients, saved observation, base model) of a run directory."""
    for name in ("config.json", "summary.json", runs.OBSERVATION_FILE):
        if not os.path.isfile(os.path.join(directory, name)):
            raise ValueError(f"{directory}: no {name} (a run with attack set writes {runs.OBSERVATION_FILE})")
    with open(os.path.join(directory, "config.json")) as f:
        record = json.load(f)
    with open(os.path.join(directory, "summary.json")) as f:
        summary = json.load(f)
    cfg = ExperimentConfig.from_run_config({**record["config"], **overrides})
    if cfg.auto_bits:  # the widths calibration chose
        cfg = cfg.resolved(summary["modality_bits"])
    clients = [SimpleNamespace(**c) for c in record["clients"]]
    saved = torch.load(os.path.join(directory, runs.OBSERVATION_FILE), weights_only=False)
    base_dir = record.get("base_model")
    if base_dir and not os.path.isdir(base_dir):
        raise ValueError(f"{directory}: its base model {base_dir} is not there any more")
    base = TinyLlava.from_pretrained(base_dir) if base_dir else build_model(cfg, None, vocab_size(cfg))
    return cfg, clients, saved, base


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sltestbed.privacy", description=__doc__.split("\n\n")[1])
    parser.add_argument("run", help="a run directory")
    parser.add_argument("--attack", choices=tuple(runs.ATTACK_SETS), help="what to run (default: the run's)")
    parser.add_argument("--attack-steps", type=int, help="the learned inversion's steps (default: the run's)")
    parser.add_argument("--out", help="directory for privacy.json and reconstructions.npz (default: the run's)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("attack", args.attack), ("attack-steps", args.attack_steps)) if v is not None}
    try:
        cfg, clients, saved, base = load_run(args.run, **overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.attack == "none":
        cfg = ExperimentConfig.from_run_config({**cfg.to_dict(), "attack": "inversion"})
    report, images = runs.attack_run(cfg, saved["observation"], base, saved["client_state"], clients,
                                     log=lambda m: print(m, flush=True),
                                     trained_quantizer=saved.get("trained_quantizer"))
    out = args.out or args.run
    os.makedirs(out, exist_ok=True)
    runs.write(out, report, images)
    headline = runs.summary(report)
    if os.path.abspath(out) == os.path.abspath(args.run):
        path = os.path.join(args.run, "summary.json")
        with open(path) as f:
            summary = json.load(f)
        summary["privacy"] = headline
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(headline, indent=2))
    print(f"wrote {os.path.join(out, runs.PRIVACY_FILE)}, {os.path.join(out, runs.RECONSTRUCTIONS_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
