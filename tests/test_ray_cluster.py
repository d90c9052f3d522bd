"""Flower's simulation engine on a Ray cluster of our own: a head node on 127.0.0.1 with a
private temp dir (harness/ray_cluster.py), a `flwr run` attached to it through RAY_ADDRESS,
the ClientApp actors on that cluster, every process of it stopped by pid afterwards."""

import json
from pathlib import Path

import pytest

from harness.launch import run_simulation_with_echo
from harness.processes import pid_alive
from harness.ray_cluster import ray_head
from harness.superlink import thread_plan

pytestmark = pytest.mark.flower
APP = Path(__file__).resolve().parent.parent
TINY = {"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.75, "public-fraction": 0.05,
        "step-timeout": 60.0}


def test_a_run_attaches_to_a_ray_cluster_and_its_actors_run_there(tmp_path):
    lines = []
    with ray_head(num_cpus=2) as head:
        cluster = head.reaper.snapshot()
        assert len(cluster) >= 2, "the head's GCS and raylet run"
        config = {**TINY, "output-dir": str(tmp_path / "results"), "run-name": "run",
                  "cache-dir": str(tmp_path / "cache")}
        plan = thread_plan(1)  # as launch --ray-address does: the cluster decides the CPUs
        result = run_simulation_with_echo(APP, tmp_path / "flwr", config, 2, plan.federation(attached=True), 600,
                                          plan.env(head.address))
        assert result.ok, result.stderr[-3000:]
        logs = head.worker_logs()
        assert "ClientAppActor" in logs, "the ClientApp actors ran on this cluster's workers"
        assert "ClientAppActor" not in (tmp_path / "flwr" / "superlink.log").read_text()
        seen = head.reaper.snapshot()
    assert not [p for p in seen if pid_alive(p)], "the cluster's processes are stopped"
    summary = json.loads((tmp_path / "results" / "run" / "summary.json").read_text())
    assert summary["clients"] == 2 and summary["accuracy"] == summary["accuracy"]
