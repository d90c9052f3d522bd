"""The privacy figures, from the privacy table (`analysis.privacy`) and the runs'
reconstructions.npz; each written as PNG (150 dpi) and PDF by `plots._save`.

- `privacy_vs_bits`: leakage against the width at the cut: the best attack per run (PSNR, with
  the mean-image guess as a line; attack accuracy, with chance and the clean images' accuracy
  as lines; without a "best", a row per image attack), then the information ceiling (bits per
  image crossing, the class's bits and the image's entropy as lines) beside each attack's
  attack accuracy, and a row for the text and label attacks; a curve per quantizer (and per
  strategy, settings, labels mode where they differ), solid at the public-base level, dash-dot
  trained-quantizer, dashed private-base, dotted white-box; bars: 95% Student t intervals over seeds.
- `reconstructions`: the same observed training images (first row) reconstructed by one
  attack at the strongest level below white-box at each width (a row each), from one seed.
- `tradeoff`: task accuracy against leakage (the best attack), the bytes a width sends up per training sample
  as colour, a point per width labelled with its bits: the picture for choosing a width.

`note` (for instance the machine the runs were measured on) is added to each figure's title.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.lines
import matplotlib.ticker
from matplotlib.container import ErrorbarContainer
from matplotlib.lines import Line2D

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import plots  # noqa: E402
from .comm_table import _nan  # noqa: E402
from .privacy import attacks_of, prefix, privacy_settings  # noqa: E402
from .run_dirs import Run, group_sort_key  # noqa: E402
from .stats import t_interval  # noqa: E402

REFERENCES = ("fp32", "fp16", "bf16")
CURVE_KEYS = ["strategy", "dataset", "settings", "labels", "quantizer", "entropy_coding", "auto", "level"]
MARKERS = "osD^v<>p"
TEXT_MARKERS = {"nearest-token": "o", "learned-token": "s"}
MAX_IMAGES = 8


def _what(values: dict, table: pd.DataFrame) -> str:
    """The parts of a curve's key that differ in `table` (strategy, data set, settings,
    labels mode), for its label."""
    parts = []
    if table.strategy.nunique() > 1:
        parts.append(values["strategy"])
    if table.dataset.nunique() > 1:
        parts.append(values["dataset"])
    if values.get("settings"):
        parts.append(values["settings"])
    if table.labels.nunique() > 1:
        parts.append(f"labels at the {values['labels']}")
    return ", ".join(parts)


def _curves(table: pd.DataFrame) -> list[tuple[dict, tuple, pd.DataFrame]]:
    """A curve per (strategy, data set, settings, labels, quantizer, entropy coding, auto,
    level), in the table's order: (its key as a dict, the key of its colour, its rows by
    width). The levels of one quantizer share a colour."""
    table = table.assign(auto=table.bits.astype(str) == "auto")
    out = []
    for _, g in table.groupby(CURVE_KEYS, sort=False, dropna=False):
        key = {k: g[k].iloc[0] for k in CURVE_KEYS}
        out.append((key, tuple(key[k] for k in CURVE_KEYS if k != "level"), g.sort_values("image_bits")))
    return out


def _curve_label(key: dict, table: pd.DataFrame) -> str:
    what = _what(key, table)
    text = key["quantizer"] + (", bits=auto" if key["auto"] else "") + (" + entropy coding" if key["entropy_coding"]
                                                                         else "")
    if table.level.nunique() > 1 or key["level"] != "public-base":
        text += f" ({key['level']})"
    return f"{what}: {text}" if what else text


def _colours(curves) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = []
    for _, colour, _ in curves:
        if colour not in order:
            order.append(colour)
    return {c: cycle[i % len(cycle)] for i, c in enumerate(order)}


LINE_STYLES = {"public-base": "-", "trained-quantizer": "-.", "private-base": "--", "white-box": ":"}
STYLE_NAMES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}  # as the legends say them


def _style(level: str):
    return LINE_STYLES.get(level, (0, (3, 1, 1, 1, 1, 1)))


def _references(ax, table: pd.DataFrame, column: str, what: str, unit: str, digits: int, style, colour,
                vertical: bool = False) -> None:
    """A line per distinct value of a baseline `column` (a mean over its rows per strategy,
    data set, settings and labels mode; one line when they agree)."""
    if column not in table or not table[column].notna().any():
        return
    groups = [(_what({k: g[k].iloc[0] for k in ("strategy", "dataset", "settings", "labels")}, table),
               float(g[column].mean()))
              for _, g in table[table[column].notna()].groupby(["strategy", "dataset", "settings", "labels"],
                                                                sort=False)]
    if len({round(v, 6) for _, v in groups}) == 1:
        groups = [("", groups[0][1])]
    line = ax.axvline if vertical else ax.axhline
    for context, value in groups:
        line(value, linestyle=style, color=colour, linewidth=1.2,
             label=f"{what}{f' ({context})' if context else ''}: {value:.{digits}f}{unit}")


def _log2_axis(ax, xs, label: str) -> None:
    xs = sorted({float(x) for x in xs if not _nan(x) and x > 0})
    if xs:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.minorticks_off()
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def _draw(ax, curves, colours, table, x_column: str, y_column: str, scale: float = 1.0, suffix: str = "",
          marker=None) -> list[float]:
    """One errorbar curve per curve that has `y_column`, side by side around each width."""
    xs = []
    drawn = [(key, colour, g[g[y_column].notna()]) for key, colour, g in curves if y_column in g]
    drawn = [c for c in drawn if len(c[2])]
    for k, (key, colour, g) in enumerate(drawn):
        dodge = 2.0 ** (0.04 * (k - (len(drawn) - 1) / 2))
        x = g[x_column].to_numpy(dtype=float)
        xs += list(x)
        y = g[y_column].to_numpy(dtype=float) * scale
        yerr = plots._bars(y, g[f"{y_column}_ci95_low"] * scale, g[f"{y_column}_ci95_high"] * scale)
        ax.errorbar(x * dodge, y, yerr=yerr, marker=marker or MARKERS[k % len(MARKERS)], capsize=3,
                    linestyle=_style(key["level"]), color=colours[colour],
                    label=_curve_label(key, table) + suffix)
    return xs


def privacy_vs_bits(table: pd.DataFrame, runs: list[Run], out_dir: Path, note: str = "") -> list[Path]:
    """Leakage against bits (module doc), one figure per data set: `privacy_vs_bits` for the
    data set with the most rows, then `privacy_vs_bits_<dataset>`. x: the bits per element of
    the modality the attack reads (image tokens for the image and label attacks, text tokens
    for the token attacks), fp16 / fp32 at 16 / 32, log2 scale. The curves share one legend
    below the panels; each panel's own legend names its reference lines."""
    written = []
    for i, dataset in enumerate(table.dataset.value_counts(sort=True).index if len(table) else [None]):
        part = table if dataset is None else _local_settings(table[table.dataset == dataset])
        kept = [r for r in runs if dataset is None or r.config.get("dataset") == dataset]
        stem = "privacy_vs_bits" + plots.dataset_suffix(dataset, first=i == 0)
        written += _privacy_vs_bits(part, kept, out_dir, note, stem)
    return written


def _local_settings(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with each row's settings less the "key=value" parts every row of it shares (the
    settings column names what differs among all runs analysed; one data set's rows share
    some of it, the preset say)."""
    parts = [[p for p in str(v).split(", ") if p] for v in table.settings.fillna("")]
    common = set.intersection(*(set(p) for p in parts)) if parts else set()
    return table.assign(settings=[", ".join(p for p in ps if p not in common) for ps in parts])


def _legend(ax, curves_too: bool = False) -> None:
    """The panel's legend: its reference lines (and its curves where `curves_too`); the
    curves are named once, in the figure's legend."""
    handles, labels = ax.get_legend_handles_labels()
    keep = [(h, l) for h, l in zip(handles, labels) if curves_too or not isinstance(h, ErrorbarContainer)]
    if keep:
        ax.legend(*zip(*keep), fontsize=6, framealpha=0.5)


def _figure_legend(fig, ax) -> None:
    """One legend for the curves of `ax` (every image curve), below the panels."""
    handles, labels = ax.get_legend_handles_labels()
    curves = [(h, l) for h, l in zip(handles, labels) if isinstance(h, ErrorbarContainer)]
    if curves:
        fig.legend(*zip(*curves), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7,
                   frameon=False)


def _privacy_vs_bits(table: pd.DataFrame, runs: list[Run], out_dir: Path, note: str, stem: str) -> list[Path]:
    attacks = attacks_of(table)
    image = [n for n, k in attacks if k == "image"]
    each = [n for n in image if n != "best"]
    if "best" in image:  # the leakage; each attack's own curve in the panel beside the ceiling
        image = ["best"]
    text = [n for n, k in attacks if k == "text"]
    labels = [n for n, k in attacks if k == "labels"]
    ceiling = "ceiling_image_bits" in table and table.ceiling_image_bits.notna().any()
    rows = len(image) + (1 if ceiling else 0) + (1 if text or labels else 0)
    fig, axes = plt.subplots(max(rows, 1), 2, figsize=(14, 6.2 * max(rows, 1)), squeeze=False)
    curves = _curves(table)
    colours = _colours(curves)
    image_axis = "bits per image element sent up (bits, log scale)"
    for r, name in enumerate(image):
        p = prefix(name)
        ax_psnr, ax_acc = axes[r]
        xs = _draw(ax_psnr, curves, colours, table, "image_bits", f"{p}_psnr")
        _references(ax_psnr, table, f"{p}_baseline_psnr", "public mean image guessed", " dB", 2, ":", "black")
        _log2_axis(ax_psnr, xs, image_axis)
        ax_psnr.set_ylabel("PSNR of the reconstructions (dB)")
        what = "leakage, the best attack per run" if name == "best" else name
        ax_psnr.set_title(f"{what}: PSNR (higher: more recovered)")
        _legend(ax_psnr)
        if f"{p}_attack_accuracy" in table and table[f"{p}_attack_accuracy"].notna().any():
            xs = _draw(ax_acc, curves, colours, table, "image_bits", f"{p}_attack_accuracy")
            _references(ax_acc, table, "classifier_clean_accuracy", "classifier on the clean images", "", 3, "-.",
                        "black")
            _references(ax_acc, table, "classifier_chance", "chance", "", 3, ":", "grey")
            _log2_axis(ax_acc, xs, image_axis)
            plots._fraction_limits(ax_acc)
            ax_acc.set_ylabel("attack accuracy (fraction classified right)")
            ax_acc.set_title(f"{what}: the class recognised in the reconstructions")
            _legend(ax_acc)
        else:
            ax_acc.set_axis_off()
            ax_acc.set_title(f"{what}: no attack accuracy (the data set has no image classes)")
    if ceiling:
        _ceiling_panel(axes[len(image)][0], curves, colours, table, image_axis)
        _attacks_panel(axes[len(image)][1], table, each, image_axis)
    if text or labels:
        ax_tok, ax_lab = axes[len(image) + (1 if ceiling else 0)]
        xs = []
        for name in text:
            xs += _draw(ax_tok, curves, colours, table, "text_bits", f"{prefix(name)}_token_accuracy",
                        marker=TEXT_MARKERS.get(name, "^"))
        if text:
            _references(ax_tok, table, f"{prefix(text[0])}_baseline_accuracy", "positional prior", "", 3, ":", "black")
            _log2_axis(ax_tok, xs, "bits per text element sent up (bits, log scale)")
            plots._fraction_limits(ax_tok)
            ax_tok.set_ylabel("question tokens recovered (fraction)")
            ax_tok.set_title("Text attacks: token accuracy")
            _text_attack_markers(ax_tok, text)
        else:
            ax_tok.set_axis_off()
        xs = []
        for name in labels:
            p = prefix(name)
            xs += _draw(ax_lab, curves, colours, table, "image_bits", f"{p}_accuracy",
                        suffix="" if name == "labels" else f"; attack {name}")
            _references(ax_lab, table, f"{p}_majority_baseline", "majority answer", "", 3, "-.", "black")
            _references(ax_lab, table, f"{p}_chance", "chance", "", 3, ":", "grey")
        if labels and xs:  # none where this data set has no label rows
            _log2_axis(ax_lab, xs, image_axis)
            plots._fraction_limits(ax_lab)
            ax_lab.set_ylabel("labels inferred right (fraction)")
            ax_lab.set_title("Label inference: accuracy")
            _legend(ax_lab, curves_too=True)
        else:
            ax_lab.set_axis_off()
    if not rows:
        for ax in axes[0]:
            ax.set_axis_off()
    fig.suptitle(plots._title(f"Leakage vs bits at the cut ({_task(table, runs)};\na point: mean over seeds, "
                              "bars: 95% t CI; " + ", ".join(f"{STYLE_NAMES[LINE_STYLES[lv]]}: {lv}"
                                                                for lv in LINE_STYLES) + ")", note))
    if rows:
        _figure_legend(fig, axes[0][0])
    return plots._save(fig, Path(out_dir), stem)


def _ceiling_panel(ax, curves, colours, table: pd.DataFrame, image_axis: str) -> None:
    """The information ceiling: entropy-coded bits per image that crossed, against the width,
    beside the bits that name the class and the public images' entropy estimate."""
    xs = _draw(ax, curves, colours, table, "image_bits", "ceiling_image_bits")
    _references(ax, table, "image_entropy_bits", "image entropy estimate (independent pixels)", " bits", 0, "-.",
                "black")
    _references(ax, table, "class_entropy_bits", "bits that name the class", " bits", 2, ":", "grey")
    ax.set_yscale("log")
    _log2_axis(ax, xs, image_axis)
    ax.set_ylabel("bits per image crossing the cut (entropy coded, log scale)")
    ax.set_title("Information ceiling: no attack learns more than crosses")
    _legend(ax)


def _text_attack_markers(ax, attacks: list[str]) -> None:
    """The text panel's legend: its reference lines and the marker of each token attack (the
    curves' colours and styles are the figure legend's)."""
    handles, labels = ax.get_legend_handles_labels()
    keep = [(h, l) for h, l in zip(handles, labels) if not isinstance(h, ErrorbarContainer)]
    keep += [(Line2D([], [], color="black", marker=TEXT_MARKERS.get(a, "^"), linestyle="none"), f"attack {a}")
             for a in attacks]
    ax.legend(*zip(*keep), fontsize=6, framealpha=0.5)


def _attacks_panel(ax, table: pd.DataFrame, attacks: list[str], image_axis: str) -> None:
    """Each image attack's attack accuracy against the width, for the rows of the most common
    strategy, data set and labels mode with no other settings, at the strongest level below
    white-box they have, learned quantizer and full precision."""
    if not attacks or "classifier_chance" not in table:
        ax.set_axis_off()
        return
    rows = table[(table.settings.astype(str) == "") & table.quantizer.isin(["learned", "fp32"])
                 & (table.bits.astype(str) != "auto")]
    if rows.empty:
        ax.set_axis_off()
        return
    for column in ("strategy", "dataset", "labels"):
        rows = rows[rows[column] == rows[column].value_counts().index[0]]
    level = "private-base" if (rows.level == "private-base").any() else "public-base"
    rows = rows[rows.level == level].sort_values("image_bits")
    xs = []
    for k, name in enumerate(attacks):
        column = f"{prefix(name)}_attack_accuracy"
        if column not in rows or not rows[column].notna().any():
            continue
        g = rows[rows[column].notna()]
        x, y = g.image_bits.to_numpy(dtype=float), g[column].to_numpy(dtype=float)
        xs += list(x)
        dodge = 2.0 ** (0.03 * (k - (len(attacks) - 1) / 2))
        ax.errorbar(x * dodge, y, yerr=plots._bars(y, g[f"{column}_ci95_low"], g[f"{column}_ci95_high"]),
                    marker=MARKERS[k % len(MARKERS)], capsize=2, label=name)
    _references(ax, rows, "classifier_chance", "chance", "", 3, ":", "grey")
    _log2_axis(ax, xs, image_axis)
    plots._fraction_limits(ax)
    ax.set_ylabel("attack accuracy (fraction classified right)")
    first = rows.iloc[0]
    ax.set_title(f"Each attack ({level}; {first.strategy}, labels at the {first.labels}; fp32 at 32)")
    ax.legend(fontsize=6, framealpha=0.5)


def _task(table: pd.DataFrame, runs: list[Run]) -> str:
    attacked = [r for r in runs if r.privacy]
    return plots._task(attacked) if attacked else f"{int(table.seeds.max())} seeds"


# --- the reconstructions -----------------------------------------------------------------------
def _images(path: Path, level: str = "public-base") -> dict:
    """The arrays of one level of a reconstructions.npz (N x C x H x W uint8 each); ValueError
    naming the file when it cannot be read or holds something else."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k.startswith(f"{level}/")}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} cannot be read as .npz: {exc}") from None
    for name, array in arrays.items():
        if array.ndim != 4 or array.dtype != np.uint8:
            raise ValueError(f"{path}: {name} must be N x C x H x W uint8 images, found {array.dtype} of shape "
                             f"{array.shape}")
    return arrays


def _psnr(reconstructed: np.ndarray, truth: np.ndarray) -> float:
    """Mean over images of 10 log10(1 / MSE), pixels in [0, 1] (MSE at least 1e-10)."""
    diff = reconstructed.astype(float) / 255 - truth.astype(float) / 255
    mse = np.maximum((diff ** 2).reshape(len(diff), -1).mean(1), 1e-10)
    return float((-10 * np.log10(mse)).mean())


def _show(ax, image: np.ndarray) -> None:
    """A C x H x W uint8 image: RGB, or grey for one channel (or the first of others)."""
    if image.shape[0] == 3:
        ax.imshow(np.transpose(image, (1, 2, 0)), interpolation="nearest")
    else:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def strongest_level(runs: list[Run]) -> str:
    """"private-base" where some attacked run has it (the run's own base model: the stronger
    level below white-box), else "public-base"."""
    return "private-base" if any(r.privacy and "private-base" in r.privacy["levels"] for r in runs) else "public-base"


def reconstruction_choice(runs: list[Run], attack: str = "learned-inversion",
                          level: str = "public-base") -> list[tuple[str, list[Run]]]:
    """Per data set: the runs of the figure, one per width, in the bits order of the other
    figures. Of the runs with reconstructions of `attack` at `level`: the strategy, settings
    and labels mode with the most widths, and the seed (the lowest of those that most widths
    have) whose rows show the same samples."""
    settings = privacy_settings(runs)
    key = f"{level}/{attack}"
    usable = []
    for run in runs:
        if run.privacy and run.reconstructions is not None and level in run.privacy["levels"]:
            images = _images(run.reconstructions, level)
            if f"{level}/truth" in images and key in images:
                usable.append(run)
    out = []
    for dataset in sorted({str(r.config.get("dataset", "")) for r in usable}):
        here = [r for r in usable if str(r.config.get("dataset", "")) == dataset]
        families: dict = {}
        for run in here:
            families.setdefault((run.strategy, settings[run.directory], str(run.config.get("labels", ""))),
                                []).append(run)

        def widths(family):
            return {(r.quantizer, str(r.bits), r.entropy_coding) for r in family}

        best = min(families, key=lambda k: (-len(widths(families[k])), k[0] == "fedavg", k))
        family = families[best]
        seeds = sorted({r.seed for r in family}, key=lambda s: (-len({(r.quantizer, str(r.bits), r.entropy_coding)
                                                                      for r in family if r.seed == s}), s))
        chosen = [r for r in family if r.seed == seeds[0]]
        out.append((dataset, sorted(chosen, key=lambda r: group_sort_key(r.group[:4]))))
    return out


def _width_label(run: Run, level: str = "public-base") -> str:
    text = run.quantizer if run.quantizer in REFERENCES else f"{run.quantizer} {run.bits} b"
    widths = run.privacy["levels"][level]["widths"]
    if run.bits == "auto":
        text += " (" + ", ".join(f"{m} {b}" for m, b in widths.items()) + ")"
    return text + (" + EC" if run.entropy_coding else "")


RECONSTRUCTION_ATTACKS = ("mlp-decoder", "learned-inversion")  # the figure's attack: the first the runs have


def reconstructions(runs: list[Run], out_dir: Path, note: str = "", attack: str | None = None,
                    level: str | None = None) -> list[Path]:
    """Originals, then a row per width: the reconstructions by `attack` (default: the first of
    `RECONSTRUCTION_ATTACKS` the runs have) at `level` (default: `strongest_level`) of one
    seed (`reconstruction_choice`). A row's label: the quantizer and bits, the attack's PSNR
    over all attacked samples of the run (privacy.json) and over the images shown. One figure
    per data set: `reconstructions`, then `reconstructions_<dataset>`."""
    written = []
    level = level or strongest_level(runs)
    if attack is None:
        attack = next((a for a in RECONSTRUCTION_ATTACKS if reconstruction_choice(runs, a, level)),
                      RECONSTRUCTION_ATTACKS[-1])
    image_key = f"{level}/truth"
    for i, (dataset, chosen) in enumerate(reconstruction_choice(runs, attack, level)):
        images = [_images(r.reconstructions, level) for r in chosen]
        truth = images[0][image_key]
        n = min(len(truth), MAX_IMAGES)
        fig, axes = plt.subplots(len(chosen) + 1, n, figsize=(1.25 * n + 2.4, 1.25 * (len(chosen) + 1) + 1.0),
                                 squeeze=False)
        first = chosen[0].privacy["levels"][level]
        rows = [(f"original\n(mean image:\n{first['baselines']['mean_image']['psnr']:.2f} dB)", truth)]
        for run, arrays in zip(chosen, images):
            rec = arrays[f"{level}/{attack}"]
            scores = run.privacy["levels"][level]["attacks"].get(attack, {})
            same = np.array_equal(arrays[image_key][:n], truth[:n])
            label = (f"{_width_label(run, level)}\nPSNR {scores.get('psnr', math.nan):.2f} dB\n"
                     f"(these {n}: {_psnr(rec[:n], arrays[image_key][:n]):.2f} dB)")
            rows.append((label + ("" if same else "\nother samples!"), rec))
        for r, (label, block) in enumerate(rows):
            for c in range(n):
                ax = axes[r][c]
                if c < len(block):
                    _show(ax, block[c])
                else:
                    ax.set_axis_off()
            axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        run = chosen[0]
        context = ", ".join(x for x in (dataset, run.strategy, privacy_settings(runs)[run.directory],
                                        f"labels at the {run.config.get('labels', '?')}", f"seed {run.seed}") if x)
        fig.suptitle(plots._title(f"{attack} at the {level} level: the same {n} training images at each "
                                  f"width\n({context})", note), fontsize=10)
        written += plots._save(fig, Path(out_dir), "reconstructions" + plots.dataset_suffix(dataset, first=i == 0))
    return written


# --- the trade-off ---------------------------------------------------------------------------
def _point_label(row) -> str:
    if row.quantizer in REFERENCES:
        return row.quantizer
    if str(row.bits) == "auto":
        return f"auto ({row.image_bits:g} b)"
    return f"{row.bits} b"


def tradeoff(table: pd.DataFrame, runs: list[Run], out_dir: Path, note: str = "",
             attack: str = "best") -> list[Path]:
    """Task accuracy (y) against the leakage of `attack` (x), a point per width at each
    knowledge level (filled, solid: public-base; hollow: trained-quantizer dash-dot, private-base
    dashed, white-box dotted),
    labelled with its bits,
    coloured by the activation bytes it sends up per training sample (log colour scale), with
    95% t intervals over seeds on both axes. The left panel's leakage is attack accuracy
    (whether the class of a training image can be read off its reconstruction): it runs from
    chance (nothing leaked) to the classifier's accuracy on the clean images (everything), so
    a point's place between the two lines reads directly; the right panel's is PSNR, beside
    the mean-image guess (without classes, the PSNR panel alone). FedAvg (whole model, no cut,
    so no point on the leakage axis) is a horizontal accuracy line."""
    p = prefix(attack)
    if f"{p}_psnr" not in table:
        images = [n for n, k in attacks_of(table) if k == "image"]
        if not images:
            return []
        attack, p = images[0], prefix(images[0])
    rows = table[table[f"{p}_psnr"].notna()]
    if rows.empty:
        return []
    panels = []
    if f"{p}_attack_accuracy" in rows and rows[f"{p}_attack_accuracy"].notna().any():
        panels.append((f"{p}_attack_accuracy", f"attack accuracy of the {attack} (fraction classified right)"))
    panels.append((f"{p}_psnr", f"PSNR of the {attack} reconstructions (dB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.8 * len(panels) + 1.0, 6.4), sharey=True, squeeze=False)
    axes = list(axes[0])
    cax = axes[-1].inset_axes([1.03, 0.0, 0.035, 1.0])  # the colour bar, right of the last panel
    sizes = rows.act_up_ideal_bytes_per_sample.to_numpy(dtype=float)
    sizes = sizes[np.isfinite(sizes) & (sizes > 0)]
    low, high = (float(sizes.min()), float(sizes.max())) if len(sizes) else (1.0, 1.0)
    if not high > low:
        low, high = low / 2, high * 2
    norm = matplotlib.colors.LogNorm(vmin=low, vmax=high)
    cmap = plt.get_cmap("viridis")
    strategies = list(dict.fromkeys(rows.strategy))
    marker_of = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(strategies)}
    curves = _curves(rows)
    for ax, (column, xlabel) in zip(axes, panels):
        for key, _, g in curves:
            x = g[column].to_numpy(dtype=float)
            y = g.accuracy.to_numpy(dtype=float)
            ax.plot(x, y, color="0.55", linewidth=0.9, linestyle=_style(key["level"]), zorder=1)
            ax.errorbar(x, y, xerr=plots._bars(x, g[f"{column}_ci95_low"], g[f"{column}_ci95_high"]),
                        yerr=plots._bars(y, g.accuracy_ci95_low, g.accuracy_ci95_high), fmt="none",
                        ecolor="0.75", elinewidth=0.8, capsize=2, zorder=2)
            colour = cmap(norm(g.act_up_ideal_bytes_per_sample.to_numpy(dtype=float)))
            hollow = key["level"] != "public-base"
            ax.scatter(x, y, marker=marker_of[key["strategy"]], s=80, zorder=3,
                       facecolors="none" if hollow else colour, edgecolors=colour if hollow else "black",
                       linewidths=2.0 if hollow else 0.6)
            for i, (row, xi, yi) in enumerate(zip(g.itertuples(index=False), x, y)):
                # above and below in turn: neighbouring widths often leak alike
                ax.annotate(_point_label(row), (xi, yi), xytext=(6, 5 if i % 2 == 0 else -12),
                            textcoords="offset points", fontsize=8)
        if column.endswith("attack_accuracy"):
            _references(ax, rows, "classifier_chance", "chance (nothing leaked)", "", 3, ":", "grey", vertical=True)
            _references(ax, rows, "classifier_clean_accuracy", "clean images (all leaked)", "", 3, "-.", "black",
                        vertical=True)
            left, right = ax.get_xlim()
            ax.set_xlim(max(left, 0.0), min(right, 1.0))
            ax.set_title("Accuracy vs attack accuracy (up and left is better)")
        else:
            _references(ax, rows, f"{p}_baseline_psnr", "public mean image guessed", " dB", 2, ":", "black",
                        vertical=True)
            left, right = ax.get_xlim()
            ax.set_xlim(max(left, 0.0), right)  # an MSE of at most 1: PSNR >= 0 dB
            ax.set_title("Accuracy vs PSNR of the reconstructions (up and left is better)")
        _fedavg_lines(ax, runs, rows)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    plots._fraction_limits(axes[0])
    axes[0].set_ylabel("test accuracy (exact match, fraction)")
    handles = [matplotlib.lines.Line2D([], [], marker=marker_of[s], linestyle="none", markerfacecolor="white",
                                       markeredgecolor="black", label=s) for s in strategies]
    if (rows.level != "public-base").any():
        for level in [lv for lv in LINE_STYLES if (rows.level == lv).any()]:
            filled = level == "public-base"
            style = STYLE_NAMES[LINE_STYLES[level]]
            handles.append(matplotlib.lines.Line2D(
                [], [], marker="o", color="0.55", linestyle=LINE_STYLES[level],
                markerfacecolor="0.55" if filled else "none", markeredgecolor="black" if filled else "0.3",
                label=f"{level} ({'filled' if filled else 'hollow'}, {style})"))
    for ax in axes:
        ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=8, loc="lower right")
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label("activation bytes sent up per training sample (ideal, log scale)")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    bar.ax.yaxis.set_major_formatter(plain)
    bar.ax.yaxis.set_minor_formatter(plain)
    fig.suptitle(plots._title(f"Choosing a width: accuracy vs leakage ({_task(table, runs)}; a point per width, "
                              "labelled with its bits; bars: 95% t CI over seeds)", note))
    return plots._save(fig, Path(out_dir), "tradeoff")


def _fedavg_lines(ax, runs: list[Run], rows: pd.DataFrame) -> None:
    """FedAvg's mean accuracy (its 95% t interval in the legend) per data set of `rows` and
    FedAvg setting."""
    many = rows.dataset.nunique() > 1
    for dataset in sorted(set(rows.dataset)):
        groups: dict = {}
        for run in runs:
            if run.strategy == "fedavg" and str(run.config.get("dataset", "")) == dataset:
                groups.setdefault(run.settings, []).append(float(run.summary["accuracy"]))
        for settings, accuracies in sorted(groups.items()):
            iv = t_interval(accuracies)
            ci = "n/a" if not iv.available else f"{iv.half_width:.3f}"
            where = ", ".join(x for x in (dataset if many else "", settings) if x)
            ax.axhline(iv.mean, color="black", linestyle="--", linewidth=1.0,
                       label=f"FedAvg (whole model, no cut{', ' + where if where else ''}): {iv.mean:.3f} ± {ci}")
