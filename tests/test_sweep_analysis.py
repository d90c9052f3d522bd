"""A tiny sweep through real `flwr run`s, resumed after an interruption, and the analysis of
it: every table figure recomputed here from the ledgers by hand."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from analysis.__main__ import main as analysis_main
from harness.processes import _has_tag
from harness.sweep import expand, plan, run_sweep

pytestmark = pytest.mark.flower
TINY = {"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.75, "public-fraction": 0.05, "step-timeout": 60.0}
POINTS = [{"quantizer": "learned", "bits": 2}, {"quantizer": "learned", "bits": 2, "entropy-coding": True},
          {"quantizer": "fp16"}, {"strategy": "fedavg", "quantizer": "fp32"}]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    out = root / "runs"
    named = plan(expand(POINTS, ["parallel"], [0], {**TINY, "cache-dir": str(root / "cache")}), out)
    logs = []
    status = run_sweep(named, out, work_dir=root / "work", log=logs.append)
    return root, out, named, status, logs


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_runs_every_point_into_its_own_directory(swept):
    _, out, named, status, logs = swept
    names = [n for n, _ in named]
    assert names == ["parallel-learned-2b-seed0", "parallel-learned-2b-ec-seed0", "parallel-fp16-16b-seed0",
                     "fedavg-fp32-32b-seed0"]
    assert status == {n: "ok" for n in names}, logs
    for name in names:
        assert (out / name / "summary.json").is_file() and (out / name / "ledger.csv").is_file()
    index = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in index] == ["ok"] * 4
    assert any("round 1/1" in line for line in logs)  # the runs' progress is shown


def test_an_interrupted_sweep_finishes_only_the_missing_points(swept):
    root, out, named, _, _ = swept
    kept = {n: os.stat(out / n / "summary.json").st_mtime_ns for n, _ in named if n != "parallel-fp16-16b-seed0"}
    (out / "parallel-fp16-16b-seed0" / "summary.json").unlink()  # as if the sweep died during this point
    logs = []
    status = run_sweep(named, out, work_dir=root / "work2", log=logs.append)
    assert "sweep: 4 points, 3 already done, 1 to run" in logs[0]
    assert [line for line in logs if line.startswith("[1/1] ") and line.endswith("seed0")] == ["[1/1] parallel-fp16-16b-seed0"]
    assert status["parallel-fp16-16b-seed0"] == "ok"
    assert {n: os.stat(out / n / "summary.json").st_mtime_ns for n in kept} == kept


def test_points_run_side_by_side_give_the_serial_numbers(swept):
    root, out, named, _, _ = swept
    parallel_out = root / "runs-jobs2"
    logs = []
    named2 = [(n, {**c, "output-dir": str(parallel_out)}) for n, c in named]
    status = run_sweep(named2, parallel_out, work_dir=root / "work-jobs", log=logs.append, jobs=2)
    assert set(status.values()) == {"ok"} and "2 at a time" in logs[0]

    def numbers(directory):
        summary = json.loads((directory / "summary.json").read_text())
        metrics = [{k: v for k, v in m.items() if k != "seconds"} for m in read_csv(directory / "metrics.csv")]
        ledger = sorted(tuple(r[k] for k in ("round", "step", "client", "direction", "kind", "elements",
                                             "serialized_bytes")) for r in read_csv(directory / "ledger.csv"))
        return {k: v for k, v in summary.items() if k != "seconds"}, metrics, ledger

    for name, _ in named:
        assert numbers(parallel_out / name) == numbers(out / name), name


def test_a_bad_point_stops_the_sweep_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="sweep point 2 .*'bits' = 9"):
        plan(expand([{"quantizer": "learned", "bits": [2, 9]}], ["parallel"], [0], dict(TINY)), tmp_path)
    assert not any(tmp_path.iterdir())


def recompute(run_dir: Path) -> dict:
    """The table's figures for one run, by hand from ledger.csv, config.json and summary.json."""
    ledger = read_csv(run_dir / "ledger.csv")
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    epochs = config["config"]["num-rounds"] * config["config"]["local-epochs"]
    samples = sum(c["train_size"] for c in config["clients"])
    out = {"accuracy": summary["accuracy"]}
    for d in ("up", "down"):
        rows = [r for r in ledger if r["direction"] == d]
        messages = {r["message"]: int(r["message_bytes"]) for r in rows}
        for level, total in (("ideal", sum(int(r["ideal_bytes"]) for r in rows)),
                             ("serialized", sum(int(r["serialized_bytes"]) for r in rows)),
                             ("message", sum(messages.values()))):
            out[f"{d}_{level}_bytes"] = total
            out[f"{d}_{level}_bytes_per_epoch"] = total / epochs
            out[f"{d}_{level}_bytes_per_sample"] = total / epochs / samples
    acts = [r for r in ledger if r["direction"] == "up" and r["kind"] == "activations"]
    for r in acts:
        assert int(r["ideal_bytes"]) == math.ceil(int(r["elements"]) * int(r["bits"]) / 8)
    out["act_up_elements"] = sum(int(r["elements"]) for r in acts)
    out["act_up_ideal_bytes"] = sum(int(r["ideal_bytes"]) for r in acts)
    out["act_up_serialized_bytes"] = sum(int(r["serialized_bytes"]) for r in acts)
    return out


def test_analysis_table_equals_what_the_ledgers_say(swept, tmp_path):
    _, out, _, _, _ = swept
    assert analysis_main([str(out), "--out", str(tmp_path), "--network", "4g", "lab=100,100,2"]) == 0
    for name in ("comm_table.csv", "comm_table.md", "comm_table.tex", "network_time.csv", "network_time.md",
                 "accuracy_vs_bits.png", "accuracy_vs_bits.pdf", "accuracy_vs_bytes.png", "accuracy_vs_bytes.pdf",
                 "training_curves.png", "training_curves.pdf"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = {(r["strategy"], r["quantizer"], r["bits"], r["entropy_coding"]): r for r in read_csv(tmp_path / "comm_table.csv")}
    assert set(table) == {("parallel", "learned", "2", "False"), ("parallel", "learned", "2", "True"),
                          ("parallel", "fp16", "16", "False"), ("fedavg", "fp32", "32", "False")}
    runs = {key: recompute(out / name) for key, name in (
        (("parallel", "learned", "2", "False"), "parallel-learned-2b-seed0"),
        (("parallel", "learned", "2", "True"), "parallel-learned-2b-ec-seed0"),
        (("parallel", "fp16", "16", "False"), "parallel-fp16-16b-seed0"),
        (("fedavg", "fp32", "32", "False"), "fedavg-fp32-32b-seed0"))}
    for key, figures in runs.items():
        for column, value in figures.items():
            assert float(table[key][column]) == pytest.approx(value, rel=1e-12), (key, column)
    fp16, two, coded, fedavg = (runs[("parallel", "fp16", "16", "False")], runs[("parallel", "learned", "2", "False")],
                                runs[("parallel", "learned", "2", "True")], runs[("fedavg", "fp32", "32", "False")])
    row = table[("parallel", "learned", "2", "False")]
    assert float(row["reduction_vs_fp16"]) == pytest.approx(1 - two["act_up_ideal_bytes"] / fp16["act_up_ideal_bytes"])
    assert float(row["reduction_vs_fp16"]) == pytest.approx(0.875, abs=1e-4)  # the paper's 87.5% at 2 bits
    assert float(row["reduction_vs_fp16_serialized"]) == pytest.approx(
        1 - two["act_up_serialized_bytes"] / fp16["act_up_serialized_bytes"])
    assert float(row["reduction_vs_fp32"]) == pytest.approx(1 - two["act_up_elements"] * 2 / 8 / (two["act_up_elements"] * 4))
    both = two["up_message_bytes"] + two["down_message_bytes"]
    assert float(row["reduction_vs_fedavg"]) == pytest.approx(1 - both / (fedavg["up_message_bytes"] + fedavg["down_message_bytes"]))
    coded_row = table[("parallel", "learned", "2", "True")]
    assert float(coded_row["reduction_vs_fp16_serialized"]) == pytest.approx(
        1 - coded["act_up_serialized_bytes"] / fp16["act_up_serialized_bytes"])
    assert float(coded_row["reduction_vs_fp16_serialized"]) > float(row["reduction_vs_fp16_serialized"])
    md = (tmp_path / "comm_table.md").read_text()
    assert "87.50%" in md and "parallel" in md and "fedavg" in md


def test_network_time_follows_the_link_model(swept, tmp_path):
    _, out, _, _, _ = swept
    assert analysis_main([str(out), "--out", str(tmp_path), "--network", "lab=8,16,10"]) == 0
    rows = {(r["strategy"], r["quantizer"], r["entropy_coding"]): r for r in read_csv(tmp_path / "network_time.csv")}
    ledger = read_csv(out / "parallel-fp16-16b-seed0" / "ledger.csv")
    messages = {}
    for r in ledger:  # whole messages, per exchange (round, step, type) and client
        if int(r["round"]) >= 1:
            key = (r["round"], r["step"], r["message_type"])
            messages.setdefault(key, {}).setdefault(r["client"], {})[(r["direction"], r["message"])] = int(r["message_bytes"])
    def transfer(sizes):  # one client's part of an exchange: its messages down, then up
        down = sum(b for (d, _), b in sizes.items() if d == "down")
        return down * 8 / 16e6 + sum(b for (d, _), b in sizes.items() if d == "up") * 8 / 8e6

    seconds = sum(0.010 + max(transfer(c) for c in clients.values()) for clients in messages.values())
    row = rows[("parallel", "fp16", "False")]
    assert float(row["lab_seconds_per_round"]) == pytest.approx(seconds, rel=1e-9)  # 1 round
    assert float(row["exchanges_per_round"]) == len(messages)


def test_analysis_of_a_missing_directory_names_it(tmp_path, capsys):
    assert analysis_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert analysis_main([str(tmp_path), "--out", str(tmp_path / "o"), "--network", "dialup=1,2"]) == 2
    assert "NAME=UP,DOWN,RTT" in capsys.readouterr().err


def _marked(mark: bytes) -> list[int]:
    """Live processes whose environment carries `mark` (what a command started inherits it)."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _has_tag(int(e), mark)]


@pytest.mark.parametrize("command, sig", [("sweep", signal.SIGINT), ("launch", signal.SIGTERM)])
def test_an_interrupt_mid_run_stops_every_process_the_command_started(command, sig, tmp_path):
    """SIGINT / SIGTERM during a run's first rounds: the command exits 128 + the signal within
    seconds, no process it started (SuperLink, SuperExec, `flwr run`, simulation, Ray) is left,
    no summary is written; the sweep marks its point interrupted."""
    mark = f"SLTESTBED_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}
    keys = [f"{k}={v}" for k, v in {**TINY, "num-rounds": 50, "cache-dir": str(tmp_path / "cache")}.items()]
    if command == "sweep":
        argv = ["-m", "harness.sweep", *keys, "--out", "runs", "--quantizer", "fp32"]
    else:
        argv = ["-m", "harness.launch", *keys, "output-dir=runs", "quantizer=fp32"]
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *argv], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "round 1/50" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "round 1/50" in log.read_text(), log.read_text()[-3000:]
        assert len(_marked(mark.encode())) > 3  # the SuperLink, its runs and Ray are up
        proc.send_signal(sig)
        assert proc.wait(timeout=90) == 128 + sig, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 20
    while _marked(mark.encode()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _marked(mark.encode()) == []
    assert f"stopped by {signal.Signals(sig).name}" in log.read_text()
    run_dir = tmp_path / "runs" / "parallel-fp32-32b-seed0"
    assert not (run_dir / "summary.json").exists()
    if command == "sweep":
        assert [p["status"] for p in json.loads((tmp_path / "runs" / "sweep.json").read_text())] == ["interrupted"]


def _launch(tmp_path: Path, keys: dict, env: dict, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "harness.launch", *[f"{k}={v}" for k, v in keys.items()]]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_a_killed_flwr_run_resumes_and_ends_as_the_uninterrupted_run(tmp_path):
    """Every process of a `flwr run` (launch, SuperLink, SuperExec, simulation, Ray) is killed
    with SIGKILL once a checkpoint is written, as a machine that goes down; `launch resume=true`
    goes on from it. The resumed run's metrics, byte ledger (as a multiset of rows: the new
    SuperNodes' ids change the row order and the message framing) and trained weights are the
    uninterrupted run's."""
    rounds = 4
    keys = {**TINY, "num-rounds": rounds, "save-model": "true", "cache-dir": str(tmp_path / "cache"),
            "quantizer": "learned", "bits": 2}
    mark = f"SLTESTBED_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}
    name = "parallel-learned-2b-seed0"
    reference = _launch(tmp_path, {**keys, "output-dir": "whole"}, env, tmp_path / "whole.log")
    assert reference.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    run_dir = tmp_path / "cut" / name
    proc = _launch(tmp_path, {**keys, "output-dir": "cut"}, env, tmp_path / "cut.log")
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        about = json.loads((run_dir / "checkpoint.json").read_text())
        assert 1 <= about["round"] < rounds, about
        for pid in _marked(mark.encode()):  # the whole run, at once
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run_dir / "summary.json").exists()
    resumed = _launch(tmp_path, {**keys, "output-dir": "cut", "resume": "true"}, env, tmp_path / "resumed.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert "resume: restored the checkpoint after round" in (tmp_path / "resumed.log").read_text()
    deadline = time.monotonic() + 20
    while _marked(mark.encode()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _marked(mark.encode()) == []

    whole, cut = tmp_path / "whole" / name, run_dir
    summary, again = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert again["resumed_after_round"] >= 1 and "resumed_after_round" not in summary
    for key in ("accuracy", "accuracy_by_type", "bytes", "round_trips", "failures"):
        assert again[key] == summary[key], key
    drop = lambda rows, *keys: [{k: v for k, v in r.items() if k not in keys} for r in rows]
    assert drop(read_csv(cut / "metrics.csv"), "seconds") == drop(read_csv(whole / "metrics.csv"), "seconds")
    ledger = lambda d: sorted(tuple(r.values()) for r in drop(read_csv(d / "ledger.csv"), "message_bytes", "message"))
    assert ledger(cut) == ledger(whole)
    assert not (cut / "checkpoint.pt").exists() and not (cut / "checkpoint.json").exists()
    from safetensors.torch import load_file

    for weights in sorted(p.name for p in (whole / "model").glob("*.safetensors")):
        a, b = load_file(whole / "model" / weights), load_file(cut / "model" / weights)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights
