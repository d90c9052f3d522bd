"""The privacy table: what an honest-but-curious server recovered from what crossed the cut,
per width, beside the baselines that show what recovering nothing looks like.

Read from each run's privacy.json (`analysis.run_dirs.read_privacy`): one report per knowledge
level, "public-base" (the attacker knows the public base model, its client part included),
"trained-quantizer" (the public base with the client's trained quantizer, where it has
weights), "private-base" (the run's base model) and, for the strategies that send client
weights through the server (sequential, SplitFed), "white-box". Runs without privacy.json are not in the table.

Rows: strategy, dataset, settings (the other config keys, the attack keys included, in which
the attacked runs differ; empty when they share them), quantizer, bits (`image_bits` /
`text_bits`: the width of each modality the attacks saw), entropy coding, labels (where the
labels are: server, client, u-shaped) and the knowledge level. Columns, over the seeds of a
row (`seeds`):

- every score with an interval has its mean, `_ci95_low`, `_ci95_high` and `_ci95_half_width`
  (95% Student t interval over the seeds, `analysis.stats`; NaN with one seed), and each
  attack `<attack>_seeds`, the seeds it ran in. Attack names have `_` for `-`;
- image attacks (`nearest_code`, `knn_mean`, `code_classifier`, `learned_inversion`,
  `mlp_decoder`, `conv_decoder`, `rmle`, `unsplit`): `_psnr` (dB, data range 1), `_ssim`,
  `_mse` (pixels in [0, 1]) and `_attack_accuracy` (the attack classifier applied to the
  reconstructions), with intervals; `_baseline_psnr`, `_baseline_ssim`, `_baseline_mse` (the
  public mean image guessed for the same samples), `_samples` and `_seconds` (means);
- `best`, the leakage: per run the best of its image attacks per metric (the highest PSNR,
  SSIM and attack accuracy, the lowest MSE; `privacy.json`'s "best"), then with intervals
  over seeds as for an attack; `best_<metric>_attack` names the attacks that gave it (over the
  seeds, the most frequent first); `best_token_accuracy` likewise for the text attacks;
- the information ceiling (`privacy.json`'s "ceiling", means with intervals):
  `ceiling_image_bits` and `ceiling_text_bits`, the entropy-coded bits per sample that crossed
  per modality (what no attack can exceed), `ceiling_image_raw_bits` (packed at fixed width);
  `image_entropy_bits`, `class_entropy_bits` and `text_entropy_bits`, the public data's own
  estimates;
- text attacks (`nearest_token`, `learned_token`): `_token_accuracy` with its interval;
  `_baseline_accuracy` (the positional prior), `_tokens` and `_seconds` (means);
- label inference (`labels`): `labels_accuracy` (and, U-shaped, `labels_pairwise_direction_accuracy`)
  with intervals; `labels_chance`, `labels_majority_baseline` (`labels_pairwise_baseline`),
  `labels_seconds` (means) and `labels_method`;
- the level's baselines (means): `mean_image_psnr`, `_ssim`, `_mse` (over all attacked
  samples), `classifier_clean_accuracy` (the attack classifier on the clean images: the
  ceiling of attack accuracy) and `classifier_chance`;
- the training of the same runs: `accuracy` (final test accuracy, with its interval),
  `act_up_ideal_bytes_per_sample` and `effective_bits` (as in the comm table); `samples`
  (training samples attacked), `public_images` (the attacker's public slice) and `attack`.

Accuracies are fractions, not percent. The markdown / LaTeX tables show fewer columns
(`shown`); the CSV has them all.
"""

from __future__ import annotations

import math

import pandas as pd

from . import comm_table
from sltestbed.label_protocol import PROTOCOLS

from .comm_table import NOT_AVAILABLE, _nan, _plus_minus, run_figures
from .run_dirs import (
    ATTACK_KEYS,
    ATTACK_KINDS,
    BASELINE_KEYS,
    QUANTIZER_ORDER,
    Run,
    attack_kind,
)
from .stats import t_interval

LEVELS = ("public-base", "trained-quantizer", "private-base", "white-box")
# per kind of attack: the scores given with an interval over seeds, and those given as means
INTERVAL_SCORES = {"image": ("psnr", "ssim", "mse", "attack_accuracy"), "text": ("token_accuracy",),
                   "labels": ("accuracy", "pairwise_direction_accuracy", "pairwise_zero_threshold_accuracy")}
BEST = {"psnr": "psnr", "ssim": "ssim", "mse": "mse", "attack_accuracy": "attack_accuracy"}  # image metrics
CEILING = ("ceiling_image_bits", "ceiling_image_raw_bits", "ceiling_text_bits", "image_entropy_bits",
           "class_entropy_bits", "text_entropy_bits")
MEAN_SCORES = {"image": ("baseline_psnr", "baseline_ssim", "baseline_mse", "samples", "seconds"),
               "text": ("baseline_accuracy", "tokens", "seconds"),
               "labels": ("chance", "majority_baseline", "pairwise_baseline", "seconds")}
# a score every attack of a kind has (read_privacy checks it): how its columns are found
MARKERS = {"image": "baseline_psnr", "text": "baseline_accuracy", "labels": "majority_baseline"}
KEYS = ["strategy", "dataset", "settings", "quantizer", "bits", "image_bits", "text_bits", "entropy_coding", "labels",
        "level"]
LEVEL_BASELINES = tuple(f"mean_image_{k}" for k in BASELINE_KEYS) + ("classifier_clean_accuracy", "classifier_chance")
CAPTION = ("Leakage per width: what an honest-but-curious server recovered from what crossed the cut, per knowledge "
           "level (public-base: a base model trained on public data only; trained-quantizer: that base with the "
           "client's trained quantizer; private-base: the run's base model, "
           "trained on the clients' data; white-box: also the client weights the protocol sent it). Leakage is "
           "the best attack per metric and run (the attack that gave it named), mean over seeds ± the half-width "
           "of the 95% Student t interval over seeds (n/a: one seed); every attack's own scores are in the CSV. "
           "The ceiling: entropy-coded bits per image that crossed, which no attack can exceed. PSNR in dB (data "
           "range 1); accuracies are fractions. Baselines: the public mean image guessed for every sample (PSNR), "
           "the attack classifier on the clean images and chance (attack accuracy), the bits that name the class "
           "(ceiling), the positional token prior (token accuracy), chance and the majority answer (label "
           "accuracy; only where the labels stay on the client).")


def prefix(attack: str) -> str:
    """The column prefix of an attack: 'learned-inversion' -> 'learned_inversion'."""
    return attack.replace("-", "_")


def privacy_settings(runs: list[Run]) -> dict:
    """Per attacked run (by directory): the settings and attack keys, less the data set and the
    labels (columns of their own), in which the attacked runs differ, as "key=value, ..."."""
    attacked = [r for r in runs if r.privacy]
    all_settings = [{**{k: v for k, v in r.settings_of().items() if k not in ("dataset", "labels")},
                     **{k: r.config.get(k) for k in ATTACK_KEYS}} for r in attacked]
    keys = []
    for s in all_settings:
        keys += [k for k in s if k not in keys]
    varying = [k for k in keys if len({repr(s.get(k)) for s in all_settings}) > 1]
    return {r.directory: ", ".join(f"{k}={s.get(k)}" for k in varying) for r, s in zip(attacked, all_settings)}


def _float(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def per_level(runs: list[Run]) -> pd.DataFrame:
    """One row per attacked run and knowledge level: its scores (columns as in the module doc,
    before the means over seeds)."""
    settings = privacy_settings(runs)
    rows = []
    for run in (r for r in runs if r.privacy):
        figures = run_figures(run)
        for level, report in run.privacy["levels"].items():
            widths = report["widths"]
            row = {"strategy": run.strategy, "dataset": str(run.config.get("dataset", "")),
                   "settings": settings[run.directory], "quantizer": run.quantizer, "bits": run.bits,
                   "image_bits": _float(widths.get("image")), "text_bits": _float(widths.get("text")),
                   "entropy_coding": run.entropy_coding, "labels": str(report["labels"]), "level": str(level),
                   "seed": run.seed, "run": run.name, "attack": str(run.privacy["attack"]),
                   "public_images": _float(run.privacy.get("public_images")), "samples": _float(report["samples"]),
                   "accuracy": figures["accuracy"],
                   "act_up_ideal_bytes_per_sample": figures["act_up_ideal_bytes_per_sample"],
                   "effective_bits": figures["effective_bits"]}
            baselines = report["baselines"]
            row.update({f"mean_image_{k}": _float(baselines["mean_image"][k]) for k in BASELINE_KEYS})
            row["classifier_clean_accuracy"] = _float(baselines.get("classifier_clean_accuracy"))
            row["classifier_chance"] = _float(baselines.get("classifier_chance"))
            best = report.get("best", {})
            if any(m in best for m in BEST):
                row.update({f"best_baseline_{k}": row[f"mean_image_{k}"] for k in BASELINE_KEYS})
            for metric in tuple(BEST) + ("token_accuracy",):
                if isinstance(best.get(metric), dict):
                    row[f"best_{metric}"] = _float(best[metric].get("value"))
                    row[f"best_{metric}_attack"] = str(best[metric].get("attack"))
            ceiling = report.get("ceiling", {})
            for modality in ("image", "text"):
                cell = ceiling.get(modality, {})
                row[f"ceiling_{modality}_bits"] = _float(cell.get("coded_bits_per_sample"))
                if modality == "image":
                    row["ceiling_image_raw_bits"] = _float(cell.get("raw_bits_per_sample"))
            for key in ("image_bits", "class_bits", "text_bits"):
                row[key.replace("_bits", "_entropy_bits")] = _float(ceiling.get(key))
            for name, scores in report["attacks"].items():
                kind = attack_kind(name, scores)
                if kind is None:
                    continue
                p = prefix(name)
                for key in INTERVAL_SCORES[kind] + MEAN_SCORES[kind]:
                    if key in scores:
                        row[f"{p}_{key}"] = _float(scores[key])
                if kind == "image":
                    row.update({f"{p}_baseline_{k}": _float(scores["baseline"][k]) for k in BASELINE_KEYS})
                if "method" in scores:
                    row[f"{p}_method"] = str(scores["method"])
            rows.append(row)
    return pd.DataFrame(rows)


def attacks_of(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The attacks with scores in `frame` (per_level's or the table's), as (name, kind): image,
    text, then label attacks, the known ones in their order, others after them by name. An
    attack is found by a score every attack of its kind has (`MARKERS`)."""
    found = {}
    for column in frame.columns:
        for kind, marker in MARKERS.items():
            if column.endswith("_" + marker):
                found[column[: -len(marker) - 1]] = kind
    ordered = []
    for kind, names in ATTACK_KINDS.items():
        known = [n for n in names if found.get(prefix(n)) == kind]
        others = sorted(p.replace("_", "-") for p, k in found.items()
                        if k == kind and p not in [prefix(n) for n in names])
        ordered += [(n, kind) for n in known + others]
    return ordered


def sort_key(row) -> tuple:
    """Split strategies (FedAvg last), data set, settings, labels, level, then the widths in
    the order of the other figures (quantizers as QUANTIZER_ORDER, fewer bits first, auto last)."""
    q = QUANTIZER_ORDER.index(row["quantizer"]) if row["quantizer"] in QUANTIZER_ORDER else len(QUANTIZER_ORDER)
    level = LEVELS.index(row["level"]) if row["level"] in LEVELS else len(LEVELS)
    bits = row["bits"]
    return (row["strategy"] == "fedavg", row["strategy"], row["dataset"], row["settings"], row["labels"], level,
            str(row["level"]), q, row["quantizer"], bits == "auto", bits if bits != "auto" else 0,
            _sortable(row["image_bits"]), _sortable(row["text_bits"]), bool(row["entropy_coding"]))


def _sortable(value) -> float:
    return math.inf if _nan(value) else float(value)


def _interval(row: dict, column: str, values) -> None:
    iv = t_interval(values)
    row.update({column: iv.mean, f"{column}_ci95_low": iv.low, f"{column}_ci95_high": iv.high,
                f"{column}_ci95_half_width": iv.half_width})


def privacy_table(runs: list[Run]) -> pd.DataFrame:
    """One row per (strategy, dataset, settings, quantizer, bits, entropy coding, labels,
    level): means over its seeds with their intervals (module doc). ValueError when no run
    has privacy.json, or when two runs of one row have the same seed."""
    frame = per_level(runs)
    if frame.empty:
        raise ValueError("no run has privacy.json: nothing to tabulate")
    frame["bits_key"] = frame.bits.astype(str)
    group_keys = [k if k != "bits" else "bits_key" for k in KEYS]
    for _, g in frame.groupby(group_keys + ["seed"], sort=False, dropna=False):
        if len(g) > 1:
            raise ValueError(f"two attacked runs of one setting with the same seed {g.seed.iloc[0]}: "
                             + " and ".join(sorted(set(g.run))))
    attacks = attacks_of(frame)
    rows = []
    for _, g in frame.groupby(group_keys, sort=False, dropna=False):
        row = {k: g[k].iloc[0] for k in KEYS}
        row["seeds"] = len(g)
        _interval(row, "accuracy", g.accuracy)
        for column in ("act_up_ideal_bytes_per_sample", "effective_bits", "samples", "public_images"):
            row[column] = float(g[column].mean())
        row["attack"] = ", ".join(sorted(set(g.attack)))
        row.update({c: float(g[c].mean()) for c in LEVEL_BASELINES})
        for column in CEILING + ("best_token_accuracy",):
            if column in g and g[column].notna().any():
                _interval(row, column, g[column])
        for column in [c for c in g.columns if c.startswith("best_") and c.endswith("_attack")]:
            counts = g[column].dropna().value_counts()
            row[column] = ", ".join(f"{name} ({n})" for name, n in counts.items())
        for name, kind in attacks:
            p = prefix(name)
            first = f"{p}_{INTERVAL_SCORES[kind][0]}"
            row[f"{p}_seeds"] = int(g[first].notna().sum())
            for key in INTERVAL_SCORES[kind]:
                if f"{p}_{key}" in g:
                    _interval(row, f"{p}_{key}", g[f"{p}_{key}"])
            for key in MEAN_SCORES[kind]:
                if f"{p}_{key}" in g:
                    row[f"{p}_{key}"] = float(g[f"{p}_{key}"].mean())
            if f"{p}_method" in g:
                row[f"{p}_method"] = ", ".join(sorted(set(g[f"{p}_method"].dropna())))
        rows.append(row)
    table = pd.DataFrame(rows)
    table = table.iloc[sorted(range(len(table)), key=lambda i: sort_key(table.iloc[i]))].reset_index(drop=True)
    return table


# --- the shown tables -------------------------------------------------------------------------
def _bits(row) -> str:
    """'2', 'fp32', or '2 (image 4, text 2)' where the modalities differ, 'auto (image 3, text 2)'."""
    if row.quantizer in ("fp32", "fp16", "bf16"):
        return str(row.bits)
    image, text = row.image_bits, row.text_bits
    same = not _nan(image) and not _nan(text) and image == text and str(row.bits) == str(int(image))
    if same or (_nan(image) and _nan(text)):
        return str(row.bits)
    parts = [f"{m} {int(v)}" for m, v in (("image", image), ("text", text)) if not _nan(v)]
    return f"{row.bits} ({', '.join(parts)})"


def _pair(a, b, digits: int) -> str:
    return " / ".join(NOT_AVAILABLE if _nan(v) else f"{v:.{digits}f}" for v in (a, b))


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The columns the markdown / LaTeX tables show, formatted as text: the headline score of
    each attack (image attacks: PSNR and attack accuracy; SSIM and MSE are in the CSV) with
    its interval, and the baselines beside them."""
    out = pd.DataFrame()
    out["strategy"] = table.strategy.astype(str)
    if table.dataset.nunique() > 1:
        out["dataset"] = table.dataset.astype(str)
    if (table.settings.astype(str) != "").any():
        out["settings"] = table.settings.astype(str)
    out["quantizer"] = table.quantizer.astype(str)
    out["bits"] = [_bits(row) for row in table.itertuples(index=False)]
    if table.entropy_coding.astype(bool).any():
        out["entropy coding"] = ["yes" if v else "no" for v in table.entropy_coding]
    out["labels"] = table.labels.astype(str)
    out["knowledge"] = table.level.astype(str)
    out["seeds"] = table.seeds.astype(str)
    out["task acc."] = [_plus_minus(m, h, 3) for m, h in zip(table.accuracy, table.accuracy_ci95_half_width)]
    attacks = attacks_of(table)
    image = [(n, prefix(n)) for n, k in attacks if k == "image"]
    if any(n == "best" for n, _ in image):  # the leakage, and the lookup every attack must match
        image = [(n, p) for n, p in image if n in ("best", "nearest-code")]
    for name, p in image:
        title = "best attack" if name == "best" else name
        if f"{p}_attack_accuracy" in table:
            out[f"{title}: attack acc."] = [_plus_minus(m, h, 3) for m, h in zip(
                table[f"{p}_attack_accuracy"], table[f"{p}_attack_accuracy_ci95_half_width"])]
            if name == "best" and "best_attack_accuracy_attack" in table:
                out["by"] = table["best_attack_accuracy_attack"].fillna("").astype(str)
        if name == "nearest-code" and f"{p}_attack_accuracy" in table:
            continue  # the lookup's attack accuracy: the floor every reported leakage must reach
        out[f"{title}: PSNR (dB)"] = [_plus_minus(m, h, 2) for m, h in zip(table[f"{p}_psnr"],
                                                                           table[f"{p}_psnr_ci95_half_width"])]
        if name == "best":
            out[f"{title}: SSIM"] = [_plus_minus(m, h, 3) for m, h in zip(table[f"{p}_ssim"],
                                                                        table[f"{p}_ssim_ci95_half_width"])]
    if image:
        out["mean-image PSNR (dB)"] = ["" if _nan(v) else f"{v:.2f}" for v in table.mean_image_psnr]
        if table.classifier_clean_accuracy.notna().any():
            out["clean acc. / chance"] = [_pair(a, b, 3) for a, b in zip(table.classifier_clean_accuracy,
                                                                          table.classifier_chance)]
    if "ceiling_image_bits" in table and table.ceiling_image_bits.notna().any():
        out["ceiling (bits / image)"] = ["" if _nan(v) else f"{v:,.1f}" for v in table.ceiling_image_bits]
        if table.class_entropy_bits.notna().any():
            out["class bits"] = ["" if _nan(v) else f"{v:.2f}" for v in table.class_entropy_bits]
    text = [(n, prefix(n)) for n, k in attacks if k == "text"]
    for name, p in text:
        out[f"{name}: token acc."] = [_plus_minus(m, h, 3) for m, h in zip(
            table[f"{p}_token_accuracy"], table[f"{p}_token_accuracy_ci95_half_width"])]
    if text:
        p = text[0][1]
        out["token prior"] = ["" if _nan(v) else f"{v:.3f}" for v in table[f"{p}_baseline_accuracy"]]
    for name, p in ((n, prefix(n)) for n, k in attacks if k == "labels"):
        title = "label" if name == "labels" else f"{name}:"
        out[f"{title} acc."] = ["sent" if _nan(m) and _labels_sent(labels) else _plus_minus(m, h, 3)
                               for m, h, labels in zip(table[f"{p}_accuracy"], table[f"{p}_accuracy_ci95_half_width"],
                                                       table.labels)]
        out[f"{title} chance / majority"] = ["" if _nan(a) and _nan(b) else _pair(a, b, 3)
                                             for a, b in zip(table[f"{p}_chance"], table[f"{p}_majority_baseline"])]
    return out.fillna("")


def _labels_sent(labels) -> bool:
    """With the labels at the server they are sent, not inferred: no accuracy to show."""
    return labels in PROTOCOLS and not PROTOCOLS[labels].private


def write_table(table: pd.DataFrame, out_dir, caption: str = CAPTION) -> list:
    """privacy_table.csv (every column, full precision), .md and .tex (`shown`, under the caption)."""
    return comm_table.write_table(table, out_dir, stem="privacy_table", caption=caption, show=shown)
