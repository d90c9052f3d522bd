"""The figures: accuracy against bits, accuracy against bytes sent, and the entropy figure.
Each is written as PNG (150 dpi) and PDF. Error bars are 95% Student t intervals over seeds
(`analysis.stats`): of the mean accuracy, and of the mean paired difference to fp32; a setting
with one seed has no bar. `note` (for instance the machine the runs were measured on) is added
to each figure's title."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .run_dirs import Run, group_sort_key, label_settings  # noqa: E402
from .stats import t_interval  # noqa: E402

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9})
REFERENCES = ("fp32", "fp16", "bf16")


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    fig.tight_layout()
    # with what lies outside the axes (legends below), those left out of the layout too
    extra = [a.get_legend() for a in fig.axes if a.get_legend() is not None] + list(fig.legends)
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight", bbox_extra_artists=fig.get_default_bbox_extra_artists() + extra)
    plt.close(fig)
    return paths


def _label(strategy: str, quantizer: str, bits, entropy: bool, many_strategies: bool, settings: str = "") -> str:
    """'learned 2 b + entropy coding', 'fp16', 'learned' (bits None: a curve over bits)."""
    text = quantizer if bits is None or quantizer in REFERENCES else f"{quantizer} {bits} b"
    if entropy:
        text += " + entropy coding"
    if settings:
        text += f" ({settings})"
    return f"{strategy}: {text}" if many_strategies else text


def _task(runs: list[Run]) -> str:
    datasets = sorted({r.config["dataset"] for r in runs})
    rounds = sorted({int(r.config["num-rounds"]) for r in runs})
    seeds = sorted({r.seed for r in runs})
    return (f"{', '.join(datasets)}, after {'/'.join(map(str, rounds))} rounds, "
            f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}")


def _title(text: str, note: str) -> str:
    return f"{text}\n{note}" if note else text


def _bars(mean, low, high) -> np.ndarray:
    """yerr for errorbar from interval bounds; NaN (no interval) draws no bar."""
    mean, low, high = (np.asarray(v, dtype=float) for v in (mean, low, high))
    return np.vstack([mean - low, high - mean])


def accuracy_vs_bits(table: pd.DataFrame, per_run: pd.DataFrame, runs: list[Run], out_dir: Path,
                     note: str = "", stem: str = "accuracy_vs_bits") -> list[Path]:
    """Left: mean accuracy against bits per quantizer (bars: 95% t interval over seeds, dots:
    the seeds), fp32 / fp16 and FedAvg as reference lines (their interval in the legend),
    bits="auto" as a star at its effective width. Right: the mean paired difference to the fp32 run of the same
    seed, with its 95% t interval over the per-seed differences."""
    paired = bool(per_run.accuracy_vs_fp32.notna().any())  # the right panel needs fp32 runs
    if paired:
        fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [1.25, 1]})
    else:
        fig, ax = plt.subplots(figsize=(7.5, 5.6))
        ax_d = _Nowhere()
    if "settings" not in table:
        table = table.assign(settings="")
    if "settings" not in per_run:
        per_run = per_run.assign(settings="")
    split = table[table.strategy != "fedavg"]
    many = split.strategy.nunique() > 1
    per_run = per_run.assign(bits_key=per_run.bits.astype(str))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    markers = iter("osD^v<>p" * 4)
    xs_all = set()
    curves = [(key, g) for key, g in split.groupby(["strategy", "settings", "quantizer", "entropy_coding"], sort=False)
              if key[2] not in REFERENCES]
    for k, ((strategy, settings, quantizer, entropy), g) in enumerate(curves):
        # curves side by side around each width (log2 scale), so that their bars do not hide each other
        dodge = 2.0 ** (0.04 * (k - (len(curves) - 1) / 2))
        colour = next(colours)
        runs_of = per_run[(per_run.strategy == strategy) & (per_run.settings == settings)
                          & (per_run.quantizer == quantizer) & (per_run.entropy_coding == entropy)]
        label = _label(strategy, quantizer, None, entropy, many, settings)
        fixed = g[g.bits.astype(str) != "auto"]
        if len(fixed):
            xs = fixed.bits.astype(int).to_numpy()
            marker = next(markers)
            xs_all.update(xs)
            xs = xs * dodge
            ax.errorbar(xs, fixed.accuracy, yerr=_bars(fixed.accuracy, fixed.accuracy_ci95_low,
                                                       fixed.accuracy_ci95_high),
                        marker=marker, capsize=3, color=colour, label=label)
            ax_d.errorbar(xs, 100 * fixed.accuracy_vs_fp32,
                          yerr=100 * _bars(fixed.accuracy_vs_fp32, fixed.accuracy_vs_fp32_ci95_low,
                                           fixed.accuracy_vs_fp32_ci95_high),
                          marker=marker, capsize=3, color=colour, label=label)
            seeds = runs_of[runs_of.bits_key != "auto"]
            ax.scatter(seeds.bits.astype(int) * dodge, seeds.accuracy, s=12, color=colour, alpha=0.45)
            ax_d.scatter(seeds.bits.astype(int) * dodge, 100 * seeds.accuracy_vs_fp32, s=12, color=colour, alpha=0.45)
        for _, row in g[g.bits.astype(str) == "auto"].iterrows():
            auto_label = f"{label}, bits=auto ({row.effective_bits:.2f} bits/element)"
            ax.errorbar([row.effective_bits], [row.accuracy],
                        yerr=_bars([row.accuracy], [row.accuracy_ci95_low], [row.accuracy_ci95_high]),
                        marker="*", markersize=14, capsize=3, linestyle="none", color=colour, label=auto_label)
            ax_d.errorbar([row.effective_bits], [100 * row.accuracy_vs_fp32],
                          yerr=100 * _bars([row.accuracy_vs_fp32], [row.accuracy_vs_fp32_ci95_low],
                                           [row.accuracy_vs_fp32_ci95_high]),
                          marker="*", markersize=14, capsize=3, linestyle="none", color=colour, label=auto_label)
    styles = iter(["--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1))] * 4)
    for _, row in table[table.quantizer.isin(REFERENCES) | (table.strategy == "fedavg")].iterrows():
        name = ("FedAvg (whole model)" + (f" ({row.settings})" if row.settings else "") if row.strategy == "fedavg"
                else _label(row.strategy, row.quantizer, row.bits, row.entropy_coding, many, row.settings))
        colour = "black" if row.strategy == "fedavg" else "grey"
        half = row.accuracy_ci95_half_width
        ci = "n/a" if np.isnan(half) else f"{half:.4f}"
        ax.axhline(row.accuracy, linestyle=next(styles), color=colour, linewidth=1.2,
                   label=f"{name}: {row.accuracy:.4f} ± {ci}")
        if row.quantizer == "fp16" and row.strategy != "fedavg" and not np.isnan(row.accuracy_vs_fp32):
            half_d = row.accuracy_vs_fp32_ci95_half_width
            ci_d = "n/a" if np.isnan(half_d) else f"{100 * half_d:.2f}"
            ax_d.axhline(100 * row.accuracy_vs_fp32, linestyle="--", color="grey", linewidth=1.2,
                         label=f"{name}: {100 * row.accuracy_vs_fp32:+.2f} ± {ci_d} pt")
    ax_d.axhline(0.0, color="black", linewidth=0.8)
    for a in (ax, ax_d) if paired else (ax,):
        if xs_all:
            a.set_xscale("log", base=2)
            a.set_xticks(sorted(xs_all))
            a.set_xticklabels([str(x) for x in sorted(xs_all)])
            a.minorticks_off()
        a.set_xlabel("bits per activation element sent up (bits, log scale)")
        a.grid(alpha=0.3)
    _fraction_limits(ax)
    ax.set_ylabel("test accuracy (exact match, fraction)")
    ax.set_title("Accuracy: mean over seeds (bars: 95% t CI, dots: the seeds)")
    ax_d.set_ylabel("accuracy minus fp32's, same seed (percentage points)")
    ax_d.set_title("Cost of the bits: paired with fp32 by seed (bars: 95% t CI)")
    for a in (ax, ax_d) if paired else (ax,):  # below the panels: inside, they hide the lower widths' points
        if a.get_legend_handles_labels()[0]:
            # out of tight_layout (which would flatten the panels to make room), in the saved figure
            a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8).set_in_layout(False)
    fig.suptitle(_title(f"Accuracy vs bits at the cut ({_task(runs)})", note))
    return _save(fig, out_dir, stem)


def by_dataset(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """The runs per data set, the one with the most runs first, as (the suffix of its figures'
    names: "" for the first, "_<dataset>" for the others, and copies of its runs whose settings
    name what differs among them alone): accuracies of different tasks share no axis."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.config["dataset"]] = counts.get(run.config["dataset"], 0) + 1
    order = sorted(counts, key=lambda d: -counts[d])  # stable: ties keep the runs' order
    out = []
    for i, dataset in enumerate(order):
        own = label_settings([copy.copy(r) for r in runs if r.config["dataset"] == dataset])
        out.append((dataset_suffix(dataset, first=i == 0), own))
    return out


def dataset_suffix(dataset, first: bool) -> str:
    """What a figure's file name adds for a data set: nothing for the first (the figure the
    pages show), "_<dataset>" (made file-safe) for the others."""
    return "" if first else "_" + re.sub(r"[^A-Za-z0-9._-]+", "_", str(dataset))


def _fraction_limits(ax) -> None:
    """An accuracy axis stays within [0, 1]: wide intervals (few seeds) may run past its edge."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 1.0))


class _Nowhere:
    """Stands in for a panel that is not drawn: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _settings(runs: list[Run]):
    """(index, label, runs) per setting (strategy, quantizer, width, entropy coding, other
    settings) in the tables' order: the curves of the per-round figures."""
    label_settings(runs)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    many = len({g[0] for g in groups if g[0] != "fedavg"}) > 1
    for i, key in enumerate(sorted(groups, key=group_sort_key)):
        strategy, quantizer, bits, entropy, settings = key
        label = ("FedAvg (whole model)" + (f" ({settings})" if settings else "") if strategy == "fedavg"
                 else _label(strategy, quantizer, bits, entropy, many, settings))
        yield i, label, groups[key]


def accuracy_vs_bytes(runs: list[Run], out_dir: Path, note: str = "", stem: str = "accuracy_vs_bytes") -> list[Path]:
    """Accuracy after each round against the cumulative bytes sent (whole serialized messages,
    set-up folded into round 1), mean over seeds with its 95% t interval (bars), one curve per
    setting: bytes up (what the quantizer at the cut controls) and bytes up + down."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), sharey=True)
    cmap = plt.get_cmap("tab20")
    for i, label, group in _settings(runs):
        curves = []
        for run in group:
            messages = run.messages()
            per_round = messages.pivot_table(index="round", columns="direction", values="message_bytes",
                                             aggfunc="sum", fill_value=0).sort_index()
            up = per_round.get("up", 0).cumsum()
            both = (per_round.get("up", 0) + per_round.get("down", 0)).cumsum()
            accuracy = run.metrics.set_index("round").accuracy
            curves.append(pd.DataFrame({"up": up.reindex(accuracy.index), "both": both.reindex(accuracy.index),
                                        "accuracy": accuracy}))
        joined = pd.concat(curves)
        mean = joined.groupby(level=0).mean()
        intervals = [t_interval(joined.accuracy[joined.index == r]) for r in mean.index]
        yerr = _bars(mean.accuracy, [iv.low for iv in intervals], [iv.high for iv in intervals])
        for ax, column in zip(axes, ("up", "both")):
            ax.errorbar(mean[column] / 1e6, mean["accuracy"], yerr=yerr, marker="o", markersize=3.5, capsize=2,
                        color=cmap(i % 20), label=label)
    for ax, what in zip(axes, ("sent up, client to server", "sent up + down")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        # within a decade: 2 and 5 times its start labelled, the rest would run into each other
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if round(v / 10 ** np.floor(np.log10(v))) in (2, 5) else ""))
        ax.set_xlabel(f"cumulative MB {what} (whole messages, log scale)")
        ax.grid(alpha=0.3, which="both")
    _fraction_limits(axes[0])
    axes[0].set_ylabel("test accuracy (exact match, fraction)")
    axes[0].set_title("Accuracy vs bytes up (what the quantizer at the cut sets)")
    axes[1].set_title("Accuracy vs all bytes, up + down")
    # below the panels (inside, it hid the cheapest runs' points), out of tight_layout's way
    fig.legend(*axes[1].get_legend_handles_labels(), fontsize=8, ncol=3, loc="upper center",
               bbox_to_anchor=(0.5, 0.0)).set_in_layout(False)
    fig.suptitle(_title(f"Accuracy vs bytes sent ({_task(runs)}; a point per round: mean over seeds, "
                        "bars: 95% t CI)", note))
    return _save(fig, out_dir, stem)


def training_curves(runs: list[Run], out_dir: Path, note: str = "", stem: str = "training_curves") -> list[Path]:
    """Training loss and test accuracy after each round, one curve per setting (strategy,
    quantizer, width): the mean over its seeds and, with two seeds or more, the 95% t interval
    as a band (the loss: geometric mean, the interval taken of log10 loss). Runs whose metrics
    lack the loss (older runs) draw accuracy only."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    cmap = plt.get_cmap("tab20")
    for i, label, group in _settings(runs):
        seeds = len(group)
        for ax, column in zip(axes, ("loss", "accuracy")):
            curves = [run.metrics.set_index("round")[column] for run in group if column in run.metrics]
            if not curves:
                continue
            joined = pd.concat(curves, axis=1)
            log = column == "loss"  # the loss spans decades: its mean and interval are taken of log10
            values = np.log10(joined.clip(lower=1e-12)) if log else joined
            intervals = [t_interval(values.loc[r]) for r in joined.index]
            back = (lambda v: 10 ** np.asarray(v, dtype=float)) if log else (lambda v: np.asarray(v, dtype=float))
            ax.plot(joined.index, back([iv.mean for iv in intervals]), marker="o", markersize=3, color=cmap(i % 20),
                    label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})")
            if seeds > 1:
                ax.fill_between(joined.index, back([iv.low for iv in intervals]), back([iv.high for iv in intervals]),
                                color=cmap(i % 20), alpha=0.15, linewidth=0)
    axes[0].set_ylabel("training loss (mean over the round's steps; log scale)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("test accuracy (exact match, fraction)")
    axes[0].set_title("Training loss per round")
    axes[1].set_title("Test accuracy after each round")
    for ax in axes:
        ax.set_xlabel("round (count)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    fig.suptitle(_title(f"Training curves ({_task(runs)}; mean over seeds (loss: geometric), bands: 95% t CI)",
                        note))
    return _save(fig, out_dir, stem)


def entropy_figure(run: Run, out_dir: Path, note: str = "") -> list[Path]:
    """A bits="auto" run's calibration: per modality, the estimated density of the normalised
    features in each calibration batch (one client), and the entropy per batch (every client),
    with the chosen width."""
    report = run.calibration
    grid = np.array(report["grid"])
    clients = report["clients"]
    modalities = list(report["bits"])
    fig, axes = plt.subplots(len(modalities), 2, figsize=(12, 4.0 * len(modalities)), squeeze=False)
    first = next(iter(clients))
    for row, modality in enumerate(modalities):
        ax_d, ax_h = axes[row]
        densities = clients[first][modality]["density"]
        colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(densities)))
        for i, (density, colour) in enumerate(zip(densities, colours)):
            ax_d.plot(grid, density, color=colour, linewidth=1.2, label=f"batch {i + 1}")
        ax_d.set_xlabel("normalised feature z (on [-1, 1])")
        ax_d.set_ylabel("estimated density (KDE, 1 / unit z)")
        ax_d.set_title(f"{modality} tokens: density per calibration batch\n(client {first})")
        ax_d.grid(alpha=0.3)
        ax_d.legend(fontsize=7, ncol=2)
        for client, rep in clients.items():
            h = rep[modality]["batch_entropy"]
            ax_h.plot(range(1, len(h) + 1), h, marker="o", label=f"client {client}: h per batch")
        needed = max(rep[modality]["needed_bits"] for rep in clients.values())
        entropy = max(rep[modality]["entropy_bits"] for rep in clients.values())
        ax_h.set_xlabel("calibration batch")
        ax_h.set_ylabel("differential entropy h (bits)")
        ax_h.set_title(f"{modality} tokens: entropy per batch; chosen {report['bits'][modality]} bits\n"
                       f"(pooled h = {entropy:.3f} bits, H* = h - log2 D* = {needed:.2f} bits needed)")
        ax_h.grid(alpha=0.3)
        ax_h.legend(fontsize=8)
    budget = clients[first][modalities[0]]["choice"]["max_rel_mse"]
    fig.suptitle(_title(f"Entropy-based bit-width selection ({run.name}; distortion budget: relative MSE <= {budget})",
                        note), fontsize=11)
    return _save(fig, out_dir, "entropy")
