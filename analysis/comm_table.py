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

Rows are settings (strategy, quantizer, bits, entropy coding): figures are means over the
seeds of a setting (`seeds` counts them), `accuracy_std` the spread (population std), and
`accuracy_vs_fp32` the mean paired difference to the fp32 run of the same strategy and seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .runs import Run, group_sort_key

DIRECTIONS = ("up", "down")
LEVELS = ("ideal", "serialized", "message")

# the columns the markdown / LaTeX tables show (the CSV has every column)
SHOWN = {
    "strategy": "strategy", "quantizer": "quantizer", "bits": "bits", "entropy_coding": "entropy coding",
    "seeds": "seeds", "accuracy": "accuracy (± std)", "accuracy_vs_fp32": "Δ acc. vs fp32 (same seed)",
    "effective_bits": "bits / element",
    "act_up_ideal_bytes_per_sample": "act. up B/sample (ideal)",
    "up_ideal_bytes": "up ideal MB", "up_serialized_bytes": "up serialized MB",
    "down_ideal_bytes": "down ideal MB", "down_serialized_bytes": "down serialized MB",
    "reduction_vs_fp16": "act. up saved vs fp16 (ideal)",
    "reduction_vs_fp16_serialized": "act. up saved vs fp16 (serialized)", "reduction_vs_fp32": "act. up saved vs fp32 (ideal)", "reduction_vs_fedavg": "all bytes / FedAvg's",
}
MEGABYTE_COLUMNS = ("up_ideal_bytes", "up_serialized_bytes", "down_ideal_bytes", "down_serialized_bytes")
PERCENT_COLUMNS = ("reduction_vs_fp16", "reduction_vs_fp16_serialized", "reduction_vs_fp32")


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
    return pd.DataFrame([run_figures(r) for r in runs])


def paired_deltas(frame: pd.DataFrame) -> pd.DataFrame:
    """`accuracy_vs_fp32`: each run's accuracy minus that of the fp32 run of the same strategy
    and seed (NaN where there is none). Seeds change the base model and the data split, so
    this paired difference shows the cost of the bits more plainly than the spread of means."""
    ref = frame[(frame.quantizer == "fp32") & ~frame.entropy_coding & (frame.strategy != "fedavg")]
    ref = ref.set_index(["strategy", "seed"]).accuracy
    keys = list(zip(frame.strategy, frame.seed))
    frame = frame.copy()
    frame["accuracy_vs_fp32"] = [a - ref[k] if k in ref.index else np.nan for a, k in zip(frame.accuracy, keys)]
    return frame


def comm_table(runs: list[Run]) -> pd.DataFrame:
    """One row per setting, means over its seeds, with the reductions (see module doc)."""
    if not runs:
        raise ValueError("no runs to tabulate")
    frame = paired_deltas(per_run(runs))
    keys = ["strategy", "quantizer", "bits", "entropy_coding"]
    numeric = [c for c in frame.columns if c not in keys + ["seed", "run"]]
    frame["bits_key"] = frame.bits.astype(str)  # ints and "auto" in one column
    rows = []
    for _, g in frame.groupby(["strategy", "quantizer", "bits_key", "entropy_coding"], sort=False):
        row = {k: g[k].iloc[0] for k in keys}
        row["seeds"] = len(g)
        row.update({c: float(g[c].mean()) for c in numeric})
        row["accuracy_std"] = float(g.accuracy.std(ddof=0))
        rows.append(row)
    table = pd.DataFrame(rows)
    table = table.iloc[sorted(range(len(table)), key=lambda i: group_sort_key(tuple(table.loc[i, keys])))]
    table = table.reset_index(drop=True)
    for col in ("reduction_vs_fp16", "reduction_vs_fp16_serialized", "reduction_vs_fp32", "reduction_vs_fedavg"):
        table[col] = math.nan
    for i, row in table.iterrows():
        if row.strategy == "fedavg":
            continue
        same = table[(table.strategy == row.strategy) & ~table.entropy_coding]
        for ref, width in (("fp16", 16), ("fp32", 32)):
            match = same[same.quantizer == ref]
            ideal = match.act_up_ideal_bytes.iloc[0] if len(match) else row.act_up_elements * width / 8
            table.loc[i, f"reduction_vs_{ref}"] = 1 - row.act_up_ideal_bytes / ideal
            if ref == "fp16" and len(match):
                table.loc[i, "reduction_vs_fp16_serialized"] = \
                    1 - row.act_up_serialized_bytes / match.act_up_serialized_bytes.iloc[0]
        fedavg = table[table.strategy == "fedavg"]
        if len(fedavg):
            ref_bytes = fedavg.up_message_bytes.iloc[0] + fedavg.down_message_bytes.iloc[0]
            table.loc[i, "reduction_vs_fedavg"] = 1 - (row.up_message_bytes + row.down_message_bytes) / ref_bytes
    front = ["strategy", "quantizer", "bits", "entropy_coding", "seeds", "accuracy", "accuracy_std", "accuracy_vs_fp32",
             "effective_bits"]
    return table[front + [c for c in table.columns if c not in front]]


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The columns the markdown / LaTeX tables show, formatted as text."""
    out = pd.DataFrame()
    for col, title in SHOWN.items():
        values = table[col]
        if col in MEGABYTE_COLUMNS:
            out[title] = [f"{v / 1e6:,.2f}" for v in values]
        elif col in PERCENT_COLUMNS:
            out[title] = ["" if np.isnan(v) else f"{100 * v:.2f}%" for v in values]
        elif col == "accuracy":
            out[title] = [f"{v:.4f} ± {s:.4f}" for v, s in zip(values, table.accuracy_std)]
        elif col == "accuracy_vs_fp32":
            out[title] = ["" if np.isnan(v) else f"{round(100 * v, 2) + 0.0:+.2f} pt" for v in values]
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


def write_table(table: pd.DataFrame, out_dir: str | Path, stem: str = "comm_table", caption: str = "") -> list[Path]:
    """`<stem>.csv` (every column, full precision), `.md` and `.tex` (the shown columns)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    table.to_csv(paths[0], index=False)
    text = shown(table)
    paths[1].write_text(text.to_markdown(index=False, disable_numparse=True) + "\n")
    latex = text.to_latex(index=False, caption=caption or None, label=f"tab:{stem}", escape=True)
    paths[2].write_text(latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$"))  # for pdflatex too
    return paths
