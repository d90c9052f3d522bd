"""Run directories as the simulations leave them, read back for analysis.

A run directory holds `config.json`, `summary.json`, `ledger.csv` (one row per payload that
crossed the link), `metrics.csv` (one row per round) and, for bits="auto", `calibration.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REQUIRED = ("config.json", "summary.json", "ledger.csv", "metrics.csv")
# strategies whose clients take turns (one at a time); in the others the clients of an
# exchange send at the same time
TURN_TAKING = ("sequential", "splitfed-v2")
QUANTIZER_ORDER = ("learned", "fsq", "uniform", "nf", "topk", "bf16", "fp16", "fp32")


@dataclass
class Run:
    directory: Path
    config: dict  # the run config (hyphenated keys)
    summary: dict
    ledger: pd.DataFrame
    metrics: pd.DataFrame
    clients: list[dict]
    calibration: dict | None

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def strategy(self) -> str:
        return self.summary["strategy"]

    @property
    def quantizer(self) -> str:
        return self.summary["quantizer"]

    @property
    def bits(self):
        """An int, or "auto"."""
        return self.summary["bits"]

    @property
    def entropy_coding(self) -> bool:
        return bool(self.summary["entropy_coding"])

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])

    @property
    def group(self) -> tuple:
        """What the seeds of one setting share: (strategy, quantizer, bits, entropy coding)."""
        return (self.strategy, self.quantizer, self.bits, self.entropy_coding)

    @property
    def epochs(self) -> int:
        return int(self.config["num-rounds"]) * int(self.config["local-epochs"])

    @property
    def train_samples(self) -> int:
        return sum(int(c["train_size"]) for c in self.clients)

    def messages(self) -> pd.DataFrame:
        """One row per message: (round, step, client, direction, message_type, message_bytes).
        A message's payload rows share its sequence number (`message`) and size; a ledger from
        before that column existed is grouped by the other fields."""
        keys = ["round", "step", "client", "direction", "message_type"]
        if "message" in self.ledger:
            keys = ["message"] + keys
        return self.ledger.groupby(keys, as_index=False, sort=False)["message_bytes"].first()


def is_run(directory: Path) -> bool:
    return all((directory / name).is_file() for name in REQUIRED)


def find_runs(roots: list[str | Path]) -> list[Path]:
    """Every run directory at or below the given paths, sorted. A missing path, or one with no
    finished run below it, raises ValueError naming it."""
    found = []
    for root in map(Path, roots):
        if not root.exists():
            raise ValueError(f"no such directory: {root}")
        here = [root] if is_run(root) else sorted(p.parent for p in root.rglob("summary.json") if is_run(p.parent))
        if not here:
            raise ValueError(f"no finished runs under {root} (a run directory holds {', '.join(REQUIRED)})")
        found.extend(here)
    return sorted(set(found))


def load_run(directory: str | Path) -> Run:
    directory = Path(directory)
    missing = [n for n in REQUIRED if not (directory / n).is_file()]
    if missing:
        raise ValueError(f"{directory} is not a finished run: it lacks {', '.join(missing)}")
    config = json.loads((directory / "config.json").read_text())
    summary = json.loads((directory / "summary.json").read_text())
    ledger = pd.read_csv(directory / "ledger.csv", keep_default_na=False)
    if ledger.empty:
        raise ValueError(f"{directory}/ledger.csv has no rows")
    metrics = pd.read_csv(directory / "metrics.csv")
    calibration = directory / "calibration.json"
    return Run(directory, config["config"], summary, ledger, metrics, config.get("clients", []),
               json.loads(calibration.read_text()) if calibration.is_file() else None)


def load_runs(roots: list[str | Path]) -> list[Run]:
    return [load_run(d) for d in find_runs(roots)]


def group_sort_key(group: tuple) -> tuple:
    strategy, quantizer, bits, entropy = group
    q = QUANTIZER_ORDER.index(quantizer) if quantizer in QUANTIZER_ORDER else len(QUANTIZER_ORDER)
    return (strategy == "fedavg", strategy, q, bits == "auto", bits if bits != "auto" else 0, entropy)
