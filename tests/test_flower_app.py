"""The Flower app end to end: real `flwr run` against SuperLinks this test starts (and stops).

Few and meant to stay few: what only real Flower processes can show. The strategies'
behaviour is tested in-process (test_strategies.py); here, that a Flower run gives the same
numbers as the in-process run, and what is Flower's own: timeouts, a failed run's status,
the deployment engine, a model saved by the ServerApp, repeat runs with random node ids."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from harness.credentials import make_credentials
from harness.deployment import deployment
from harness.flower_env import git_commit
from app.in_process import run_in_process
from harness.processes import pid_alive
from harness.superlink import simulation_superlink
from sltestbed.experiment import ExperimentConfig
from sltestbed.splits import client_data
from sltestbed.model import TinyLlava
from sltestbed.trainer import MODULE_GROUPS, Stage, evaluate, train_stage

pytestmark = pytest.mark.flower
APP = Path(__file__).resolve().parent.parent
# small and quick: the tiny model, most of digits-VQA held out, no base model
TINY = {"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.75, "public-fraction": 0.05, "step-timeout": 60.0}


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    with simulation_superlink(tmp_path_factory.mktemp("superlink")) as superlink:
        yield superlink


def run(link, tmp_path, num_supernodes=2, **overrides):
    config = {**TINY, "output-dir": str(tmp_path / "results"), "run-name": "run", **overrides}
    result = link.submit(APP, config, num_supernodes=num_supernodes,
                         federation_config={"client-resources-num-cpus": 1}, timeout=600)
    return result, tmp_path / "results" / "run"


def results(directory: Path):
    summary = json.loads((directory / "summary.json").read_text())
    with open(directory / "ledger.csv") as f:
        ledger = list(csv.DictReader(f))
    with open(directory / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    return summary, ledger, metrics


def test_parallel_run_writes_results_and_counts_every_byte(link, tmp_path):
    result, out = run(link, tmp_path, **{"num-rounds": 2})
    assert result.ok, result.describe()
    summary, ledger, metrics = results(out)
    assert 0 <= summary["accuracy"] <= 1 and summary["strategy"] == "parallel"
    assert summary["quantizer"] == "learned" and summary["bits"] == 2
    assert [int(m["round"]) for m in metrics] == [1, 2]
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["seed"] == 0 and config["versions"]["flwr"] == "1.41.0"
    assert config["machine"]["git_commit"] == (git_commit() or None)  # the checkout the harness ran
    acts = [r for r in ledger if r["kind"] == "activations"]
    assert acts and all(r["direction"] == "up" for r in acts)
    for r in acts:
        elements, ideal, serialized = int(r["elements"]), int(r["ideal_bytes"]), int(r["serialized_bytes"])
        assert ideal == math.ceil(elements * 2 / 8)
        assert serialized <= 1.01 * ideal + 256
        assert int(r["message_bytes"]) >= serialized
    up = summary["bytes"]["up"]
    assert up["activations"]["ideal"] == sum(int(r["ideal_bytes"]) for r in acts)
    assert set(summary["bytes"]["down"]) >= {"gradients", "config"}
    # labels sit at the server in this configuration: they travel, and are counted
    assert up["labels"]["serialized"] > 0
    assert "final accuracy" in result.logs  # the summary table is printed

    # the in-process transport (what the strategies' tests run on) gives the same numbers
    report, _ = run_in_process({**TINY, "num-rounds": 2})
    assert [(float(m["loss"]), float(m["accuracy"])) for m in metrics] == [(r.loss, r.accuracy) for r in report.rounds]
    assert summary["bytes"] == report.ledger.totals()


def test_local_loss_through_flower_sends_one_message_a_round_and_no_gradient(link, tmp_path):
    result, out = run(link, tmp_path, strategy="local-loss", **{"num-rounds": 2})
    assert result.ok, result.describe()
    summary, ledger, metrics = results(out)
    assert [int(m["round_trips"]) for m in metrics] == [2, 2]  # the round's training message, its evaluation
    training = {(r["round"], r["client"]) for r in ledger if r["message_type"] == "train.round"}
    assert training == {(str(rnd), str(k)) for rnd in (1, 2) for k in (0, 1)}
    assert "gradients" not in summary["bytes"]["down"] and summary["bytes"]["up"]["activations"]["ideal"] > 0
    report, _ = run_in_process({**TINY, "num-rounds": 2, "strategy": "local-loss"})
    assert [(float(m["loss"]), float(m["accuracy"])) for m in metrics] == [(r.loss, r.accuracy) for r in report.rounds]
    assert summary["bytes"] == report.ledger.totals()


def test_a_reply_that_never_comes_is_dropped_and_the_run_finishes(link, tmp_path):
    result, out = run(link, tmp_path, fault="stall:1:1:1", **{"step-timeout": 4.0})
    assert result.ok, result.describe()
    summary, _, _ = results(out)
    reasons = [f["reason"] for f in summary["failures"]]
    assert reasons and all("no reply within 4.0 s" in r for r in reasons)
    assert summary["failures"][0]["partition"] == 1


def test_a_hostile_client_is_refused_and_the_run_goes_on(link, tmp_path):
    """Partition 1 sends step-2 activations whose header lies about their shape (the codes of a
    32 x 4 x 16 tensor under a 32 x 64 header: consistent, with a valid checksum): the server
    refuses that step of that client, records it, and the run, and its server process, go on."""
    result, out = run(link, tmp_path, fault="lie:1:1:2")
    assert result.ok, result.describe()
    summary, ledger, metrics = results(out)
    assert [(f["partition"], f["round"], f["step"], f["message_type"]) for f in summary["failures"]] == \
        [(1, 1, 2, "train.step")]
    assert "activations refused: image shape (32, 64), expected (32, 4, 16)" in summary["failures"][0]["reason"]
    assert math.isfinite(summary["accuracy"]) and int(metrics[0]["failures"]) == 1
    assert any(r["client"] == "1" and int(r["step"]) > 2 and r["kind"] == "activations" for r in ledger)


def test_a_clientapp_worker_killed_mid_run_is_replaced_and_the_run_finishes(link, tmp_path):
    """The `kill` fault SIGKILLs partition 1's ClientApp worker (its Ray actor's process) in
    the middle of step 2, as Ray's memory monitor would. Flower alone puts the dead actor back
    into its pool and every later message it takes fails; the ServerApp's patch
    (app/actor_pool.py) replaces it, and the node goes on from its `context.state`."""
    result, out = run(link, tmp_path, fault="kill:1:1:2")
    assert result.ok, result.describe()
    assert "a ClientApp worker died" in result.logs and "replaced by a new one" in result.logs
    summary, ledger, metrics = results(out)
    assert [(f["partition"], f["round"], f["step"], f["message_type"]) for f in summary["failures"]] == \
        [(1, 1, 2, "train.step")]
    assert "the ClientApp's worker process died (Ray ActorDiedError" in summary["failures"][0]["reason"]
    assert math.isfinite(summary["accuracy"]) and int(metrics[0]["failures"]) == 1
    # partition 1 trained on after its worker died, and was evaluated
    assert any(r["client"] == "1" and int(r["step"]) > 2 and r["kind"] == "activations" for r in ledger)
    assert any(r["client"] == "1" and r["message_type"] == "evaluate.forward" and r["direction"] == "up"
               for r in ledger)


def test_past_max_failed_steps_the_launch_fails_naming_the_client_and_the_cause(tmp_path, monkeypatch, capsys):
    """max-failed-steps=0: the killed worker's one lost message stops the run; `flwr list`
    says finished:failed, `python -m harness.launch` exits 1 with the message."""
    from harness import launch

    monkeypatch.chdir(tmp_path)
    overrides = {**TINY, "output-dir": str(tmp_path / "results"), "run-name": "run", "fault": "kill:1:1:2",
                 "max-failed-steps": 0}
    status = launch.main(["--timeout", "600"] + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                                  for k, v in overrides.items()])
    captured = capsys.readouterr()
    assert status == 1, captured.out[-3000:]
    assert ": finished:failed in" in captured.out
    for text in ("1 client messages failed, more than max-failed-steps = 0",
                 "partition 1: 1 failed, the first in round 1 step 2 (train.step)",
                 "the ClientApp's worker process died"):
        assert text in captured.err, captured.err[-3000:]
    assert not (tmp_path / "results" / "run" / "summary.json").exists()


def test_launch_fits_every_partys_threads_to_the_cores(tmp_path, monkeypatch, capsys):
    """`python -m harness.launch`: the ServerApp computes on the threads the plan leaves it and
    every ClientApp actor on its one CPU (as each reports them in config.json), together no
    more than the cores; launch.json keeps the run's wall time and peak memory."""
    from harness import launch
    from harness.superlink import thread_plan
    from sltestbed.threads import cpu_cores

    monkeypatch.chdir(tmp_path)
    overrides = {**TINY, "output-dir": str(tmp_path / "results"), "run-name": "run"}
    status = launch.main(["--timeout", "600"] + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                                  for k, v in overrides.items()])
    out = capsys.readouterr().out
    assert status == 0, out[-3000:]
    plan = thread_plan(1)
    assert plan.describe() in out
    config = json.loads((tmp_path / "results" / "run" / "config.json").read_text())
    assert config["machine"]["torch_threads"] == plan.server_threads
    assert [c["threads"] for c in config["clients"]] == [1, 1]
    if cpu_cores() >= 2:
        assert plan.server_threads + plan.client_threads <= cpu_cores()
    record = json.loads((tmp_path / "results" / "run" / "launch.json").read_text())
    assert record["supernodes"] == 2 and record["peak_memory_bytes"] > 100 * 2**20 and record["peak_processes"] >= 3


def test_bad_run_config_value_stops_the_run_naming_the_key(link, tmp_path):
    result, out = run(link, tmp_path, strategy="round-robin")
    assert not result.ok
    assert "'strategy'" in result.status_details + result.logs and "allowed values" in result.status_details + result.logs
    assert not out.exists()


@pytest.mark.parametrize("labels", ["server", "u-shaped"])
def test_sequential_with_one_client_trains_like_the_centralized_trainer(link, tmp_path, labels):
    """Also the U-shaped split (head and loss on the client): the same weights as one
    optimizer over the whole model in one process."""
    overrides = {"strategy": "sequential", "quantizer": "fp32", "train-modules": ",".join(MODULE_GROUPS),
                 "save-model": True, "test-fraction": 0.85, "public-fraction": 0.05, "labels": labels}
    result, out = run(link, tmp_path, num_supernodes=1, **overrides)
    assert result.ok, result.describe()
    flower = TinyLlava.from_pretrained(str(out / "model"))

    cfg = ExperimentConfig.from_run_config({**TINY, **overrides})
    data, test = client_data(cfg, 0, 1)
    torch.manual_seed(cfg.seed)
    central = TinyLlava(flower.config)
    train_stage(central, central, data, Stage("full", MODULE_GROUPS, 1, cfg.lr), cfg.batch_size, cfg.seed,
                progress=False)
    diffs = [(a - b).abs().max().item() for a, b in zip(central.parameters(), flower.parameters())]
    assert max(diffs) <= 1e-4
    # and the run's accuracy is the centralized evaluation of those weights
    assert json.loads((out / "summary.json").read_text())["accuracy"] == pytest.approx(evaluate(flower, test)["accuracy"],
                                                                                         abs=1e-12)


def test_deployment_engine_runs_the_same_app(tmp_path):
    configs = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    with deployment(APP, tmp_path / "deployment", num_supernodes=2, node_configs=configs) as dep:
        pids = list(dep.pids)
        out = tmp_path / "results"
        result = dep.submit({**TINY, "test-fraction": 0.9, "public-fraction": 0.05, "output-dir": str(out), "run-name": "dep"}, timeout=600)
        assert result.ok, result.describe()
    summary, ledger, _ = results(out / "dep")
    assert summary["clients"] == 2 and 0 <= summary["accuracy"] <= 1
    assert {int(r["client"]) for r in ledger if r["kind"] == "activations"} == {0, 1}
    assert not any(pid_alive(p) for p in pids)


def test_a_secure_deployment_trains_over_tls_and_refuses_unregistered_supernodes(tmp_path):
    """TLS with throw-away certificates and SuperNode authentication (Flower's own): two
    registered SuperNodes train; one whose key was never registered, and one with no key, are
    refused (they exit with Flower's exit code 305 and its message in their log)."""
    configs = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    with deployment(APP, tmp_path / "deployment", num_supernodes=2, node_configs=configs, secure=True) as dep:
        assert "--enable-supernode-auth" in dep.superlink.args and "--insecure" not in dep.superlink.args
        stranger = make_credentials(tmp_path / "stranger", 1).node_keys[0]
        refused = [dep.start_supernode(configs[0], stranger), dep.start_supernode(configs[1], None)]
        assert all(p.wait(timeout=120) != 0 for p in refused)
        unregistered, keyless = dep.supernode_logs()[-2:]
        assert "Exit Code: 305" in unregistered and "Failed to activate SuperNode" in unregistered, unregistered[-2000:]
        assert "Exit Code: 305" in keyless and "SuperNode authentication is enabled" in keyless, keyless[-2000:]
        out = tmp_path / "results"
        result = dep.submit({**TINY, "test-fraction": 0.9, "public-fraction": 0.05, "output-dir": str(out),
                             "run-name": "tls"}, timeout=600)
        assert result.ok, result.describe()
    summary, ledger, _ = results(out / "tls")
    assert summary["clients"] == 2 and 0 <= summary["accuracy"] <= 1
    assert {int(r["client"]) for r in ledger if r["kind"] == "activations"} == {0, 1}


def test_the_same_config_gives_the_same_numbers(link, tmp_path):
    # every run draws new node ids; with 3 clients the replies' node-id order differs from the
    # partition order in most runs, so this also checks the server joins them by partition.
    # Two rounds: runs have been seen to agree after one round and part after two.
    first, out1 = run(link, tmp_path / "a", num_supernodes=3, **{"num-rounds": 2})
    second, out2 = run(link, tmp_path / "b", num_supernodes=3, **{"num-rounds": 2})
    assert first.ok and second.ok, first.describe() + second.describe()
    (summary1, ledger1, metrics1), (summary2, ledger2, metrics2) = results(out1), results(out2)
    assert len(metrics1) == 2
    for m1, m2 in zip(metrics1, metrics2):
        assert {k: v for k, v in m1.items() if k != "seconds"} == {k: v for k, v in m2.items() if k != "seconds"}
    assert {k: v for k, v in summary1.items() if k != "seconds"} == {k: v for k, v in summary2.items() if k != "seconds"}

    def rows(ledger):  # whole-message sizes hold the random node ids, payload entries do not
        return sorted((r["round"], r["step"], r["client"], r["direction"], r["kind"], r["elements"],
                       r["serialized_bytes"]) for r in ledger)

    assert rows(ledger1) == rows(ledger2)


def test_eight_supernodes_on_dirichlet_partitions_sample_a_quarter_each_round(link, tmp_path):
    """8 SuperNodes, Dirichlet(0.3) partitions, client sampling 0.25: each round trains 2 of
    them (training activations come up from exactly those), evaluation reaches all 8, every
    node's partition is recorded, and the run ends with an accuracy."""
    result, out = run(link, tmp_path, num_supernodes=8, **{"num-rounds": 2, "partitioner": "dirichlet",
                                                            "alpha": 0.3, "fraction": 0.25, "test-fraction": 0.5})
    assert result.ok, result.describe()
    summary, ledger, metrics = results(out)
    assert summary["clients"] == 8 and 0 <= summary["accuracy"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert sorted(int(c["partition"]) for c in config["clients"]) == list(range(8))
    sizes = [int(c["train_size"]) for c in config["clients"]]
    assert max(sizes) > 2 * min(sizes)  # Dirichlet(0.3): far from equal
    for rnd in (1, 2):
        def senders(message_type):
            return {int(r["client"]) for r in ledger if r["kind"] == "activations" and int(r["round"]) == rnd
                    and r["message_type"] == message_type}
        assert len(senders("train.step")) == 2, (rnd, senders("train.step"))  # trained: the sampled quarter
        assert senders("evaluate.forward") == set(range(8))  # evaluated: every node's test shard
    assert [int(m["round"]) for m in metrics] == [1, 2]


def test_supernodes_without_the_servers_disk_train_on_a_base_sent_through_flower(tmp_path):
    """A deployment whose SuperNodes cannot reach the server's base checkpoint (a path
    relative to the SuperLink's directory: each SuperNode works in another): with
    base-delivery = path the run fails on it, with base-delivery = flower the server sends
    each its client part once (model bytes in the ledger, before any other message to it),
    each keeps it in its own cache directory, and the run trains."""
    cfg = ExperimentConfig.from_run_config({**TINY, "base": "none"})
    from sltestbed.base_model import build_model
    from sltestbed.splits import vocab_size
    root = tmp_path / "deployment"
    build_model(cfg, None, vocab_size(cfg)).save_pretrained(str(root / "server-base"))
    configs = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    out = tmp_path / "results"
    run_config = {**TINY, "base": "server-base", "test-fraction": 0.9, "public-fraction": 0.05, "batch-size": 256,
                  "output-dir": str(out)}  # few, large batches: a deployment exchange takes seconds
    with deployment(APP, root, num_supernodes=2, node_configs=configs) as dep:
        assert all(not (d / "server-base").exists() for d in dep.supernode_dirs)
        refused = dep.submit({**run_config, "run-name": "path"}, timeout=300)
        assert not refused.ok
        assert any("'base' = 'server-base': no such model directory" in log for log in dep.supernode_logs())
        result = dep.submit({**run_config, "base-delivery": "flower", "run-name": "flower"}, timeout=600)
        assert result.ok, result.describe()
        copies = [list((d / ".cache" / "sltestbed").glob("delivered-*/client_part.safetensors"))
                  for d in dep.supernode_dirs]
    assert all(len(c) == 1 for c in copies), copies
    summary, ledger, _ = results(out / "flower")
    assert summary["clients"] == 2 and 0 <= summary["accuracy"] <= 1
    model = [r for r in ledger if r["message_type"] == "query.base" and r["kind"] == "model"]
    assert sorted(int(r["client"]) for r in model) == [0, 1] and all(r["direction"] == "down" for r in model)
    first = {c: min(int(r["message"]) for r in ledger if int(r["client"]) == c and r["direction"] == "down"
                    and r["message_type"] not in ("query.info",)) for c in (0, 1)}
    assert all(int(r["message"]) == first[int(r["client"])] for r in model)
