"""The figures: accuracy against bits, accuracy against bytes sent, and the entropy figure.
Each is written as PNG (150 dpi) and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .runs import Run, group_sort_key  # noqa: E402

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9})
REFERENCES = ("fp32", "fp16", "bf16")


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def _label(strategy: str, quantizer: str, bits, entropy: bool, many_strategies: bool) -> str:
    """'learned 2 b + entropy coding', 'fp16', 'learned' (bits None: a curve over bits)."""
    text = quantizer if bits is None or quantizer in REFERENCES else f"{quantizer} {bits} b"
    if entropy:
        text += " + entropy coding"
    return f"{strategy}: {text}" if many_strategies else text


def _task(runs: list[Run]) -> str:
    datasets = sorted({r.config["dataset"] for r in runs})
    rounds = sorted({int(r.config["num-rounds"]) for r in runs})
    return f"{', '.join(datasets)}, after {'/'.join(map(str, rounds))} rounds"


def accuracy_vs_bits(table: pd.DataFrame, per_run: pd.DataFrame, runs: list[Run], out_dir: Path) -> list[Path]:
    """Mean accuracy against bits per quantizer (bars: min to max over seeds); fp32 / fp16 and
    FedAvg as reference lines; bits="auto" at its effective width."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    strategies = sorted(set(table.strategy) - {"fedavg"})
    many = len(strategies) > 1
    per_run = per_run.assign(bits_key=per_run.bits.astype(str))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    markers = iter("osD^v<>p")
    xs_all = set()
    for strategy in strategies:
        rows = table[(table.strategy == strategy)]
        for (quantizer, entropy), g in rows.groupby(["quantizer", "entropy_coding"], sort=False):
            if quantizer in REFERENCES:
                continue
            fixed = g[g.bits != "auto"]
            if len(fixed):
                xs = fixed.bits.astype(int).to_numpy()
                lo, hi = _spread(per_run, strategy, quantizer, entropy, fixed.bits)
                label = _label(strategy, quantizer, None, entropy, many)
                ax.errorbar(xs, fixed.accuracy, yerr=[fixed.accuracy - lo, hi - fixed.accuracy], marker=next(markers),
                            capsize=3, color=next(colours), label=label)
                xs_all.update(xs)
            for _, row in g[g.bits == "auto"].iterrows():
                lo, hi = _spread(per_run, strategy, quantizer, entropy, ["auto"])
                ax.errorbar([row.effective_bits], [row.accuracy], yerr=[[row.accuracy - lo[0]], [hi[0] - row.accuracy]],
                            marker="*", markersize=13, capsize=3, linestyle="none", color=next(colours),
                            label=f"{_label(strategy, quantizer, 'auto', entropy, many)} "
                                  f"(chosen, {row.effective_bits:.2f} bits/element)")
    styles = iter(["--", ":", "-."])
    for _, row in table[table.quantizer.isin(REFERENCES) | (table.strategy == "fedavg")].iterrows():
        name = "FedAvg (whole model)" if row.strategy == "fedavg" else _label(row.strategy, row.quantizer, row.bits,
                                                                                row.entropy_coding, many)
        ax.axhline(row.accuracy, linestyle=next(styles, "--"), color="grey" if row.strategy != "fedavg" else "black",
                   linewidth=1.2, label=f"{name}: {row.accuracy:.4f}")
    if xs_all:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(xs_all))
        ax.set_xticklabels([str(x) for x in sorted(xs_all)])
    ax.set_xlabel("bits per activation element sent up (b)")
    ax.set_ylabel("test accuracy (exact match, fraction)")
    ax.set_title(f"Accuracy vs bits at the cut ({_task(runs)}; mean, bars min-max over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out_dir, "accuracy_vs_bits")


def _spread(per_run: pd.DataFrame, strategy, quantizer, entropy, bits) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = [], []
    for b in bits:
        g = per_run[(per_run.strategy == strategy) & (per_run.quantizer == quantizer)
                    & (per_run.entropy_coding == entropy) & (per_run.bits_key == str(b))]
        lo.append(g.accuracy.min())
        hi.append(g.accuracy.max())
    return np.array(lo), np.array(hi)


def accuracy_vs_bytes(runs: list[Run], out_dir: Path) -> list[Path]:
    """Accuracy after each round against the cumulative bytes sent up and down (whole
    serialized messages, set-up included), mean over seeds: one curve per setting."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    many = len({g[0] for g in groups}) > 1
    cmap = plt.get_cmap("tab20")
    for i, key in enumerate(sorted(groups, key=group_sort_key)):
        curves = []
        for run in groups[key]:
            messages = run.messages()
            per_round = messages.groupby("round").message_bytes.sum()
            cumulative = per_round.sort_index().cumsum()  # round 0 (set-up) folds into round 1
            accuracy = run.metrics.set_index("round").accuracy
            curves.append(pd.DataFrame({"bytes": cumulative.reindex(accuracy.index), "accuracy": accuracy}))
        mean = pd.concat(curves).groupby(level=0).mean()
        strategy, quantizer, bits, entropy = key
        label = "FedAvg (whole model)" if strategy == "fedavg" else _label(strategy, quantizer, bits, entropy, many)
        ax.plot(mean["bytes"] / 1e6, mean["accuracy"], marker="o", markersize=3.5, color=cmap(i % 20), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes sent, up + down (MB, whole messages, log scale)")
    ax.set_ylabel("test accuracy (exact match, fraction)")
    ax.set_title(f"Accuracy vs bytes sent ({_task(runs)}; one point per round, mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    return _save(fig, out_dir, "accuracy_vs_bytes")


def entropy_figure(run: Run, out_dir: Path) -> list[Path]:
    """A bits="auto" run's calibration: per modality, the estimated density of the normalised
    features in each calibration batch (one client), and the entropy per batch (every client),
    with the chosen width."""
    report = run.calibration
    grid = np.array(report["grid"])
    clients = report["clients"]
    modalities = list(report["bits"])
    fig, axes = plt.subplots(len(modalities), 2, figsize=(10, 3.6 * len(modalities)), squeeze=False)
    first = next(iter(clients))
    for row, modality in enumerate(modalities):
        ax_d, ax_h = axes[row]
        densities = clients[first][modality]["density"]
        colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(densities)))
        for i, (density, colour) in enumerate(zip(densities, colours)):
            ax_d.plot(grid, density, color=colour, linewidth=1.2, label=f"batch {i + 1}")
        ax_d.set_xlabel("normalised feature z (on [-1, 1])")
        ax_d.set_ylabel("estimated density (KDE, 1 / unit z)")
        ax_d.set_title(f"{modality} tokens: density per calibration batch (client {first})")
        ax_d.grid(alpha=0.3)
        ax_d.legend(fontsize=7, ncol=2)
        for client, rep in clients.items():
            h = rep[modality]["batch_entropy"]
            ax_h.plot(range(1, len(h) + 1), h, marker="o", label=f"client {client}: h per batch")
        needed = max(rep[modality]["needed_bits"] for rep in clients.values())
        entropy = max(rep[modality]["entropy_bits"] for rep in clients.values())
        ax_h.set_xlabel("calibration batch")
        ax_h.set_ylabel("differential entropy h (bits)")
        ax_h.set_title(f"{modality}: chosen {report['bits'][modality]} bits "
                       f"(H* = h - log2 D* = {needed:.2f} bits needed, pooled h = {entropy:.3f})")
        ax_h.grid(alpha=0.3)
        ax_h.legend(fontsize=8)
    budget = clients[first][modalities[0]]["choice"]["max_rel_mse"]
    fig.suptitle(f"Entropy-based bit-width selection ({run.name}; distortion budget: relative MSE <= {budget})",
                 fontsize=11)
    return _save(fig, out_dir, "entropy")
