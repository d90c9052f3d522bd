"""Run directories as the simulations leave them, read back for analysis.

A run directory holds `config.json`, `summary.json`, `ledger.csv` (one row per payload that
crossed the link), `metrics.csv` (one row per round) and, for bits="auto", `calibration.json`.
A run writes `summary.json` last: a directory without it is an unfinished run and is passed
over; one with it but without another of the files, or with a file that lacks what the
analysis reads, is an error naming the directory and the file.

A run's *settings* are its config less the keys a comparison with fp32 varies (the
quantizer, its bits, entropy coding: `COMPRESSION_KEYS`), the strategy and the seed (kept
apart) and the keys that only say where and how a run was written (`BOOKKEEPING_KEYS`). Runs
are grouped, and paired with fp32, only within the same settings; `Run.settings` names the
keys in which a set of runs differs (empty when they all share them).
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
COMPRESSION_KEYS = ("quantizer", "bits", "image-bits", "text-bits", "entropy-coding", "auto-batches",
                    "auto-max-rel-mse")
BOOKKEEPING_KEYS = ("strategy", "seed", "output-dir", "run-name", "cache-dir", "save-model",
                    "benchmark-roundtrips", "step-timeout")
# what the analysis reads from each file
SUMMARY_KEYS = ("accuracy", "strategy", "quantizer", "bits", "entropy_coding", "seed")
CONFIG_KEYS = ("num-rounds", "local-epochs", "dataset")
LEDGER_COLUMNS = ("round", "step", "client", "direction", "kind", "elements", "bits", "ideal_bytes",
                  "serialized_bytes", "message_bytes", "message_type")
METRICS_COLUMNS = ("round", "accuracy")


@dataclass
class Run:
    directory: Path
    config: dict  # the run config (hyphenated keys)
    summary: dict
    ledger: pd.DataFrame
    metrics: pd.DataFrame
    clients: list[dict]
    calibration: dict | None
    settings: str = ""  # the settings in which it differs from the other runs analysed with it

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
        """What the seeds of one setting share: (strategy, quantizer, bits, entropy coding, settings)."""
        return (self.strategy, self.quantizer, self.bits, self.entropy_coding, self.settings)

    def settings_of(self) -> dict:
        """The config less the compression, strategy, seed and bookkeeping keys (module doc)."""
        return {k: v for k, v in self.config.items() if k not in COMPRESSION_KEYS + BOOKKEEPING_KEYS}

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


def _missing(directory: Path) -> list[str]:
    return [n for n in REQUIRED if not (directory / n).is_file()]


def find_runs(roots: list[str | Path]) -> list[Path]:
    """Every run directory at or below the given paths, sorted. A missing path, one with no
    finished run below it, or a directory with a summary.json but not every other file,
    raises ValueError naming it."""
    found = []
    for root in map(Path, roots):
        if not root.exists():
            raise ValueError(f"no such directory: {root}")
        if not root.is_dir():
            raise ValueError(f"not a directory: {root}")
        here = sorted(p.parent for p in root.rglob("summary.json"))
        for directory in here:
            missing = _missing(directory)
            if missing:
                raise ValueError(f"{directory} is not a complete run: it has summary.json but lacks "
                                 f"{', '.join(missing)}")
        if not here:
            raise ValueError(f"no finished runs under {root} (a run directory holds {', '.join(REQUIRED)})")
        found.extend(here)
    return sorted(set(found))


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _csv(path: Path, columns: tuple, **kwargs) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, **kwargs)
    except (ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise ValueError(f"{path} cannot be read as CSV: {exc}") from None
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        raise ValueError(f"{path} lacks the column(s) {', '.join(lacking)}")
    return frame


def load_run(directory: str | Path) -> Run:
    """One run directory read back. Raises ValueError naming the directory and the file when a
    file is missing, unreadable, or lacks what the analysis reads."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"no such directory: {directory}")
    missing = _missing(directory)
    if missing:
        raise ValueError(f"{directory} is not a finished run: it lacks {', '.join(missing)}")
    config = _json(directory / "config.json")
    summary = _json(directory / "summary.json")
    if not isinstance(config.get("config"), dict):
        raise ValueError(f"{directory / 'config.json'} lacks the run config (key 'config')")
    for keys, held, path in ((CONFIG_KEYS, config["config"], "config.json"), (SUMMARY_KEYS, summary, "summary.json")):
        lacking = [k for k in keys if k not in held]
        if lacking:
            raise ValueError(f"{directory / path} lacks {', '.join(repr(k) for k in lacking)}")
    clients = config.get("clients", [])
    if not clients or any(not isinstance(c, dict) or "train_size" not in c for c in clients):
        raise ValueError(f"{directory / 'config.json'} lacks the clients and their train_size")
    if sum(int(c["train_size"]) for c in clients) <= 0 or int(config["config"]["num-rounds"]) * int(
            config["config"]["local-epochs"]) <= 0:
        raise ValueError(f"{directory / 'config.json'}: no training samples or no epochs to divide by")
    ledger = _csv(directory / "ledger.csv", LEDGER_COLUMNS, keep_default_na=False)
    if ledger.empty:
        raise ValueError(f"{directory / 'ledger.csv'} has no rows")
    bad = sorted(set(ledger.direction) - {"up", "down"})
    if bad:
        raise ValueError(f"{directory / 'ledger.csv'}: direction must be up or down, found {', '.join(map(str, bad))}")
    metrics = _csv(directory / "metrics.csv", METRICS_COLUMNS)
    calibration = directory / "calibration.json"
    return Run(directory, config["config"], summary, ledger, metrics, clients,
               _json(calibration) if calibration.is_file() else None)


def label_settings(runs: list[Run]) -> list[Run]:
    """Sets each run's `settings` to the keys (module doc) whose values differ among `runs`,
    as "key=value, ..." (empty when they share every setting). Returns the runs."""
    all_settings = [r.settings_of() for r in runs]
    keys = []
    for s in all_settings:
        keys += [k for k in s if k not in keys]
    varying = [k for k in keys if len({repr(s.get(k)) for s in all_settings}) > 1]
    for run, s in zip(runs, all_settings):
        run.settings = ", ".join(f"{k}={s.get(k)}" for k in varying)
    return runs


def load_runs(roots: list[str | Path]) -> list[Run]:
    return label_settings([load_run(d) for d in find_runs(roots)])


def group_sort_key(group: tuple) -> tuple:
    """Order of a (strategy, quantizer, bits, entropy coding[, settings]) group: split
    strategies before FedAvg, quantizers as QUANTIZER_ORDER, fewer bits first, auto last."""
    strategy, quantizer, bits, entropy = group[:4]
    settings = group[4] if len(group) > 4 else ""
    q = QUANTIZER_ORDER.index(quantizer) if quantizer in QUANTIZER_ORDER else len(QUANTIZER_ORDER)
    return (strategy == "fedavg", strategy, settings, q, bits == "auto", bits if bits != "auto" else 0, entropy)


def check_unique_seeds(runs: list[Run]) -> None:
    """Seeds are the replicates of a setting: two runs of one setting with the same seed (a run
    copied, or a setting's key missing from `settings`) would count twice. Raises ValueError
    naming both."""
    seen: dict = {}
    for run in runs:
        key = (run.group[:2] + (str(run.bits),) + run.group[3:], run.seed)
        if key in seen:
            raise ValueError(f"two runs of one setting with the same seed {run.seed}: {seen[key]} and "
                             f"{run.directory}")
        seen[key] = run.directory
