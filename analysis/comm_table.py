"""The communication table: bytes that crossed the cut per strategy, quantizer and bits.

Per run, from its ledger (every payload that crossed the link, all message kinds):

- `{up,down}_{ideal,serialized,message}_bytes`: totals of the run (training, evaluation and
  set-up). ideal = ceil(elements * bits / 8) per payload; serialized = what each payload adds
  to its message's protobuf encoding (codec header, side information, framing); message =
  the whole serialized messages (payloads, metadata, Flower's envelope).
- `..._per_epoch` = total / epochs (rounds x local epochs); `..._per_sample` = total /
  (epochs x training samples over all clients).
- `act_up_{elements,ideal_bytes,serialized_bytes}`: the activations sent up only; the
  reductions compare these: `reduction_vs_fp16` = 1 - act_up_ideal / act_up_ideal of the fp16
  row of the same strategy (if the set has none: of the same elements at 16 bits),
  `reduction_vs_fp16_serialized` at the serialized level (needs an fp16 row), and the same
  against fp32. `reduction_vs_fedavg` = 1 - (up + down message bytes) / FedAvg's on the same
  task (needs a FedAvg row). `effective_bits` = act_up_ideal_bytes * 8 / act_up_elements.

Rows are settings (strategy, quantizer, bits, entropy coding, and `settings`: the other
config keys in which the analysed runs differ, empty when they share them): figures are means
over the seeds of a setting (`seeds` counts them). Accuracy, over the seeds' final accuracies:

- `accuracy` the mean, `accuracy_ci95_low` / `_high` / `_half_width` its 95% Student t
  interval (mean ± t_{0.975, n-1} s / sqrt(n), s the sample std), `accuracy_std` = s.
- `accuracy_vs_fp32`: the mean PAIRED difference, each seed's run minus the fp32 run of the
  same seed, strategy and settings (only quantizer, bits, entropy coding differ), with
  `accuracy_vs_fp32_ci95_low` / `_high` / `_half_width` the paired t interval over the
  per-seed differences, `accuracy_vs_fp32_pairs` the seeds that have an fp32 twin, and
  `accuracy_vs_fp32_ci95_excludes_zero` True / False (empty where there is no interval).

An interval needs two seeds: with one its bounds are NaN (empty in the CSV, "n/a" in the
shown tables), never 0. See `analysis.stats`. All accuracies are fractions (not percent).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .run_dirs import Run, check_unique_seeds, group_sort_key, label_settings
from .stats import t_interval

DIRECTIONS = ("up", "down")
LEVELS = ("ideal", "serialized", "message")

# the columns the markdown / LaTeX tables show (the CSV has every column); `settings` only
# when the runs differ in one
SHOWN = {
    "strategy": "strategy", "settings": "settings", "quantizer": "quantizer", "bits": "bits",
    "entropy_coding": "entropy coding", "seeds": "seeds",
    "accuracy": "accuracy: mean ± 95% CI",
    "accuracy_vs_fp32": "Δ acc. vs fp32 (paired by seed): mean ± 95% CI",
    "accuracy_vs_fp32_ci95_excludes_zero": "Δ CI excludes 0",
    "effective_bits": "bits / element",
    "act_up_ideal_bytes_per_sample": "act. up B/sample (ideal)",
    "up_ideal_bytes": "up ideal MB", "up_serialized_bytes": "up serialized MB",
    "down_ideal_bytes": "down ideal MB", "down_serialized_bytes": "down serialized MB",
    "reduction_vs_fp16": "act. up saved vs fp16 (ideal)",
    "reduction_vs_fp16_serialized": "act. up saved vs fp16 (serialized)", "reduction_vs_fp32": "act. up saved vs fp32 (ideal)", "reduction_vs_fedavg": "all bytes / FedAvg's",
}
MEGABYTE_COLUMNS = ("up_ideal_bytes", "up_serialized_bytes", "down_ideal_bytes", "down_serialized_bytes")
PERCENT_COLUMNS = ("reduction_vs_fp16", "reduction_vs_fp16_serialized", "reduction_vs_fp32")
CAPTION = ("Bytes across the cut per setting (means over seeds). Accuracy: mean of the seeds' final accuracies "
           "± the half-width of its 95% Student t interval over seeds. Δ acc. vs fp32: mean paired difference "
           "(each seed's run minus the fp32 run of the same seed, strategy and settings), in percentage points, "
           "± the half-width of the 95% t interval over the per-seed differences; n/a: fewer than 2 seeds.")
NOT_AVAILABLE = "n/a"


def run_figures(run: Run) -> dict:
    """The per-run figures of the module doc (before the reductions)."""
    ledger, messages = run.ledger, run.messages()
    out = {"strategy": run.strategy, "quantizer": run.quantizer, "bits": run.bits,
           "entropy_coding": run.entropy_coding, "seed": run.seed, "run": run.name,
           "accuracy": float(run.summary["accuracy"]), "epochs": run.epochs, "train_samples": run.train_samples}
    for d in DIRECTIONS:
        rows = ledger[ledger.direction == d]
        totals = {"ideal": int(rows.ideal_bytes.sum()), "serialized": int(rows.serialized_bytes.sum()),
                  "message": int(messages[messages.direction == d].message_bytes.sum())}
        for level, total in totals.items():
            out[f"{d}_{level}_bytes"] = total
            out[f"{d}_{level}_bytes_per_epoch"] = total / run.epochs
            out[f"{d}_{level}_bytes_per_sample"] = total / (run.epochs * run.train_samples)
    acts = ledger[(ledger.direction == "up") & (ledger.kind == "activations")]
    out["act_up_elements"] = int(acts.elements.sum())
    out["act_up_ideal_bytes"] = int(acts.ideal_bytes.sum())
    out["act_up_serialized_bytes"] = int(acts.serialized_bytes.sum())
    out["act_up_ideal_bytes_per_sample"] = out["act_up_ideal_bytes"] / (run.epochs * run.train_samples)
    out["effective_bits"] = out["act_up_ideal_bytes"] * 8 / out["act_up_elements"] if out["act_up_elements"] else math.nan
    return out


def per_run(runs: list[Run]) -> pd.DataFrame:
    """One row per run (run_figures), with its `settings` label (see `runs`)."""
    label_settings(runs)
    check_unique_seeds(runs)
    return pd.DataFrame([{**run_figures(r), "settings": r.settings} for r in runs])


def paired_deltas(frame: pd.DataFrame) -> pd.DataFrame:
    """`accuracy_vs_fp32`: each run's accuracy minus that of the fp32 run (no entropy coding)
    of the same strategy, settings and seed; NaN where there is none. Seeds change the base
    model and the data split, so this paired difference shows the cost of the bits more
    plainly than the spread of means."""
    frame = frame.copy()
    if "settings" not in frame:
        frame["settings"] = ""
    ref = frame[(frame.quantizer == "fp32") & ~frame.entropy_coding.astype(bool) & (frame.strategy != "fedavg")]
    ref_keys = list(zip(ref.strategy, ref.settings, ref.seed))
    if len(set(ref_keys)) < len(ref_keys):
        raise ValueError("more than one fp32 run with the same strategy, settings and seed: "
                         + ", ".join(map(str, sorted(k for k in set(ref_keys) if ref_keys.count(k) > 1))))
    accuracy_of = dict(zip(ref_keys, ref.accuracy))
    keys = zip(frame.strategy, frame.settings, frame.seed)
    frame["accuracy_vs_fp32"] = [a - accuracy_of[k] if k in accuracy_of else np.nan
                                 for a, k in zip(frame.accuracy, keys)]
    return frame


def comm_table(runs: list[Run]) -> pd.DataFrame:
    """One row per setting, means over its seeds, the intervals and the reductions (module doc)."""
    if not runs:
        raise ValueError("no runs to tabulate")
    frame = paired_deltas(per_run(runs))
    keys = ["strategy", "quantizer", "bits", "entropy_coding", "settings"]
    numeric = [c for c in frame.columns if c not in keys + ["seed", "run"]]
    frame["bits_key"] = frame.bits.astype(str)  # ints and "auto" in one column
    rows = []
    for _, g in frame.groupby(["strategy", "quantizer", "bits_key", "entropy_coding", "settings"], sort=False):
        row = {k: g[k].iloc[0] for k in keys}
        row["seeds"] = len(g)
        row.update({c: float(g[c].mean()) for c in numeric})
        accuracy = t_interval(g.accuracy)
        row.update({"accuracy": accuracy.mean, "accuracy_ci95_low": accuracy.low,
                    "accuracy_ci95_high": accuracy.high, "accuracy_ci95_half_width": accuracy.half_width,
                    "accuracy_std": float(g.accuracy.std(ddof=1)) if len(g) > 1 else math.nan})
        paired = t_interval(g.accuracy_vs_fp32)
        row.update({"accuracy_vs_fp32": paired.mean, "accuracy_vs_fp32_ci95_low": paired.low,
                    "accuracy_vs_fp32_ci95_high": paired.high, "accuracy_vs_fp32_ci95_half_width": paired.half_width,
                    "accuracy_vs_fp32_pairs": paired.n,
                    "accuracy_vs_fp32_ci95_excludes_zero": paired.excludes_zero})
        rows.append(row)
    table = pd.DataFrame(rows)
    table["accuracy_vs_fp32_ci95_excludes_zero"] = table["accuracy_vs_fp32_ci95_excludes_zero"].astype(object)
    table = table.iloc[sorted(range(len(table)), key=lambda i: group_sort_key(tuple(table.loc[i, keys])))]
    table = table.reset_index(drop=True)
    for col in ("reduction_vs_fp16", "reduction_vs_fp16_serialized", "reduction_vs_fp32", "reduction_vs_fedavg"):
        table[col] = math.nan
    for i, row in table.iterrows():
        if row.strategy == "fedavg":
            continue
        same = table[(table.strategy == row.strategy) & (table.settings == row.settings) & ~table.entropy_coding]
        for ref, width in (("fp16", 16), ("fp32", 32)):
            match = same[same.quantizer == ref]
            ideal = match.act_up_ideal_bytes.iloc[0] if len(match) else row.act_up_elements * width / 8
            table.loc[i, f"reduction_vs_{ref}"] = 1 - row.act_up_ideal_bytes / ideal if ideal else math.nan
            if ref == "fp16" and len(match):
                table.loc[i, "reduction_vs_fp16_serialized"] = \
                    1 - row.act_up_serialized_bytes / match.act_up_serialized_bytes.iloc[0]
        fedavg = table[(table.strategy == "fedavg") & (table.settings == row.settings)]
        if len(fedavg):
            ref_bytes = fedavg.up_message_bytes.iloc[0] + fedavg.down_message_bytes.iloc[0]
            table.loc[i, "reduction_vs_fedavg"] = 1 - (row.up_message_bytes + row.down_message_bytes) / ref_bytes
    front = ["strategy", "quantizer", "bits", "entropy_coding", "settings", "seeds", "accuracy", "accuracy_ci95_low",
             "accuracy_ci95_high", "accuracy_ci95_half_width", "accuracy_std", "accuracy_vs_fp32",
             "accuracy_vs_fp32_ci95_low", "accuracy_vs_fp32_ci95_high", "accuracy_vs_fp32_ci95_half_width",
             "accuracy_vs_fp32_pairs", "accuracy_vs_fp32_ci95_excludes_zero", "effective_bits"]
    return table[front + [c for c in table.columns if c not in front]]


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _plus_minus(mean: float, half: float, digits: int, scale: float = 1.0, unit: str = "", sign: str = "") -> str:
    """'0.8190 ± 0.6480', '-3.10 ± 1.27 pt'; the half-width 'n/a' where there is no interval."""
    if _nan(mean):
        return ""
    m = round(scale * mean, digits) + 0.0  # no "-0.00"
    h = NOT_AVAILABLE if _nan(half) else f"{scale * half:.{digits}f}"
    return f"{m:{sign}.{digits}f} ± {h}{unit}"


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The columns the markdown / LaTeX tables show, formatted as text."""
    out = pd.DataFrame()
    for col, title in SHOWN.items():
        if col == "settings" and not (table.get("settings", pd.Series(dtype=str)).astype(str) != "").any():
            continue
        values = table[col]
        if col in MEGABYTE_COLUMNS:
            out[title] = [f"{v / 1e6:,.2f}" for v in values]
        elif col in PERCENT_COLUMNS:
            out[title] = ["" if np.isnan(v) else f"{100 * v:.2f}%" for v in values]
        elif col == "accuracy":
            out[title] = [_plus_minus(v, h, 4) for v, h in zip(values, table.accuracy_ci95_half_width)]
        elif col == "accuracy_vs_fp32":
            out[title] = [_plus_minus(v, h, 2, 100, " pt", "+")
                          for v, h in zip(values, table.accuracy_vs_fp32_ci95_half_width)]
        elif col == "accuracy_vs_fp32_ci95_excludes_zero":
            out[title] = ["" if _nan(m) else NOT_AVAILABLE if _nan(v) else "yes" if v else "no"
                          for v, m in zip(values, table.accuracy_vs_fp32)]
        elif col == "effective_bits":
            out[title] = ["" if np.isnan(v) else f"{v:.2f}" for v in values]
        elif col == "reduction_vs_fedavg":  # split learning can send more than FedAvg: a ratio reads better
            out[title] = ["" if np.isnan(v) else f"{1 - v:.2f}x" for v in values]
        elif col == "act_up_ideal_bytes_per_sample":
            out[title] = [f"{v:,.0f}" for v in values]
        elif col == "entropy_coding":
            out[title] = ["yes" if v else "no" for v in values]
        else:
            out[title] = [str(v) for v in values]
    return out


def write_table(table: pd.DataFrame, out_dir: str | Path, stem: str = "comm_table", caption: str = "",
                show=None) -> list[Path]:
    """`<stem>.csv` (every column, full precision), `.md` and `.tex` (the shown columns, under
    the caption; `show(table)` gives them, `shown` by default)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    table.to_csv(paths[0], index=False)
    text = (show or shown)(table)
    paths[1].write_text((caption + "\n\n" if caption else "") + text.to_markdown(index=False, disable_numparse=True)
                        + "\n")
    latex = text.to_latex(index=False, caption=caption or None, label=f"tab:{stem}", escape=True)
    for plain, tex in (("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("≠", r"$\neq$")):  # for pdflatex too
        latex = latex.replace(plain, tex)
    paths[2].write_text(latex)
    return paths
