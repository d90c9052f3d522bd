"""The privacy analysis on run directories written here by hand: privacy.json and
reconstructions.npz beside the files every run has, 2 seeds, several widths, a sequential
strategy attacked at both knowledge levels, and runs without attacks that the privacy table
leaves out. Every expected figure is worked out by hand from the scores below; no Flower,
no torch."""

import csv
import json
import math
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from analysis import comm_table as ct
from analysis import plots, privacy, privacy_plots
from analysis.__main__ import main as analysis_main
from analysis.run_dirs import load_run, load_runs

T_975_1 = 12.706  # Student t, 97.5% quantile, 1 degree of freedom (2 seeds)
CLIENTS = [{"node_id": 1, "partition": 0, "train_size": 100, "test_size": 20},
           {"node_id": 2, "partition": 1, "train_size": 300, "test_size": 20}]  # 400 training samples
ELEMENTS = 1000  # activation elements sent up in the run's one round
RUN_CONFIG = {"strategy": "parallel", "quantizer": "learned", "bits": 2, "image-bits": 0, "text-bits": 0,
              "entropy-coding": False, "dataset": "digits-vqa", "preset": "tiny", "cut": "connector",
              "labels": "server", "num-rounds": 1, "local-epochs": 1, "lr": 0.002, "seed": 0, "attack": "inversion",
              "public-size": 100, "attack-samples": 64, "attack-steps": 100, "output-dir": "", "run-name": ""}
LEDGER_FIELDS = ["round", "step", "client", "direction", "kind", "elements", "bits", "ideal_bytes",
                 "serialized_bytes", "message_bytes", "message_type", "message"]

# --- the scores per (strategy, quantizer, bits, level), (seed 0, seed 1) -------------------------
# learned inversion: PSNR (dB) and attack accuracy; nearest-token: token accuracy
SCORES = {
    ("parallel", "learned", 1, "public-base"): ((11.0, 12.0), (0.20, 0.30), (0.60, 0.70)),
    ("parallel", "learned", 2, "public-base"): ((12.0, 14.0), (0.30, 0.50), (0.80, 0.90)),
    ("parallel", "learned", 4, "public-base"): ((14.0, 15.0), (0.50, 0.60), (0.90, 1.00)),
    ("parallel", "fp32", 32, "public-base"): ((16.0, 17.0), (0.70, 0.80), (1.00, 1.00)),
    ("sequential", "learned", 2, "public-base"): ((12.5, 13.5), (0.35, 0.45), (0.80, 0.90)),
    ("sequential", "learned", 2, "white-box"): ((15.0, 18.0), (0.60, 0.90), (0.85, 0.95)),
    ("sequential", "fp32", 32, "public-base"): ((16.5, 17.5), (0.70, 0.80), (1.00, 1.00)),
    ("sequential", "fp32", 32, "white-box"): ((20.0, 22.0), (0.85, 0.95), (1.00, 1.00)),
}
# per seed, the same at every width (the same samples are attacked)
MEAN_IMAGE_PSNR = (11.0, 11.5)
CLEAN_ACCURACY = (0.90, 0.94)
TOKEN_PRIOR = (0.58, 0.60)
LABEL_ACCURACY = (1.0, 0.98)
MAJORITY = (0.40, 0.30)
# final task accuracy per (strategy, quantizer, bits), (seed 0, seed 1)
ACCURACY = {("parallel", "learned", 1): (0.60, 0.50), ("parallel", "learned", 2): (0.70, 0.66),
            ("parallel", "learned", 4): (0.74, 0.70), ("parallel", "fp32", 32): (0.76, 0.72),
            ("parallel", "fp16", 16): (0.75, 0.73),  # no attacks
            ("sequential", "learned", 2): (0.65, 0.61), ("sequential", "fp32", 32): (0.70, 0.64),
            ("fedavg", "fp32", 32): (0.80, 0.78)}  # no attacks (no cut)
# reconstructions.npz: every reconstructed pixel is the true one plus this much (of 255)
OFFSET = {1: 51, 2: 34, 4: 17, 32: 0}  # PSNR 20 log10(255 / offset): 13.98, 17.50, 23.52 dB; 0: 100 dB


def image_scores(psnr: float) -> dict:
    return {"mse": 10 ** (-psnr / 10), "psnr": psnr, "ssim": psnr / 40}


def level_report(quantizer: str, bits: int, level: str, seed: int, scores: tuple) -> dict:
    (psnr, attack_accuracy, tokens) = (s[seed] for s in scores)
    baseline = image_scores(MEAN_IMAGE_PSNR[seed])
    return {
        "quantizer": quantizer, "widths": {"image": bits, "text": bits}, "level": level, "cut": "connector",
        "labels": "server", "samples": 64, "batch_size": 32, "batches": 2, "seed": seed,
        "baselines": {"mean_image": baseline, "classifier_clean_accuracy": CLEAN_ACCURACY[seed],
                      "classifier_chance": 0.1},
        "attacks": {
            "learned-inversion": {**image_scores(psnr), "samples": 64, "seconds": 2.0 + seed, "baseline": baseline,
                                  "attack_accuracy": attack_accuracy,
                                  "client_part": "client weights" if level == "white-box" else "base"},
            "nearest-token": {"token_accuracy": tokens, "baseline_accuracy": TOKEN_PRIOR[seed], "tokens": 300,
                              "seconds": 0.5},
            "labels": {"method": "labels-at-server", "accuracy": LABEL_ACCURACY[seed], "chance": 1 / 12,
                       "majority_baseline": MAJORITY[seed], "seconds": 0.001},
        },
    }


def tiny_images(seed: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """4 RGB images of 2 x 2 pixels (distinct per seed) and their reconstructions."""
    truth = (np.arange(4 * 3 * 2 * 2).reshape(4, 3, 2, 2) * 2 + 100 * seed).astype(np.uint8)
    return truth, (truth.astype(int) + offset).astype(np.uint8)


def write_run(root: Path, strategy: str, quantizer: str, bits: int, seed: int, levels=(), **config) -> Path:
    """A run directory with one round: client 0 sends ELEMENTS activations at `bits` and its
    labels up, gets the gradients down; with `levels`, privacy.json and reconstructions.npz."""
    run_config = {**RUN_CONFIG, "strategy": strategy, "quantizer": quantizer, "bits": bits, "seed": seed,
                  "attack": "inversion" if levels else "none", **config}
    name = f"{strategy}-{quantizer}-{bits}b-seed{seed}" + "".join(f"-{k}{v}" for k, v in sorted(config.items()))
    directory = root / name
    directory.mkdir(parents=True)
    act = ELEMENTS * bits // 8
    rows = [(1, 0, 0, "up", "activations", ELEMENTS, bits, act, act + 38, act + 100, "train.step", 1),
            (1, 0, 0, "up", "labels", 10, 32, 40, 50, act + 100, "train.step", 1),
            (1, -1, 0, "down", "gradients", ELEMENTS, 32, 4 * ELEMENTS, 4 * ELEMENTS + 56, 4 * ELEMENTS + 200,
             "evaluate.forward", 2)]
    with open(directory / "ledger.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LEDGER_FIELDS)
        writer.writerows(rows)
    accuracy = ACCURACY[(strategy, quantizer, bits)][seed]
    (directory / "metrics.csv").write_text(f"round,accuracy\n1,{accuracy}\n")
    (directory / "config.json").write_text(json.dumps({"config": run_config, "clients": CLIENTS}))
    if levels:
        reports, arrays = {}, {}
        for level in levels:
            reports[level] = level_report(quantizer, bits, level, seed, SCORES[(strategy, quantizer, bits, level)])
            arrays[f"{level}/truth"], arrays[f"{level}/learned-inversion"] = tiny_images(seed, OFFSET[bits])
        (directory / "privacy.json").write_text(json.dumps({"attack": "inversion", "public_images": 100,
                                                            "levels": reports}))
        np.savez_compressed(directory / "reconstructions.npz", **arrays)
    summary = {"accuracy": accuracy, "strategy": strategy, "quantizer": quantizer, "bits": bits,
               "entropy_coding": False, "seed": seed}
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


def write_all(root: Path) -> Path:
    for (strategy, quantizer, bits) in ACCURACY:
        levels = sorted({k[3] for k in SCORES if k[:3] == (strategy, quantizer, bits)}, key=privacy.LEVELS.index)
        for seed in (0, 1):
            write_run(root, strategy, quantizer, bits, seed, levels)
    return root


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def runs(runs_dir):
    return load_runs([runs_dir])


@pytest.fixture(scope="module")
def table(runs):
    return privacy.privacy_table(runs)


def row_of(table, strategy, quantizer, bits, level):
    rows = table[(table.strategy == strategy) & (table.quantizer == quantizer) & (table.bits.astype(str) == str(bits))
                 & (table.level == level)]
    assert len(rows) == 1
    return rows.iloc[0]


def interval(a, b):
    """(mean, low, high) of two seeds by hand: s / sqrt(2) = |a - b| / 2."""
    mean, half = (a + b) / 2, T_975_1 * abs(a - b) / 2
    return mean, mean - half, mean + half


# --- the table ---------------------------------------------------------------------------------
def test_one_row_per_width_and_level_in_the_bits_order(table):
    keys = [(r.strategy, r.quantizer, r.bits, r.level) for r in table.itertuples(index=False)]
    assert keys == [("parallel", "learned", 1, "public-base"), ("parallel", "learned", 2, "public-base"),
                    ("parallel", "learned", 4, "public-base"), ("parallel", "fp32", 32, "public-base"),
                    ("sequential", "learned", 2, "public-base"), ("sequential", "fp32", 32, "public-base"),
                    ("sequential", "learned", 2, "white-box"), ("sequential", "fp32", 32, "white-box")]
    assert set(table.seeds) == {2} and set(table.labels) == {"server"} and set(table.dataset) == {"digits-vqa"}
    assert set(table.settings) == {""}  # the attacked runs share every setting


def test_means_and_t_intervals_over_seeds_by_hand(table):
    row = row_of(table, "parallel", "learned", 2, "public-base")
    # PSNR 12 and 14: mean 13, half-width 12.706 * 1; attack accuracy 0.3 and 0.5: 0.4 ± 1.2706
    for column, (a, b) in (("learned_inversion_psnr", (12.0, 14.0)), ("learned_inversion_attack_accuracy", (0.3, 0.5)),
                           ("learned_inversion_ssim", (0.30, 0.35)),
                           ("learned_inversion_mse", (10 ** -1.2, 10 ** -1.4)),
                           ("nearest_token_token_accuracy", (0.8, 0.9)), ("labels_accuracy", (1.0, 0.98)),
                           ("accuracy", (0.70, 0.66))):
        mean, low, high = interval(a, b)
        half = T_975_1 * abs(a - b) / 2
        assert row[column] == pytest.approx(mean), column
        assert row[f"{column}_ci95_half_width"] == pytest.approx(half, rel=1e-4), column  # t rounded to 12.706
        assert (row[f"{column}_ci95_low"], row[f"{column}_ci95_high"]) == pytest.approx((low, high), abs=1e-4 * half)
    assert (row.learned_inversion_psnr_ci95_low, row.learned_inversion_psnr_ci95_high) == pytest.approx(
        (13 - 12.706, 13 + 12.706), abs=1e-3)
    assert row.learned_inversion_seeds == row.nearest_token_seeds == row.labels_seeds == 2
    white = row_of(table, "sequential", "learned", 2, "white-box")  # 15 and 18: 16.5 ± 19.059
    assert (white.learned_inversion_psnr, white.learned_inversion_psnr_ci95_half_width) == pytest.approx(
        (16.5, 12.706 * 1.5), rel=1e-4)
    fp32 = row_of(table, "parallel", "fp32", 32, "public-base")  # token accuracy 1 and 1: no spread
    assert (fp32.nearest_token_token_accuracy_ci95_low, fp32.nearest_token_token_accuracy_ci95_high) == (1.0, 1.0)


def test_baselines_beside_the_scores(table):
    row = row_of(table, "sequential", "fp32", 32, "white-box")
    assert row.mean_image_psnr == pytest.approx(11.25)  # 11.0 and 11.5
    assert row.learned_inversion_baseline_psnr == pytest.approx(11.25)
    assert row.mean_image_ssim == pytest.approx((11.0 + 11.5) / 80)
    assert row.classifier_clean_accuracy == pytest.approx(0.92) and row.classifier_chance == pytest.approx(0.1)
    assert row.nearest_token_baseline_accuracy == pytest.approx(0.59)
    assert row.labels_chance == pytest.approx(1 / 12) and row.labels_majority_baseline == pytest.approx(0.35)
    assert row.labels_method == "labels-at-server" and row.attack == "inversion"
    assert (row.samples, row.public_images, row.learned_inversion_seconds) == (64, 100, 2.5)


def test_bytes_per_sample_of_the_same_runs(table):
    # ELEMENTS activations at b bits, once, over 400 training samples and 1 epoch
    for bits, expected in ((1, 125 / 400), (2, 250 / 400), (4, 500 / 400), (32, 4000 / 400)):
        quantizer = "fp32" if bits == 32 else "learned"
        row = row_of(table, "parallel", quantizer, bits, "public-base")
        assert row.act_up_ideal_bytes_per_sample == pytest.approx(expected)
        assert row.effective_bits == pytest.approx(bits)
        assert (row.image_bits, row.text_bits) == (bits, bits)


def test_runs_without_privacy_are_left_out(runs, table):
    assert not any(r.privacy for r in runs if r.strategy == "fedavg" or r.quantizer == "fp16")
    assert "fedavg" not in set(table.strategy) and "fp16" not in set(table.quantizer)
    assert len(table) == len(SCORES)
    # the attack keys change no training: the fp16 run (attack none) pairs with the attacked fp32 run
    comm = {(r.strategy, r.quantizer): r for r in ct.comm_table(runs).itertuples(index=False)}
    assert comm[("parallel", "fp16")].settings == ""
    assert comm[("parallel", "fp16")].accuracy_vs_fp32 == pytest.approx(0.0)  # -0.01 and +0.01
    assert not math.isnan(comm[("parallel", "learned")].reduction_vs_fedavg)  # FedAvg (attack none) is its reference
    with pytest.raises(ValueError, match="no run has privacy.json"):
        privacy.privacy_table([r for r in runs if not r.privacy])


def test_one_seed_has_no_interval(tmp_path):
    write_run(tmp_path, "parallel", "learned", 2, 0, ["public-base"])
    row = privacy.privacy_table(load_runs([tmp_path])).iloc[0]
    assert row.seeds == 1 and row.learned_inversion_psnr == 12.0
    assert math.isnan(row.learned_inversion_psnr_ci95_low) and math.isnan(row.learned_inversion_psnr_ci95_half_width)
    shown = privacy.shown(privacy.privacy_table(load_runs([tmp_path])))
    assert shown["learned-inversion: PSNR (dB)"].iloc[0] == "12.00 ± n/a"


def test_the_csv_and_the_shown_tables(table, tmp_path):
    paths = privacy.write_table(table, tmp_path)
    assert [p.name for p in paths] == ["privacy_table.csv", "privacy_table.md", "privacy_table.tex"]
    with open(tmp_path / "privacy_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(SCORES)
    first = rows[1]  # parallel, learned 2, public-base
    assert (first["strategy"], first["quantizer"], first["bits"], first["level"]) == (
        "parallel", "learned", "2", "public-base")
    for column in ("dataset", "settings", "labels", "seeds", "learned_inversion_psnr_ci95_low",
                   "learned_inversion_attack_accuracy_ci95_high", "learned_inversion_baseline_psnr", "mean_image_psnr",
                   "classifier_clean_accuracy", "classifier_chance", "nearest_token_token_accuracy_ci95_half_width",
                   "nearest_token_baseline_accuracy", "labels_accuracy", "labels_chance", "labels_majority_baseline",
                   "accuracy_ci95_low", "act_up_ideal_bytes_per_sample"):
        assert column in first, column
    assert float(first["learned_inversion_psnr_ci95_high"]) == pytest.approx(13 + 12.706, rel=1e-4)
    md = (tmp_path / "privacy_table.md").read_text()
    assert md.startswith("Leakage per width") and "95% Student t interval" in md
    table_rows = [[c.strip() for c in x.strip("|").split("|")] for x in md.splitlines() if x.startswith("| parallel")]
    cells, = [c for c in table_rows if c[:3] == ["parallel", "learned", "2"]]
    assert cells[:6] == ["parallel", "learned", "2", "server", "public-base", "2"]
    assert "13.00 ± 12.71" in cells and "0.400 ± 1.271" in cells and "11.25" in cells and "0.920 / 0.100" in cells
    assert "dataset" not in md.splitlines()[2]  # one data set: no column for it
    tex = (tmp_path / "privacy_table.tex").read_text()
    assert r"13.00 $\pm$ 12.71" in tex and r"\caption{Leakage per width" in tex


def test_a_dataset_column_and_settings_where_attacked_runs_differ(tmp_path, monkeypatch):
    for seed in (0, 1):
        write_run(tmp_path, "parallel", "learned", 2, seed, ["public-base"])
        write_run(tmp_path, "parallel", "learned", 2, seed, ["public-base"], dataset="other-vqa")
        write_run(tmp_path, "parallel", "learned", 4, seed, ["public-base"], dataset="other-vqa")
        write_run(tmp_path, "parallel", "learned", 4, seed, ["public-base"], **{"attack-steps": 500})
    table = privacy.privacy_table(load_runs([tmp_path]))
    keys = [(r.dataset, r.settings, r.bits) for r in table.itertuples(index=False)]
    assert keys == [("digits-vqa", "attack-steps=100", 2), ("digits-vqa", "attack-steps=500", 4),
                    ("other-vqa", "attack-steps=100", 2), ("other-vqa", "attack-steps=100", 4)]
    shown = privacy.shown(table)
    assert list(shown.columns[:3]) == ["strategy", "dataset", "settings"]
    figures = {}

    def keep(fig, out_dir, stem):
        figures[stem] = fig
        plots.plt.close(fig)
        return [stem]

    monkeypatch.setattr(plots, "_save", keep)
    assert privacy_plots.reconstructions(load_runs([tmp_path]), tmp_path) == ["reconstructions",
                                                                             "reconstructions_other-vqa"]
    assert "other-vqa" in figures["reconstructions_other-vqa"]._suptitle.get_text()


def test_two_attacked_runs_of_one_row_and_seed_are_refused(tmp_path):
    write_run(tmp_path / "a", "parallel", "learned", 2, 0, ["public-base"])
    write_run(tmp_path / "b", "parallel", "learned", 2, 0, ["public-base"])
    with pytest.raises(ValueError, match="two attacked runs of one setting with the same seed 0"):
        privacy.privacy_table(load_runs([tmp_path]))
    # one training attacked twice with other budgets: the comm table names the attack keys
    write_run(tmp_path / "c", "parallel", "learned", 4, 0, ["public-base"])
    write_run(tmp_path / "c", "parallel", "learned", 4, 0, ["public-base"], **{"attack-steps": 500})
    with pytest.raises(ValueError, match="they differ in attack-steps: attack keys, which change no training"):
        ct.comm_table(load_runs([tmp_path / "c"]))


# --- bad privacy.json ------------------------------------------------------------------------
def _drop(report: dict, path: tuple) -> dict:
    node = report
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return report


@pytest.mark.parametrize("path, problem", [
    (("levels",), "lacks 'levels'"),
    (("attack",), "lacks 'attack'"),
    (("levels", "public-base", "attacks"), "level 'public-base' lacks 'attacks'"),
    (("levels", "public-base", "widths"), "level 'public-base' lacks 'widths'"),
    (("levels", "public-base", "baselines", "mean_image"), "lacks the mean-image baseline"),
    (("levels", "public-base", "attacks", "learned-inversion", "psnr"), "attack 'learned-inversion' lacks 'psnr'"),
    (("levels", "public-base", "attacks", "learned-inversion", "baseline", "ssim"),
     "attack 'learned-inversion' lacks 'baseline"),
    (("levels", "public-base", "attacks", "nearest-token", "token_accuracy"),
     "attack 'nearest-token' lacks 'token_accuracy'"),
    (("levels", "public-base", "attacks", "labels", "majority_baseline"), "attack 'labels' lacks 'majority_baseline'"),
])
def test_a_privacy_json_lacking_a_key_is_named(tmp_path, path, problem, capsys):
    run = write_run(tmp_path / "runs", "parallel", "learned", 2, 0, ["public-base"])
    report = json.loads((run / "privacy.json").read_text())
    (run / "privacy.json").write_text(json.dumps(_drop(report, path)))
    with pytest.raises(ValueError, match=re.escape(str(run / "privacy.json")) + ".*" + re.escape(problem)):
        load_run(run)
    assert analysis_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(run / "privacy.json") in err and problem in err


def test_a_privacy_json_that_is_no_json_or_has_no_levels_is_named(tmp_path):
    run = write_run(tmp_path, "parallel", "learned", 2, 0, ["public-base"])
    (run / "privacy.json").write_text("{not json")
    with pytest.raises(ValueError, match="privacy.json is not valid JSON"):
        load_run(run)
    (run / "privacy.json").write_text(json.dumps({"attack": "inversion", "levels": {}}))
    with pytest.raises(ValueError, match="privacy.json: 'levels' must map each knowledge level"):
        load_run(run)


def test_the_attacks_of_attack_all_get_their_own_columns_and_panels(tmp_path, monkeypatch):
    for seed in (0, 1):
        run = write_run(tmp_path, "parallel", "learned", 2, seed, ["public-base"])
        report = json.loads((run / "privacy.json").read_text())
        report["attack"] = "all"
        report["levels"]["public-base"]["attacks"]["rmle"] = {
            **image_scores(20.0 + seed), "samples": 32, "seconds": 9.0, "attack_accuracy": 0.8,
            "baseline": image_scores(10.0 + seed)}
        (run / "privacy.json").write_text(json.dumps(report))
    write_run(tmp_path, "parallel", "learned", 4, 0, ["public-base"])  # attack inversion: no rmle
    table = privacy.privacy_table(load_runs([tmp_path]))
    assert privacy.attacks_of(table) == [("learned-inversion", "image"), ("rmle", "image"), ("nearest-token", "text"),
                                         ("labels", "labels")]
    two, four = table.iloc[0], table.iloc[1]
    assert (two.rmle_psnr, two.rmle_baseline_psnr, two.rmle_seeds, two.attack) == (20.5, 10.5, 2, "all")
    assert two.rmle_psnr_ci95_half_width == pytest.approx(T_975_1 * 0.5, rel=1e-4)
    assert math.isnan(four.rmle_psnr) and four.rmle_seeds == 0 and four.seeds == 1
    shown = privacy.shown(table)
    assert list(shown["rmle: PSNR (dB)"]) == ["20.50 ± 6.35", ""]
    kept = {}

    def keep(fig, out_dir, stem):
        kept[stem] = fig
        return []

    monkeypatch.setattr(plots, "_save", keep)
    privacy_plots.privacy_vs_bits(table, load_runs([tmp_path]), tmp_path)
    titles = [ax.get_title() for ax in kept["privacy_vs_bits"].axes]
    plots.plt.close(kept["privacy_vs_bits"])
    assert titles[:4] == ["learned-inversion: PSNR (higher: more recovered)",
                          "learned-inversion: the class recognised in the reconstructions",
                          "rmle: PSNR (higher: more recovered)", "rmle: the class recognised in the reconstructions"]


def test_an_unreadable_reconstructions_file_is_named(tmp_path):
    run = write_run(tmp_path, "parallel", "learned", 2, 0, ["public-base"])
    (run / "reconstructions.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="reconstructions.npz cannot be read as .npz"):
        privacy_plots.reconstructions(load_runs([tmp_path]), tmp_path)
    np.savez(run / "reconstructions.npz", **{"public-base/truth": np.zeros((2, 2), np.uint8)})
    with pytest.raises(ValueError, match="public-base/truth must be N x C x H x W uint8 images"):
        privacy_plots.reconstructions(load_runs([tmp_path]), tmp_path)


# --- the figures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def figures(runs, table):
    """The three figures, kept instead of written."""
    kept = {}

    def keep(fig, out_dir, stem):
        kept[stem] = fig
        return []

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", keep)
        privacy_plots.privacy_vs_bits(table, runs, Path("unused"), note="measured on a VM")
        privacy_plots.reconstructions(runs, Path("unused"), note="measured on a VM")
        privacy_plots.tradeoff(table, runs, Path("unused"), note="measured on a VM")
    yield kept
    for fig in kept.values():
        plots.plt.close(fig)


def test_leakage_vs_bits_draws_the_intervals_and_baselines(figures):
    fig = figures["privacy_vs_bits"]
    assert fig._suptitle.get_text().endswith("measured on a VM")
    psnr, accuracy, tokens, labels = fig.axes
    assert "dB" in psnr.get_ylabel() and "fraction" in accuracy.get_ylabel()
    for ax in fig.axes:
        assert "bits" in ax.get_xlabel() and "log scale" in ax.get_xlabel() and ax.get_title()
        assert ax.get_legend() is not None
        assert ax.get_xscale() == "log"
    assert sorted(psnr.get_xticks()) == [1, 2, 4, 32]
    bars = {c.get_label(): c for c in psnr.containers}
    assert set(bars) == {"parallel: learned (public-base)", "parallel: fp32 (public-base)",
                         "sequential: learned (public-base)", "sequential: fp32 (public-base)",
                         "sequential: learned (white-box)", "sequential: fp32 (white-box)"}
    segments = bars["parallel: learned (public-base)"].lines[2][0].get_segments()
    drawn = [bound for segment in segments for bound in segment[:, 1]]
    expected = [bound for b in (1, 2, 4) for bound in interval(*SCORES[("parallel", "learned", b, "public-base")][0])[1:]]
    assert drawn == pytest.approx(expected, abs=1e-3)  # 12 ± 6.353, 13 ± 12.706, 14.5 ± 6.353
    assert bars["sequential: learned (white-box)"].lines[0].get_linestyle() == ":"  # white-box dotted
    assert bars["sequential: learned (public-base)"].lines[0].get_linestyle() == "-"
    lines = {line.get_label(): line for line in psnr.get_lines() if line.get_label().startswith("public mean")}
    (label, line), = lines.items()
    assert label == "public mean image guessed: 11.25 dB" and tuple(line.get_ydata()) == (11.25, 11.25)
    references = {line.get_label() for line in accuracy.get_lines()}
    assert {"classifier on the clean images: 0.920", "chance: 0.100"} <= references
    assert {"positional prior: 0.590"} <= {line.get_label() for line in tokens.get_lines()}
    assert {"majority answer: 0.350", "chance: 0.083"} <= {line.get_label() for line in labels.get_lines()}


def test_leakage_vs_bits_is_one_figure_per_data_set_with_its_curves_named_once(tmp_path, monkeypatch):
    """Two data sets: `privacy_vs_bits` for the one with more rows, `privacy_vs_bits_<name>`
    for the other, each with only its own curves, named once in the figure's legend (the
    panels' legends hold reference lines); settings every row of a figure shares (its preset)
    are left out of its labels."""
    for bits in (1, 2):
        write_run(tmp_path, "parallel", "learned", bits, 0, ["public-base"], preset="tiny")
    write_run(tmp_path, "parallel", "learned", 2, 0, ["public-base"], dataset="shapes-vqa", preset="wide")
    runs = load_runs([tmp_path])
    table = privacy.privacy_table(runs)
    kept = {}

    def keep(fig, out_dir, stem):
        kept[stem] = fig
        return [Path(out_dir) / f"{stem}.png"]

    monkeypatch.setattr(plots, "_save", keep)
    written = privacy_plots.privacy_vs_bits(table, runs, tmp_path)
    assert [p.name for p in written] == ["privacy_vs_bits.png", "privacy_vs_bits_shapes-vqa.png"]
    try:
        for stem, dataset, ticks in (("privacy_vs_bits", "digits-vqa", [1, 2]),
                                     ("privacy_vs_bits_shapes-vqa", "shapes-vqa", [2])):
            fig = kept[stem]
            assert dataset in fig._suptitle.get_text()
            psnr = fig.axes[0]
            assert sorted(psnr.get_xticks()) == ticks
            (legend,) = fig.legends
            assert [t.get_text() for t in legend.get_texts()] == ["learned"]  # one level: not named
            assert not any("learned" in t.get_text() for t in psnr.get_legend().get_texts())
    finally:
        for fig in kept.values():
            plots.plt.close(fig)


def test_reconstructions_show_the_same_samples_at_each_width(figures, runs):
    (dataset, chosen), = privacy_plots.reconstruction_choice(runs)
    # parallel has the most widths; seed 0, the lowest; in the bits order of the other figures
    assert dataset == "digits-vqa" and [(r.strategy, r.quantizer, r.bits, r.seed) for r in chosen] == [
        ("parallel", "learned", 1, 0), ("parallel", "learned", 2, 0), ("parallel", "learned", 4, 0),
        ("parallel", "fp32", 32, 0)]
    fig = figures["reconstructions"]
    grid = np.array(fig.axes).reshape(5, 4)  # originals + 4 widths, 4 images each
    labels = [grid[r][0].get_ylabel() for r in range(5)]
    assert labels[0].startswith("original") and "11.00 dB" in labels[0]
    # the run's PSNR (privacy.json, seed 0) and that of the images shown: 20 log10(255 / offset)
    assert labels[1] == "learned 1 b\nPSNR 11.00 dB\n(these 4: 13.98 dB)"
    assert labels[2] == "learned 2 b\nPSNR 12.00 dB\n(these 4: 17.50 dB)"
    assert labels[3] == "learned 4 b\nPSNR 14.00 dB\n(these 4: 23.52 dB)"
    assert labels[4] == "fp32\nPSNR 16.00 dB\n(these 4: 100.00 dB)"
    truth, _ = tiny_images(0, 0)
    assert np.array_equal(grid[0][2].get_images()[0].get_array(), np.transpose(truth[2], (1, 2, 0)))
    assert np.array_equal(grid[2][2].get_images()[0].get_array(), np.transpose(truth[2], (1, 2, 0)) + 34)
    assert "seed 0" in fig._suptitle.get_text() and "parallel" in fig._suptitle.get_text()


def test_the_tradeoff_puts_a_point_per_width_coloured_by_bytes(figures):
    fig = figures["tradeoff"]
    left, right = fig.axes
    bar, = right.child_axes  # the colour bar, right of the last panel
    assert "attack accuracy" in left.get_xlabel() and "PSNR" in right.get_xlabel() and "dB" in right.get_xlabel()
    assert "fraction" in left.get_ylabel() and "bytes" in bar.get_ylabel() and "per training sample" in bar.get_ylabel()
    assert sorted(t.get_text() for t in left.texts) == sorted(["1 b", "2 b", "4 b", "fp32"] + ["2 b", "fp32"] * 2)
    points = np.concatenate([c.get_offsets() for c in left.collections if len(c.get_offsets())
                             and c.get_array() is None and len(c.get_offsets()) < 10])
    # parallel, learned 2: attack accuracy 0.4 (0.3, 0.5), task accuracy 0.68 (0.70, 0.66)
    assert any(np.allclose(p, (0.4, 0.68)) for p in points)
    # the colour scale: ideal activation bytes up per training sample, 125 / 400 to 4000 / 400
    assert bar.get_ylim() == pytest.approx((125 / 400, 10.0))
    fedavg = [line for line in left.get_lines() if line.get_label().startswith("FedAvg")]
    assert len(fedavg) == 1 and tuple(fedavg[0].get_ydata()) == pytest.approx((0.79, 0.79))
    assert {"chance (nothing leaked): 0.100", "clean images (all leaked): 0.920"} <= {
        line.get_label() for line in left.get_lines()}
    assert fig._suptitle.get_text().endswith("measured on a VM")


def test_the_command_writes_the_privacy_outputs(runs_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert analysis_main([str(runs_dir), "--out", str(out), "--network", "4g"]) == 0
    for stem in ("privacy_vs_bits", "reconstructions", "tradeoff"):
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
        height, width, _ = matplotlib.image.imread(png).shape
        assert height > 200 and width > 200, stem
    for name in ("privacy_table.csv", "privacy_table.md", "privacy_table.tex"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "Leakage per width" in printed and "13.00 ± 12.71" in printed
    wrote = printed.split("wrote ")[-1]
    for name in ("privacy_table.csv", "privacy_vs_bits.png", "reconstructions.png", "tradeoff.pdf"):
        assert str(out / name) in wrote


def test_without_privacy_the_command_writes_no_privacy_outputs(tmp_path, capsys):
    for seed in (0, 1):
        write_run(tmp_path / "runs", "parallel", "learned", 2, seed)
        write_run(tmp_path / "runs", "parallel", "fp32", 32, seed)
    assert analysis_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "comm_table.csv").is_file()
    assert not list((tmp_path / "out").glob("privacy*")) and not (tmp_path / "out" / "tradeoff.png").exists()
    assert "Leakage" not in capsys.readouterr().out


def test_every_knowledge_level_has_a_line_style_with_a_name():
    from analysis.privacy import LEVELS

    assert set(privacy_plots.LINE_STYLES) == set(LEVELS)
    assert set(privacy_plots.LINE_STYLES.values()) <= set(privacy_plots.STYLE_NAMES)
    assert len(set(privacy_plots.LINE_STYLES.values())) == len(LEVELS)  # one style a level
