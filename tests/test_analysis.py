"""The analysis on run directories written here by hand, in the format app/results.py
writes (config.json, summary.json, ledger.csv, metrics.csv): 2 seeds, 2 rounds, an fp32 twin
for every setting. Every expected figure below is worked out by hand from the payloads the
fixture puts in the ledgers; no Flower, no torch."""

import ast
import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pandas import testing as pd_testing

from analysis import comm_table as ct
from analysis import network, plots
from analysis.__main__ import main as analysis_main
from analysis.run_dirs import find_runs, load_run, load_runs
from analysis.stats import t_interval

T_975_1 = 12.706  # Student t, 97.5% quantile, 1 degree of freedom (2 seeds)
ENVELOPE = 100  # bytes a message adds to its payloads' serialized bytes (metadata, framing)
LAB = "lab=8,16,10"  # 8 Mbit/s up = 1e6 B/s, 16 Mbit/s down = 2e6 B/s, 10 ms round trip
UP, DOWN, RTT = 1e6, 2e6, 0.010
CLIENTS = [{"node_id": 7001, "partition": 0, "train_size": 100, "test_size": 40},
           {"node_id": 7002, "partition": 1, "train_size": 300, "test_size": 40}]  # 400 training samples

# --- payloads: (kind, elements, bits, ideal bytes, serialized bytes) ---------------------------
CONFIG = ("config", 5, 32, 20, 85)  # the meta a request carries
INFO = ("config", 4, 32, 16, 86)  # a discovery reply
SCORE = ("config", 3, 32, 12, 40)  # FedAvg's evaluation reply
MODEL = ("model", 500, 32, 2000, 2100)  # a client part (or FedAvg's whole model)


def acts(elements, bits):  # activations: the codec's 38-byte header over the packed codes
    ideal = elements * bits // 8
    return ("activations", elements, bits, ideal, ideal + 38)


def labels(n):
    return ("labels", n, 32, 4 * n, 4 * n + 10)


def grads(elements):  # fp32 gradients
    return ("gradients", elements, 32, 4 * elements, 4 * elements + 56)


# --- the exchanges of each strategy: (round, step, message type, {partition: (down, up)}) ------
def discovery():
    return [(0, 0, "query.info", {0: ([], [INFO]), 1: ([], [INFO])})]  # the requests carry no payload


def parallel(b):
    ex = discovery()
    for r in (1, 2):
        ex += [(r, 0, "train.step", {0: ([CONFIG], [acts(1000, b), labels(10)]),
                                     1: ([CONFIG], [acts(3000, b), labels(30)])}),
               (r, -1, "evaluate.forward", {0: ([grads(1000), CONFIG], [acts(2000, b)]),
                                            1: ([grads(3000), CONFIG], [acts(200, b)])})]
    return ex


def sequential(b):
    """Clients in turn, one step each; the client part is handed over through the server
    (query.part from its holder), and both clients evaluate in one exchange."""
    ex = discovery()
    for r in (1, 2):
        if r == 2:  # hand-over from the holder (client 1) to client 0
            ex.append((r, -1, "query.part", {1: ([CONFIG], [MODEL])}))
        ex += [(r, 0, "train.step", {0: ([MODEL, CONFIG] if r == 2 else [CONFIG], [acts(1000, b), labels(10)])}),
               (r, -1, "query.part", {0: ([grads(1000), CONFIG], [MODEL])}),
               (r, 0, "train.step", {1: ([MODEL, CONFIG], [acts(3000, b), labels(30)])}),
               (r, -1, "query.part", {1: ([grads(3000), CONFIG], [MODEL])}),
               (r, -1, "evaluate.forward", {0: ([MODEL, CONFIG], [acts(2000, b)]), 1: ([CONFIG], [acts(200, b)])})]
    return ex


def splitfed_v2(b):
    """Clients in turn (a random order each round), then the client parts collected from both
    at once for averaging, then both evaluate at once."""
    ex = discovery()
    for r, order in ((1, (1, 0)), (2, (0, 1))):
        for c in order:
            ex.append((r, 0, "train.step", {c: ([CONFIG], [acts(1000, b), labels(10)] if c == 0
                                                else [acts(3000, b), labels(30)])}))
        ex += [(r, -1, "query.part", {0: ([grads(1000), CONFIG], [MODEL]), 1: ([grads(3000), CONFIG], [MODEL])}),
               (r, -1, "evaluate.forward", {0: ([MODEL, CONFIG], [acts(2000, b)]),
                                            1: ([MODEL, CONFIG], [acts(200, b)])})]
    return ex


def fedavg():
    ex = discovery()
    for r in (1, 2):
        ex += [(r, 0, "train.local", {0: ([MODEL, CONFIG], [MODEL]), 1: ([MODEL, CONFIG], [MODEL])}),
               (r, -1, "evaluate.local", {0: ([MODEL, CONFIG], [SCORE]), 1: ([MODEL, CONFIG], [SCORE])})]
    return ex


RUN_CONFIG = {  # the keys and defaults of a run config, as config.json holds them
    "strategy": "parallel", "quantizer": "learned", "bits": 2, "image-bits": 0, "text-bits": 0, "auto-batches": 8,
    "auto-max-rel-mse": 0.05, "grad-quantizer": "fp32", "grad-bits": 0, "entropy-coding": False,
    "dataset": "digits-vqa", "preset": "tiny", "cut": "connector", "labels": "server", "num-rounds": 2,
    "local-epochs": 1, "batch-size": 64, "lr": 0.002, "seed": 0, "partitioner": "iid", "alpha": 0.5,
    "fraction": 1.0, "test-fraction": 0.8, "train-modules": "connector,quantizers,lm", "distortion-weight": 0.25,
    "base": "none", "base-epochs": 30, "base-lr": 0.003, "step-timeout": 60.0, "fault": "",
    "benchmark-roundtrips": 0, "save-model": False, "output-dir": "", "run-name": "", "cache-dir": ".cache/sltestbed"}
LEDGER_FIELDS = ["round", "step", "client", "direction", "kind", "elements", "bits", "ideal_bytes",
                 "serialized_bytes", "message_bytes", "message_type", "message"]
METRICS_FIELDS = ["round", "loss", "accuracy", "bytes_up", "bytes_down", "round_trips", "failures", "seconds"]


def write_run(root: Path, strategy: str, quantizer: str, bits: int, seed: int, accuracy: float, exchanges: list,
              **config) -> Path:
    """A run directory as app/results.py writes it. Messages are numbered in the order a
    strategy sends them: an exchange's requests (one per client), then the replies; a request
    without payloads is numbered but has no ledger row."""
    name = f"{strategy}-{quantizer}-{bits}b-seed{seed}"
    directory = root / name
    directory.mkdir(parents=True)
    rows, number = [], 2
    for rnd, step, mtype, per_client in exchanges:
        for direction, side in (("down", 0), ("up", 1)):
            for client, sides in per_client.items():
                number += 1
                size = sum(p[4] for p in sides[side]) + ENVELOPE
                for kind, elements, width, ideal, serialized in sides[side]:
                    assert ideal == math.ceil(elements * width / 8)
                    rows.append({"round": rnd, "step": step, "client": client, "direction": direction, "kind": kind,
                                 "elements": elements, "bits": width, "ideal_bytes": ideal,
                                 "serialized_bytes": serialized, "message_bytes": size, "message_type": mtype,
                                 "message": number})
    with open(directory / "ledger.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LEDGER_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    run_config = {**RUN_CONFIG, "strategy": strategy, "quantizer": quantizer, "bits": bits, "seed": seed,
                  "output-dir": str(root), "run-name": name, **config}
    rounds = sorted({e[0] for e in exchanges} - {0})
    with open(directory / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRICS_FIELDS)
        for r in rounds:
            here = [row for row in rows if row["round"] == r]
            writer.writerow([r, 1.0 / r, accuracy - 0.05 * (rounds[-1] - r),
                             sum(x["serialized_bytes"] for x in here if x["direction"] == "up"),
                             sum(x["serialized_bytes"] for x in here if x["direction"] == "down"),
                             sum(1 for e in exchanges if e[0] == r), 0, 1.5])
    totals: dict = {}
    for row in rows:
        cell = totals.setdefault(row["direction"], {}).setdefault(row["kind"], {"ideal": 0, "serialized": 0})
        cell["ideal"] += row["ideal_bytes"]
        cell["serialized"] += row["serialized_bytes"]
    summary = {"accuracy": accuracy, "accuracy_by_type": {"digit": accuracy}, "strategy": strategy,
               "quantizer": quantizer, "bits": bits, "modality_bits": {"image": bits, "text": bits},
               "grad_quantizer": "fp32", "grad_bits": 32, "labels": "server",
               "entropy_coding": bool(run_config["entropy-coding"]), "seed": seed,
               "num_rounds": run_config["num-rounds"], "clients": len(CLIENTS),
               "round_trips": len(exchanges), "seconds": 12.5, "failures": [], "bytes": totals}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2))
    (directory / "config.json").write_text(json.dumps(
        {"config": run_config, "seed": seed, "versions": {"python": "3.11.7", "flwr": "1.41.0"},
         "base_model": None, "clients": CLIENTS}, indent=2))
    return directory


# final accuracy per (strategy, quantizer) and seed
ACCURACY = {("parallel", "learned"): (0.870, 0.768), ("parallel", "fp16"): (0.895, 0.805),
            ("parallel", "fp32"): (0.900, 0.800),
            ("sequential", "learned"): (0.690, 0.620), ("sequential", "fp32"): (0.700, 0.600),
            ("splitfed-v2", "learned"): (0.700, 0.610), ("splitfed-v2", "fp32"): (0.750, 0.650),
            ("fedavg", "fp32"): (0.880, 0.790)}
LEDGERS = {"parallel": parallel, "sequential": sequential, "splitfed-v2": splitfed_v2}
BITS = {"learned": 2, "fp16": 16, "fp32": 32}


def write_all(root: Path, seeds=(0, 1)) -> Path:
    for (strategy, quantizer), accuracies in ACCURACY.items():
        for seed in seeds:
            exchanges = fedavg() if strategy == "fedavg" else LEDGERS[strategy](BITS[quantizer])
            write_run(root, strategy, quantizer, BITS[quantizer], seed, accuracies[seed], exchanges)
    return root


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def table(runs_dir):
    frame = ct.comm_table(load_runs([runs_dir]))
    return {(r.strategy, r.quantizer): r for r in frame.itertuples(index=False)}


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# --- the comm table ------------------------------------------------------------------------
def test_one_row_per_setting_with_two_seeds(table):
    assert set(table) == set(ACCURACY)
    assert {row.seeds for row in table.values()} == {2}
    assert {row.settings for row in table.values()} == {""}  # the runs share every other setting


def test_accuracy_mean_and_its_t_interval_over_seeds(table):
    row = table[("parallel", "learned")]
    se = (0.870 - 0.768) / 2  # 2 seeds: s / sqrt(2) = |a - b| / 2
    assert row.accuracy == pytest.approx(0.819)
    assert row.accuracy_ci95_half_width == pytest.approx(T_975_1 * se, rel=1e-4)  # 0.6480
    assert row.accuracy_ci95_low == pytest.approx(0.819 - T_975_1 * se, rel=1e-4)
    assert row.accuracy_ci95_high == pytest.approx(0.819 + T_975_1 * se, rel=1e-4)
    assert row.accuracy_std == pytest.approx(0.102 / math.sqrt(2))  # sample std, n - 1
    fedavg = table[("fedavg", "fp32")]
    assert (fedavg.accuracy, fedavg.accuracy_ci95_low, fedavg.accuracy_ci95_high) == pytest.approx(
        (0.835, 0.835 - T_975_1 * 0.045, 0.835 + T_975_1 * 0.045), rel=1e-4)


def test_bytes_of_a_run_at_every_level(table):
    row = table[("parallel", "learned")]
    # up per round: train.step 250+40 (client 0) and 750+120 (client 1), evaluation 500 and 50;
    # round 0: two discovery replies of 16
    expected = {
        "up_ideal_bytes": 2 * (250 + 40 + 750 + 120 + 500 + 50) + 2 * 16,  # 3452
        "up_serialized_bytes": 2 * (288 + 50 + 788 + 130 + 538 + 88) + 2 * 86,  # 3936
        "up_message_bytes": 2 * (438 + 1018 + 638 + 188) + 2 * 186,  # 4936
        "down_ideal_bytes": 2 * (20 + 20 + 4000 + 20 + 12000 + 20),  # 32160
        "down_serialized_bytes": 2 * (85 + 85 + 4056 + 85 + 12056 + 85),  # 32904
        "down_message_bytes": 2 * (185 + 185 + 4241 + 12241),  # 33704
    }
    assert expected == {"up_ideal_bytes": 3452, "up_serialized_bytes": 3936, "up_message_bytes": 4936,
                        "down_ideal_bytes": 32160, "down_serialized_bytes": 32904, "down_message_bytes": 33704}
    for column, total in expected.items():
        assert getattr(row, column) == total, column
        assert getattr(row, column + "_per_epoch") == pytest.approx(total / 2), column  # 2 rounds x 1 epoch
        assert getattr(row, column + "_per_sample") == pytest.approx(total / (2 * 400)), column  # 400 samples
    assert row.act_up_elements == 2 * (1000 + 3000 + 2000 + 200)
    assert row.act_up_ideal_bytes == 2 * (250 + 750 + 500 + 50)
    assert row.act_up_serialized_bytes == 2 * (288 + 788 + 538 + 88)
    assert row.act_up_ideal_bytes_per_sample == pytest.approx(3100 / 800)
    assert row.effective_bits == pytest.approx(2.0)
    assert table[("parallel", "fp16")].effective_bits == pytest.approx(16.0)


def test_reductions_against_fp16_fp32_and_fedavg(table):
    two, fp16, fp32 = table[("parallel", "learned")], table[("parallel", "fp16")], table[("parallel", "fp32")]
    assert fp16.act_up_ideal_bytes == 2 * (2000 + 6000 + 4000 + 400)  # 24800
    assert fp32.act_up_ideal_bytes == 2 * (4000 + 12000 + 8000 + 800)  # 49600
    assert two.reduction_vs_fp16 == pytest.approx(1 - 3100 / 24800)  # 0.875
    assert two.reduction_vs_fp16 == pytest.approx(0.875)
    assert two.reduction_vs_fp16_serialized == pytest.approx(1 - 3404 / (2 * (2038 + 6038 + 4038 + 438)))
    assert two.reduction_vs_fp32 == pytest.approx(1 - 3100 / 49600)  # 0.9375
    assert fp16.reduction_vs_fp32 == pytest.approx(0.5)
    assert fp32.reduction_vs_fp16 == pytest.approx(-1.0)
    # FedAvg: per round 2 x (2285 down + 2200 up) training, 2 x (2285 down + 140 up) evaluation
    fedavg_bytes = (2 * 2 * (2200 + 140) + 2 * 186) + 2 * 4 * 2285  # 9732 up + 18280 down
    assert fedavg_bytes == 28012
    assert two.reduction_vs_fedavg == pytest.approx(1 - (4936 + 33704) / 28012)
    # sequential has no fp16 run: fp16 is the same activations at 16 bits
    seq = table[("sequential", "learned")]
    assert seq.reduction_vs_fp16 == pytest.approx(1 - 3100 / (12400 * 16 / 8))
    assert math.isnan(seq.reduction_vs_fp16_serialized)
    assert seq.reduction_vs_fp32 == pytest.approx(1 - 3100 / 49600)
    seq_up = 2 * 186 + (438 + 2200 + 1018 + 2200 + 638 + 188) + (2200 + 438 + 2200 + 1018 + 2200 + 638 + 188)
    seq_down = (185 + 4241 + 2285 + 12241 + 2285 + 185) + (185 + 2285 + 4241 + 2285 + 12241 + 2285 + 185)
    assert (seq.up_message_bytes, seq.down_message_bytes) == (seq_up, seq_down) == (15936, 45129)
    assert seq.reduction_vs_fedavg == pytest.approx(1 - (15936 + 45129) / 28012)
    assert all(math.isnan(v) for v in (table[("fedavg", "fp32")].reduction_vs_fp16,
                                       table[("fedavg", "fp32")].reduction_vs_fedavg))


# --- paired differences to fp32 ----------------------------------------------------------------
def test_paired_difference_whose_interval_excludes_zero(table):
    row = table[("parallel", "learned")]  # per seed: 0.870 - 0.900 = -0.030, 0.768 - 0.800 = -0.032
    assert row.accuracy_vs_fp32 == pytest.approx(-0.031)
    assert row.accuracy_vs_fp32_ci95_half_width == pytest.approx(T_975_1 * 0.001, rel=1e-3)
    assert (row.accuracy_vs_fp32_ci95_low, row.accuracy_vs_fp32_ci95_high) == pytest.approx(
        (-0.031 - 0.012706, -0.031 + 0.012706), rel=1e-3)
    assert row.accuracy_vs_fp32_pairs == 2
    assert row.accuracy_vs_fp32_ci95_excludes_zero is True


def test_paired_differences_whose_interval_holds_zero(table):
    cases = {("parallel", "fp16"): (0.0, 0.005),  # -0.005, +0.005
             ("sequential", "learned"): (0.005, 0.015),  # -0.010, +0.020
             ("splitfed-v2", "learned"): (-0.045, 0.005)}  # -0.050, -0.040
    for key, (mean, se) in cases.items():
        row = table[key]
        assert row.accuracy_vs_fp32 == pytest.approx(mean, abs=1e-12), key
        assert (row.accuracy_vs_fp32_ci95_low, row.accuracy_vs_fp32_ci95_high) == pytest.approx(
            (mean - T_975_1 * se, mean + T_975_1 * se), rel=1e-3), key
        assert row.accuracy_vs_fp32_ci95_excludes_zero is False, key
    fp32 = table[("parallel", "fp32")]  # itself: differences 0 and 0
    assert (fp32.accuracy_vs_fp32, fp32.accuracy_vs_fp32_ci95_low, fp32.accuracy_vs_fp32_ci95_high) == (0, 0, 0)
    assert fp32.accuracy_vs_fp32_ci95_excludes_zero is False
    fedavg = table[("fedavg", "fp32")]  # not a split run: no fp32 twin to pair with
    assert math.isnan(fedavg.accuracy_vs_fp32) and fedavg.accuracy_vs_fp32_pairs == 0
    assert fedavg.accuracy_vs_fp32_ci95_excludes_zero is None


def test_pairs_need_the_same_settings(tmp_path):
    """An fp32 run that differs in another setting (here the learning rate) is no twin."""
    write_run(tmp_path, "parallel", "learned", 2, 0, 0.87, parallel(2), lr=0.01)
    write_run(tmp_path, "parallel", "learned", 2, 1, 0.77, parallel(2), lr=0.01)
    write_run(tmp_path, "parallel", "fp32", 32, 0, 0.90, parallel(32))
    write_run(tmp_path, "parallel", "fp32", 32, 1, 0.80, parallel(32))
    rows = {r.quantizer: r for r in ct.comm_table(load_runs([tmp_path])).itertuples(index=False)}
    assert rows["learned"].settings == "lr=0.01" and rows["fp32"].settings == "lr=0.002"
    assert math.isnan(rows["learned"].accuracy_vs_fp32) and rows["learned"].accuracy_vs_fp32_pairs == 0
    assert math.isnan(rows["learned"].reduction_vs_fp16_serialized)  # no fp16 run with lr=0.01 either
    assert rows["learned"].reduction_vs_fp32 == pytest.approx(1 - 3100 / (12400 * 4))  # by width: no twin row
    shown = ct.shown(ct.comm_table(load_runs([tmp_path])))
    assert list(zip(shown["settings"], shown["quantizer"])) == [("lr=0.002", "fp32"), ("lr=0.01", "learned")]


def test_a_run_from_before_a_key_existed_counts_at_its_default(tmp_path):
    """A run whose config.json predates a key (written by older code) ran at that key's
    default: it pairs with an fp32 run that records the default, and with none that sets
    another value. Where and how a run was written (tensorboard, checkpoint) never counts."""
    write_run(tmp_path, "parallel", "learned", 2, 0, 0.87, parallel(2))
    write_run(tmp_path, "parallel", "fp32", 32, 0, 0.90, parallel(32), precision="fp32", tensorboard=True)
    config = tmp_path / "parallel-learned-2b-seed0" / "config.json"
    stored = json.loads(config.read_text())
    stored["config"].pop("precision", None)
    config.write_text(json.dumps(stored))
    rows = {r.quantizer: r for r in ct.comm_table(load_runs([tmp_path])).itertuples(index=False)}
    assert rows["learned"].settings == rows["fp32"].settings == ""
    assert rows["learned"].accuracy_vs_fp32_pairs == 1
    write_run(tmp_path, "parallel", "fp32", 32, 1, 0.90, parallel(32), precision="bf16")
    runs = load_runs([tmp_path])
    assert {r.directory.name: r.settings for r in runs} == {
        "parallel-learned-2b-seed0": "precision=fp32", "parallel-fp32-32b-seed0": "precision=fp32",
        "parallel-fp32-32b-seed1": "precision=bf16"}


def test_each_data_set_gets_its_own_accuracy_figures(tmp_path, monkeypatch):
    """Accuracies of different tasks share no axis: the data set with the most runs draws
    accuracy_vs_bits (and the bytes and training-curve figures), another <name>_<dataset>,
    each from its own runs, whose labels leave out what they all share."""
    from analysis import plots

    write_run(tmp_path, "parallel", "learned", 2, 0, 0.87, parallel(2))
    write_run(tmp_path, "parallel", "fp32", 32, 0, 0.90, parallel(32))
    write_run(tmp_path / "shapes", "parallel", "fp32", 32, 0, 0.40, parallel(32), dataset="shapes-vqa",
              preset="wide")
    kept = {}

    def keep(fig, out_dir, stem):
        kept[stem] = fig
        return []

    monkeypatch.setattr(plots, "_save", keep)
    assert analysis_main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    try:
        assert {"accuracy_vs_bits", "accuracy_vs_bits_shapes-vqa", "accuracy_vs_bytes_shapes-vqa",
                "training_curves_shapes-vqa"} <= set(kept)
        digits, shapes = kept["accuracy_vs_bits"], kept["accuracy_vs_bits_shapes-vqa"]
        assert "digits-vqa" in digits._suptitle.get_text() and "shapes" not in digits._suptitle.get_text()
        assert "shapes-vqa" in shapes._suptitle.get_text()
        lines = [t.get_text() for t in digits.axes[0].get_legend().get_texts()]
        assert any(t.startswith("fp32: 0.9000") for t in lines) and not any("dataset=" in t for t in lines), lines
    finally:
        for fig in kept.values():
            plots.plt.close(fig)


def test_the_csv_and_the_shown_tables(runs_dir, tmp_path):
    frame = ct.comm_table(load_runs([runs_dir]))
    ct.write_table(frame, tmp_path, caption=ct.CAPTION)
    rows = {(r["strategy"], r["quantizer"]): r for r in read_csv(tmp_path / "comm_table.csv")}
    two = rows[("parallel", "learned")]
    for column in ("accuracy", "accuracy_ci95_low", "accuracy_ci95_high", "accuracy_ci95_half_width", "seeds",
                   "accuracy_vs_fp32", "accuracy_vs_fp32_ci95_low", "accuracy_vs_fp32_ci95_high",
                   "accuracy_vs_fp32_ci95_half_width", "accuracy_vs_fp32_pairs", "accuracy_vs_fp32_ci95_excludes_zero"):
        assert column in two, column
    assert float(two["accuracy_ci95_half_width"]) == pytest.approx(0.648, rel=1e-3) and two["seeds"] == "2"
    assert two["accuracy_vs_fp32_ci95_excludes_zero"] == "True"
    assert rows[("parallel", "fp16")]["accuracy_vs_fp32_ci95_excludes_zero"] == "False"
    assert rows[("fedavg", "fp32")]["accuracy_vs_fp32_ci95_excludes_zero"] == ""
    assert rows[("fedavg", "fp32")]["accuracy_vs_fp32"] == ""
    md = (tmp_path / "comm_table.md").read_text()
    assert md.startswith("Bytes across the cut") and "95% Student t interval" in md and "paired" in md
    line = next(x for x in md.splitlines() if x.startswith("| parallel") and "| learned" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:8] == ["parallel", "learned", "2", "no", "2", "0.8190 ± 0.6480", "-3.10 ± 1.27 pt", "yes"]
    fp16 = next(x for x in md.splitlines() if x.startswith("| parallel") and "| fp16" in x)
    assert [c.strip() for c in fp16.strip("|").split("|")][6:8] == ["+0.00 ± 6.35 pt", "no"]
    assert "87.50%" in line
    tex = (tmp_path / "comm_table.tex").read_text()
    assert r"$\pm$" in tex and "±" not in tex and r"$\Delta$" in tex and r"\caption{" in tex


def test_one_seed_gives_no_interval_and_no_crash(tmp_path, monkeypatch):
    write_run(tmp_path / "runs", "parallel", "learned", 2, 0, 0.87, parallel(2))
    write_run(tmp_path / "runs", "parallel", "fp32", 32, 0, 0.90, parallel(32))
    rows = {r.quantizer: r for r in ct.comm_table(load_runs([tmp_path / "runs"])).itertuples(index=False)}
    two = rows["learned"]
    assert two.seeds == 1 and two.accuracy == pytest.approx(0.87)
    assert all(math.isnan(v) for v in (two.accuracy_ci95_low, two.accuracy_ci95_high, two.accuracy_ci95_half_width,
                                       two.accuracy_std, two.accuracy_vs_fp32_ci95_low,
                                       two.accuracy_vs_fp32_ci95_high))
    assert two.accuracy_vs_fp32 == pytest.approx(-0.03) and two.accuracy_vs_fp32_pairs == 1
    assert two.accuracy_vs_fp32_ci95_excludes_zero is None
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, stem: drawn.append(stem) or plots.plt.close(fig) or [])
    assert analysis_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--network", LAB]) == 0
    assert drawn == ["accuracy_vs_bits", "accuracy_vs_bytes", "training_curves"]  # without intervals, not crashed
    line = next(x for x in (tmp_path / "out" / "comm_table.md").read_text().splitlines() if "| learned" in x)
    assert "0.8700 ± n/a" in line and "-3.00 ± n/a pt" in line and "| n/a " in line
    row = next(r for r in read_csv(tmp_path / "out" / "comm_table.csv") if r["quantizer"] == "learned")
    for column in ("accuracy_ci95_low", "accuracy_ci95_half_width", "accuracy_vs_fp32_ci95_excludes_zero"):
        assert row[column] == "", column


def write_calibration(run: Path, bits: int) -> None:
    """calibration.json as a bits="auto" run writes it: the choice, the grid, each client's report."""
    report = {m: {"modality": m, "bits": bits, "entropy_bits": 0.3, "needed_bits": 2.3, "batch_entropy": [0.29, 0.31],
                  "density": [[0.1, 0.5, 1.2, 0.5, 0.1], [0.2, 0.5, 1.0, 0.5, 0.2]],
                  "choice": {"bits": bits, "max_rel_mse": 0.05}} for m in ("image", "text")}
    (run / "calibration.json").write_text(json.dumps(
        {"bits": {"image": bits, "text": bits}, "grid": [-1.0, -0.5, 0.0, 0.5, 1.0],
         "clients": {"0": report, "1": report}}))


def test_bits_auto_is_a_row_of_its_own_with_its_calibration_figure(tmp_path, monkeypatch):
    for seed, (auto, fp32) in enumerate(((0.86, 0.90), (0.77, 0.80))):
        run = write_run(tmp_path / "runs", "parallel", "learned", "auto", seed, auto, parallel(3))
        write_calibration(run, 3)
        write_run(tmp_path / "runs", "parallel", "fp32", 32, seed, fp32, parallel(32))
    rows = {str(r.bits): r for r in ct.comm_table(load_runs([tmp_path / "runs"])).itertuples(index=False)}
    auto = rows["auto"]
    assert auto.quantizer == "learned" and auto.effective_bits == pytest.approx(3.0)
    assert auto.act_up_ideal_bytes == 2 * (375 + 1125 + 750 + 75)  # 1000, 3000, 2000, 200 elements at 3 bits
    assert auto.reduction_vs_fp32 == pytest.approx(1 - 3 / 32)
    assert auto.accuracy_vs_fp32 == pytest.approx(-0.035)  # -0.04 and -0.03
    assert auto.accuracy_vs_fp32_ci95_half_width == pytest.approx(T_975_1 * 0.005, rel=1e-3)
    titles = {}

    def keep(fig, out_dir, stem):
        titles[stem] = fig._suptitle.get_text()
        plots.plt.close(fig)
        return []

    monkeypatch.setattr(plots, "_save", keep)
    assert analysis_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--network", LAB,
                          "--note", "a test machine"]) == 0
    assert set(titles) == {"accuracy_vs_bits", "accuracy_vs_bytes", "training_curves", "entropy"}
    assert "relative MSE <= 0.05" in titles["entropy"] and all(t.endswith("a test machine") for t in titles.values())


def test_t_interval_against_hand_arithmetic():
    three = t_interval([0.80, 0.83, 0.86])  # mean 0.83, s = 0.03, t_{0.975,2} = 4.303
    assert (three.mean, three.n) == (pytest.approx(0.83), 3)
    assert three.half_width == pytest.approx(4.303 * 0.03 / math.sqrt(3), rel=1e-4)
    assert t_interval([0.5, float("nan"), 0.7]).n == 2  # a seed without a twin is left out
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.excludes_zero is None


# --- the network time model ---------------------------------------------------------------
def seconds(down, up):
    return down / DOWN + up / UP


def test_parallel_exchange_waits_for_its_slowest_client(runs_dir):
    run = load_run(runs_dir / "parallel-learned-2b-seed0")
    per_round = network.round_times(run, network.parse_link(LAB)).set_index("round")
    train = RTT + max(seconds(185, 438), seconds(185, 1018))  # client 1
    evaluate = RTT + max(seconds(4241, 638), seconds(12241, 188))  # client 1: more down, less up
    assert evaluate != pytest.approx(RTT + seconds(12241, 638))  # the slowest client, not the worst of each
    for r in (1, 2):
        assert per_round.seconds[r] == pytest.approx(train + evaluate, rel=1e-12)
        assert per_round.exchanges[r] == 2
        assert (per_round.up_bytes[r], per_round.down_bytes[r]) == (438 + 1018 + 638 + 188, 2 * 185 + 4241 + 12241)
    assert per_round.seconds[0] == pytest.approx(RTT + 186 / UP)  # discovery: replies only


def test_sequential_exchanges_have_one_client_but_evaluation_has_both(runs_dir):
    run = load_run(runs_dir / "sequential-learned-2b-seed0")
    per_round = network.round_times(run, network.parse_link(LAB)).set_index("round")
    evaluate = RTT + max(seconds(2285, 638), seconds(185, 188))  # both clients at once
    one = (RTT + seconds(185, 438)  # client 0 trains
           + RTT + seconds(4241, 2200)  # its part comes back
           + RTT + seconds(2285, 1018)  # client 1 trains with it
           + RTT + seconds(12241, 2200)  # the holder's part, for the evaluation
           + evaluate)
    two = (RTT + seconds(185, 2200)  # hand-over from client 1, the holder
           + RTT + seconds(2285, 438) + RTT + seconds(4241, 2200) + RTT + seconds(2285, 1018)
           + RTT + seconds(12241, 2200) + evaluate)
    assert (per_round.exchanges[1], per_round.exchanges[2]) == (5, 6)
    assert per_round.seconds[1] == pytest.approx(one, rel=1e-12)
    assert per_round.seconds[2] == pytest.approx(two, rel=1e-12)
    row = network.network_table([run], [network.parse_link(LAB)]).iloc[0]
    assert row.lab_seconds_per_round == pytest.approx((one + two) / 2, rel=1e-12)
    assert row.exchanges_per_round == 5.5
    assert row.lab_setup_seconds == pytest.approx(RTT + 186 / UP)


def test_splitfed_v2_turns_then_one_exchange_for_averaging_and_one_for_evaluation(runs_dir):
    run = load_run(runs_dir / "splitfed-v2-learned-2b-seed1")
    per_round = network.round_times(run, network.parse_link(LAB)).set_index("round")
    expected = (RTT + seconds(185, 1018) + RTT + seconds(185, 438)  # the clients in turn
                + RTT + max(seconds(4241, 2200), seconds(12241, 2200))  # both parts at once
                + RTT + max(seconds(2285, 638), seconds(2285, 188)))  # both evaluate at once
    for r in (1, 2):
        assert per_round.exchanges[r] == 4
        assert per_round.seconds[r] == pytest.approx(expected, rel=1e-12)


def test_network_table_means_over_seeds_per_setting(runs_dir):
    links = [network.parse_link(LAB), network.parse_link("4g")]
    frame = network.network_table(load_runs([runs_dir]), links)
    rows = {(r["strategy"], r["quantizer"]): r for _, r in frame.iterrows()}
    assert set(rows) == set(ACCURACY) and {r["seeds"] for r in rows.values()} == {2}
    fedavg = RTT + seconds(2285, 2200) + RTT + seconds(2285, 140)
    assert rows[("fedavg", "fp32")]["lab_seconds_per_round"] == pytest.approx(fedavg, rel=1e-12)
    # 4g: 5 Mbit/s up = 625,000 B/s, 20 Mbit/s down = 2,500,000 B/s, 60 ms
    fedavg_4g = 0.060 + 2285 / 2.5e6 + 2200 / 625e3 + 0.060 + 2285 / 2.5e6 + 140 / 625e3
    assert rows[("fedavg", "fp32")]["4g_seconds_per_round"] == pytest.approx(fedavg_4g, rel=1e-12)
    up = (4038 + 50 + 100) + (12038 + 130 + 100) + (8038 + 100) + (838 + 100)  # messages: payloads + envelope
    assert rows[("parallel", "fp32")]["up_bytes_per_round"] == up


def test_a_ledger_without_message_numbers_falls_back_to_its_keys(tmp_path, runs_dir):
    source = runs_dir / "parallel-learned-2b-seed0"
    copy = tmp_path / "old"
    shutil.copytree(source, copy)
    rows = read_csv(copy / "ledger.csv")
    with open(copy / "ledger.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LEDGER_FIELDS[:-1])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k != "message"} for r in rows)
    link = network.parse_link(LAB)
    old = network.round_times(load_run(copy), link)
    assert list(old.seconds) == pytest.approx(list(network.round_times(load_run(source), link).seconds), rel=1e-12)


def test_link_presets_are_pinned():
    assert network.PRESETS["4g"] == network.Link("4g", up_mbps=5.0, down_mbps=20.0, rtt_ms=60.0)
    assert network.PRESETS["wifi"] == network.Link("wifi", up_mbps=50.0, down_mbps=100.0, rtt_ms=10.0)
    assert network.PRESETS["ethernet"] == network.Link("ethernet", up_mbps=1000.0, down_mbps=1000.0, rtt_ms=1.0)
    assert set(network.PRESETS) == {"4g", "wifi", "ethernet"}
    assert network.parse_link("lab=8,16,10") == network.Link("lab", 8.0, 16.0, 10.0)


@pytest.mark.parametrize("text, problem", [
    ("dialup=1,2", "NAME=UP,DOWN,RTT with three numbers"),
    ("dialup=1,2,3,4", "three numbers"),
    ("dialup=fast,2,3", "three numbers"),
    ("dialup=", "three numbers"),
    ("=1,2,3", "no name"),
    ("dialup=0,2,3", "up_mbps must be a finite number > 0"),
    ("dialup=1,-2,3", "down_mbps must be a finite number > 0"),
    ("dialup=1,2,-3", "rtt_ms must be a finite number >= 0"),
    ("dialup=inf,2,3", "up_mbps must be a finite number"),
    ("dialup=1,nan,3", "down_mbps must be a finite number"),
    ("5g", "unknown network '5g'"),
])
def test_a_malformed_link_names_the_problem(text, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace("+", r"\+")):
        network.parse_link(text)


def test_two_links_with_one_name_are_refused(runs_dir):
    with pytest.raises(ValueError, match="two links with one name: lab"):
        network.network_table(load_runs([runs_dir]), [network.parse_link(LAB), network.parse_link("lab=1,1,1")])


# --- bad input ---------------------------------------------------------------------------
def test_a_missing_directory_is_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="no such directory: .*nowhere"):
        load_runs([tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="no such directory"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no finished runs under"):
        load_runs([tmp_path])  # exists, but holds no run
    assert analysis_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("lost", ["config.json", "ledger.csv", "metrics.csv"])
def test_a_run_missing_a_file_is_named(tmp_path, lost, capsys):
    run = write_run(tmp_path / "runs", "parallel", "learned", 2, 0, 0.87, parallel(2))
    (run / lost).unlink()
    with pytest.raises(ValueError, match=f"parallel-learned-2b-seed0 is not a finished run: it lacks {lost}"):
        load_run(run)
    with pytest.raises(ValueError, match=f"parallel-learned-2b-seed0 is not a complete run: .* lacks {lost}"):
        find_runs([tmp_path / "runs"])
    assert analysis_main([str(tmp_path / "runs"), "--out", str(tmp_path / "o")]) == 2
    assert f"lacks {lost}" in capsys.readouterr().err


def test_a_run_without_summary_is_unfinished_and_passed_over(tmp_path):
    write_run(tmp_path, "parallel", "learned", 2, 0, 0.87, parallel(2))
    (write_run(tmp_path, "parallel", "fp32", 32, 0, 0.90, parallel(32)) / "summary.json").unlink()
    assert [p.name for p in find_runs([tmp_path])] == ["parallel-learned-2b-seed0"]


def test_files_lacking_what_the_analysis_reads_are_named(tmp_path):
    run = write_run(tmp_path, "parallel", "learned", 2, 0, 0.87, parallel(2))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "accuracy"}))
    with pytest.raises(ValueError, match="summary.json lacks 'accuracy'"):
        load_run(run)
    (run / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="summary.json is not valid JSON"):
        load_run(run)
    (run / "summary.json").write_text(json.dumps(summary))
    rows = read_csv(run / "ledger.csv")
    with open(run / "ledger.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[c for c in LEDGER_FIELDS if c != "message_bytes"])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k != "message_bytes"} for r in rows)
    with pytest.raises(ValueError, match="ledger.csv lacks the column.* message_bytes"):
        load_run(run)
    (run / "ledger.csv").write_text(",".join(LEDGER_FIELDS) + "\n")
    with pytest.raises(ValueError, match="ledger.csv has no rows"):
        load_run(run)


def test_two_runs_of_one_setting_and_seed_are_refused(tmp_path):
    write_run(tmp_path / "a", "parallel", "learned", 2, 0, 0.87, parallel(2))
    write_run(tmp_path / "b", "parallel", "learned", 2, 0, 0.87, parallel(2))
    with pytest.raises(ValueError, match="two runs of one setting with the same seed 0"):
        ct.comm_table(load_runs([tmp_path]))


# --- the command and its figures -----------------------------------------------------------
def test_the_command_writes_every_output(runs_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert analysis_main([str(runs_dir), "--out", str(out), "--network", "4g", LAB, "--note", "a 2-core VM"]) == 0
    for name in ("comm_table.csv", "comm_table.md", "comm_table.tex", "network_time.csv", "network_time.md",
                 "accuracy_vs_bits.png", "accuracy_vs_bits.pdf", "accuracy_vs_bytes.png", "accuracy_vs_bytes.pdf",
                 "training_curves.png", "training_curves.pdf"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "accuracy_vs_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "a 2-core VM" in (out / "comm_table.md").read_text()
    assert "a 2-core VM" in (out / "network_time.md").read_text()
    times = {(r["strategy"], r["quantizer"]): r for r in read_csv(out / "network_time.csv")}
    assert float(times[("splitfed-v2", "fp32")]["exchanges_per_round"]) == 4
    printed = capsys.readouterr().out
    assert "16 runs from" in printed and "-3.10 ± 1.27 pt" in printed


def test_figures_draw_the_intervals_with_titles_units_and_legends(runs_dir, monkeypatch):
    figures = {}

    def keep(fig, out_dir, stem):
        figures[stem] = fig
        return []

    monkeypatch.setattr(plots, "_save", keep)
    runs = load_runs([runs_dir])
    frame = ct.comm_table(runs)
    plots.accuracy_vs_bits(frame, ct.paired_deltas(ct.per_run(runs)), runs, Path("unused"), note="measured on a VM")
    plots.accuracy_vs_bytes(runs, Path("unused"), note="measured on a VM")
    plots.training_curves(runs, Path("unused"), note="measured on a VM")
    try:
        for fig in figures.values():
            assert fig._suptitle.get_text().endswith("measured on a VM")
            assert "(" in fig.axes[0].get_ylabel()  # the unit, in brackets
            for ax in fig.axes:
                assert "(" in ax.get_xlabel() and ax.get_title()
            assert any(ax.get_legend() is not None for ax in fig.axes) or fig.legends
        accuracy, paired = figures["accuracy_vs_bits"].axes
        assert "fraction" in accuracy.get_ylabel() and "percentage points" in paired.get_ylabel()
        bars = {c.get_label(): c for c in accuracy.containers}
        (low, high), = [seg[:, 1] for seg in bars["parallel: learned"].lines[2][0].get_segments()]
        assert (low, high) == pytest.approx((0.819 - T_975_1 * 0.051, 0.819 + T_975_1 * 0.051), rel=1e-4)
        bars = {c.get_label(): c for c in paired.containers}
        (low, high), = [seg[:, 1] for seg in bars["parallel: learned"].lines[2][0].get_segments()]
        assert (low, high) == pytest.approx((-3.1 - 1.2706, -3.1 + 1.2706), rel=1e-3)  # percentage points
        over_bytes = figures["accuracy_vs_bytes"].axes[0]
        bars = {c.get_label(): c for c in over_bytes.containers}
        segments = bars["parallel: learned 2 b"].lines[2][0].get_segments()
        assert len(segments) == 2  # a bar per round: round 2's accuracies are the final ones
        assert segments[1][:, 1] == pytest.approx((0.819 - T_975_1 * 0.051, 0.819 + T_975_1 * 0.051), rel=1e-4)
        loss, accuracy = figures["training_curves"].axes
        line = next(l for l in accuracy.get_lines() if l.get_label().startswith("parallel: learned 2 b"))
        assert list(line.get_xdata()) == [1, 2] and line.get_ydata()[-1] == pytest.approx(0.819)
        bands = [c.get_paths()[0].vertices for c in accuracy.collections]  # fill_between: one per setting
        assert any(v[:, 1].max() == pytest.approx(0.819 + T_975_1 * 0.051, rel=1e-4) for v in bands)
        assert loss.get_yscale() == "log" and loss.get_lines()[0].get_ydata()[0] == pytest.approx(1.0)  # 1 / round
    finally:
        for fig in figures.values():
            plots.plt.close(fig)


def test_the_analysis_imports_no_torch():
    """Only the standard library, numpy, pandas, scipy, matplotlib, the package itself and the
    library's label protocol table and run-config defaults (which import nothing heavy): the rest
    of the project pulls in torch."""
    allowed = {"numpy", "pandas", "scipy", "matplotlib", "analysis"} | set(sys.stdlib_module_names)
    allowed_library = {"sltestbed.label_protocol", "sltestbed.experiment"}
    package = Path(__file__).resolve().parents[1] / "analysis"
    modules = sorted(package.glob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "__main__.py", "run_dirs.py", "stats.py", "comm_table.py",
                                         "network.py", "plots.py"}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed or name in allowed_library, f"{path.name} imports {name}"
    # What the lines above allow must not pull torch in at run time either.
    names = ", ".join(f"analysis.{p.stem}" for p in modules if p.stem != "__init__")
    probe = f"import sys, {names}; print(sorted(m for m in ('torch', 'transformers', 'flwr') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=package.parent)
    assert out.stdout.strip() == "[]", out.stdout


def test_archived_runs_read_as_the_originals(runs_dir, tmp_path):
    """analysis.archive packs each ledger (the same bytes every time: no name or time in the
    gzip header); a run that keeps only ledger.csv.gz reads as it did with ledger.csv."""
    from analysis import archive

    copy = tmp_path / "archived"
    shutil.copytree(runs_dir, copy)
    assert archive.main([str(copy)]) == 0
    packed = sorted(copy.rglob("ledger.csv.gz"))
    assert len(packed) == len(find_runs([runs_dir])) > 0
    first = packed[0].read_bytes()
    packed[0].unlink()
    archive.pack_ledger(packed[0].parent)
    assert packed[0].read_bytes() == first
    assert archive.pack_ledger(packed[0].parent) is None  # up to date: nothing to do
    for ledger in copy.rglob("ledger.csv"):
        ledger.unlink()
    before = {run.directory.name: run for run in load_runs([runs_dir])}
    after = {run.directory.name: run for run in load_runs([copy])}
    assert before.keys() == after.keys()
    for name, run in after.items():
        pd_testing.assert_frame_equal(run.ledger, before[name].ledger)
    assert ct.comm_table(load_runs([copy])).equals(ct.comm_table(load_runs([runs_dir])))
    (copy / packed[0].parent.name / "ledger.csv.gz").unlink()
    with pytest.raises(ValueError, match="lacks ledger.csv"):
        find_runs([copy])
