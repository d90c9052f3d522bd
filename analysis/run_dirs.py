"""Run directories as the Flower runs leave them, read back for analysis.

A run directory holds `config.json`, `summary.json`, `ledger.csv` (one row per payload that
crossed the link; or `ledger.csv.gz`, as `analysis.archive` keeps it), `metrics.csv` (one row
per round) and, for bits="auto", `calibration.json`.
A run writes `summary.json` last: a directory without it is an unfinished run and is passed
over; one with it but without another of the files, or with a file that lacks what the
analysis reads, is an error naming the directory and the file.

A run's *settings* are its config less the keys a comparison with fp32 varies (the
quantizer, its bits, entropy coding: `COMPRESSION_KEYS`), the strategy and the seed (kept
apart), the keys that only say where and how a run was written (`BOOKKEEPING_KEYS`) and the
keys of the attacks after training (`ATTACK_KEYS`: the attacks ask nothing of the clients, so
a run with them trains, sends and scores as one without). Runs are grouped, and paired with
fp32, only within the same settings; `Run.settings` names the keys in which a set of runs
differs (empty when they all share them). The privacy analysis (`analysis.privacy`) groups
by the attack keys too.

A run whose config set `attack` also holds `privacy.json` (`Run.privacy`, checked here for
what the privacy analysis reads: `PRIVACY_KEYS`, `LEVEL_KEYS`, `BASELINE_KEYS` and per kind of
attack `ATTACK_SCORES`) and `reconstructions.npz` (read by the figures). A run without
privacy.json has `privacy` None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sltestbed.experiment import LOCATION_KEYS, ExperimentConfig

REQUIRED = ("config.json", "summary.json", "ledger.csv", "metrics.csv")
# strategies whose clients take turns (one at a time); in the others the clients of an
# exchange send at the same time
TURN_TAKING = ("sequential", "splitfed-v2")
QUANTIZER_ORDER = ("learned", "fsq", "uniform", "nf", "topk", "bf16", "fp16", "fp32")
COMPRESSION_KEYS = ("quantizer", "bits", "image-bits", "text-bits", "entropy-coding", "auto-batches",
                    "auto-max-rel-mse")
BOOKKEEPING_KEYS = ("strategy", "seed", *LOCATION_KEYS, "save-model", "benchmark-roundtrips", "step-timeout")
# the attacks after training (they change nothing of the training, see the module doc)
ATTACK_KEYS = ("attack", "public-size", "attack-samples", "attack-steps")
# the run-config defaults: a run written before a key existed ran at its default
RUN_DEFAULTS = ExperimentConfig().results_config()
# what the analysis reads from each file
SUMMARY_KEYS = ("accuracy", "strategy", "quantizer", "bits", "entropy_coding", "seed")
CONFIG_KEYS = ("num-rounds", "local-epochs", "dataset")
LEDGER_COLUMNS = ("round", "step", "client", "direction", "kind", "elements", "bits", "ideal_bytes",
                  "serialized_bytes", "message_bytes", "message_type")
METRICS_COLUMNS = ("round", "accuracy")
PRIVACY_FILE = "privacy.json"
RECONSTRUCTIONS_FILE = "reconstructions.npz"
PRIVACY_KEYS = ("attack", "levels")
LEVEL_KEYS = ("quantizer", "widths", "labels", "samples", "baselines", "attacks")
BASELINE_KEYS = ("mse", "psnr", "ssim")  # of the mean-image guess, in baselines["mean_image"]
# the attacks by kind, and the scores each kind must have; an attack of another name is of
# the kind whose first score it has, and left out when it has none
ATTACK_KINDS = {"image": ("best", "nearest-code", "knn-mean", "code-classifier", "learned-inversion", "mlp-decoder",
                          "conv-decoder", "rmle", "unsplit"),
                "text": ("nearest-token", "learned-token"), "labels": ("labels",)}
ATTACK_SCORES = {"image": ("mse", "psnr", "ssim", "baseline"), "text": ("token_accuracy", "baseline_accuracy"),
                 "labels": ("accuracy", "chance", "majority_baseline")}


@dataclass
class Run:
    directory: Path
    config: dict  # the run config (hyphenated keys)
    summary: dict
    ledger: pd.DataFrame
    metrics: pd.DataFrame
    clients: list[dict]
    calibration: dict | None
    privacy: dict | None = None  # privacy.json, for a run with attacks
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
        """The config less the compression, strategy, seed, bookkeeping and attack keys (module
        doc); a key the run predates counts at its default (as the sweep compares configs)."""
        config = {**{k: v for k, v in RUN_DEFAULTS.items() if k not in self.config}, **self.config}
        return {k: v for k, v in config.items() if k not in COMPRESSION_KEYS + BOOKKEEPING_KEYS + ATTACK_KEYS}

    @property
    def reconstructions(self) -> Path | None:
        """reconstructions.npz, where the run has one."""
        path = self.directory / RECONSTRUCTIONS_FILE
        return path if path.is_file() else None

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


def ledger_path(directory: Path) -> Path:
    """ledger.csv, or where only that is kept, ledger.csv.gz."""
    plain = directory / "ledger.csv"
    packed = directory / "ledger.csv.gz"
    return packed if packed.is_file() and not plain.is_file() else plain


def _missing(directory: Path) -> list[str]:
    return [n for n in REQUIRED if not (ledger_path(directory) if n == "ledger.csv" else directory / n).is_file()]


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
    ledger_file = ledger_path(directory)
    ledger = _csv(ledger_file, LEDGER_COLUMNS, keep_default_na=False)
    if ledger.empty:
        raise ValueError(f"{ledger_file} has no rows")
    bad = sorted(set(ledger.direction) - {"up", "down"})
    if bad:
        raise ValueError(f"{ledger_file}: direction must be up or down, found {', '.join(map(str, bad))}")
    metrics = _csv(directory / "metrics.csv", METRICS_COLUMNS)
    calibration = directory / "calibration.json"
    privacy = directory / PRIVACY_FILE
    return Run(directory, config["config"], summary, ledger, metrics, clients,
               _json(calibration) if calibration.is_file() else None,
               privacy=read_privacy(privacy) if privacy.is_file() else None)


def attack_kind(name: str, scores: dict) -> str | None:
    """"image", "text" or "labels" (module doc); None for an attack of no known kind."""
    for kind, names in ATTACK_KINDS.items():
        if name in names:
            return kind
    for kind, keys in ATTACK_SCORES.items():
        if keys[0] in scores:
            return kind
    return None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_privacy(path: Path) -> dict:
    """privacy.json read back; ValueError naming the file and what it lacks (module doc)."""
    report = _json(path)
    lacking = [k for k in PRIVACY_KEYS if k not in report]
    if lacking:
        raise ValueError(f"{path} lacks {', '.join(repr(k) for k in lacking)}")
    if not isinstance(report["levels"], dict) or not report["levels"]:
        raise ValueError(f"{path}: 'levels' must map each knowledge level to its report, found {report['levels']!r}")
    for level, rep in report["levels"].items():
        where = f"{path}, level {level!r}"
        if not isinstance(rep, dict):
            raise ValueError(f"{where} is not a JSON object")
        lacking = [k for k in LEVEL_KEYS if k not in rep]
        if lacking:
            raise ValueError(f"{where} lacks {', '.join(repr(k) for k in lacking)}")
        if not isinstance(rep["widths"], dict):
            raise ValueError(f"{where}: 'widths' must map each modality to its bits")
        mean_image = rep["baselines"].get("mean_image") if isinstance(rep["baselines"], dict) else None
        if not isinstance(mean_image, dict) or any(not _number(mean_image.get(k)) for k in BASELINE_KEYS):
            raise ValueError(f"{where} lacks the mean-image baseline (baselines.mean_image with "
                             f"{', '.join(BASELINE_KEYS)})")
        if not isinstance(rep["attacks"], dict):
            raise ValueError(f"{where}: 'attacks' must map each attack to its scores")
        for name, scores in rep["attacks"].items():
            if not isinstance(scores, dict):
                raise ValueError(f"{where}, attack {name!r} is not a JSON object")
            kind = attack_kind(name, scores)
            if kind is None:
                continue
            lacking = [k for k in ATTACK_SCORES[kind] if k not in scores]
            if kind == "image" and "baseline" in scores and not (
                    isinstance(scores["baseline"], dict) and all(_number(scores["baseline"].get(k))
                                                                 for k in BASELINE_KEYS)):
                lacking.append("baseline (" + ", ".join(BASELINE_KEYS) + ")")
            if lacking:
                raise ValueError(f"{where}, attack {name!r} lacks {', '.join(repr(k) for k in lacking)}")
    return report


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
            other = seen[key]
            why = ""
            differ = [k for k in ATTACK_KEYS if other.config.get(k) != run.config.get(k)]
            if differ:  # the same training attacked twice
                why = (f" (they differ in {', '.join(differ)}: attack keys, which change no training, so "
                       "this is one training counted twice; analyse them apart)")
            raise ValueError(f"two runs of one setting with the same seed {run.seed}: {other.directory} and "
                             f"{run.directory}{why}")
        seen[key] = run
