"""Checkpoints and resume (strategies/checkpoint.py), in process: a run killed after a round's
record but before its checkpoint goes on, with resume = true, from the last checkpoint, and ends
where the uninterrupted run ends: every round's figures, the ledger row by row, the trained
weights. The Flower path (a killed `flwr run`, resumed) is in test_flower_app.py."""

from __future__ import annotations

import os

import pytest
import torch

from app.in_process import run_in_process
from sltestbed.checkpoint_files import CHECKPOINT
from strategies.checkpoint import CheckpointMismatch

RUN = {"preset": "tiny", "base": "none", "num-rounds": 2, "test-fraction": 0.93, "public-fraction": 0.05,
       "batch-size": 16, "save-model": True}


class Killed(Exception):
    """The run's process "dies" here."""


def dies_after_round(rnd: int, rounds: int):
    """A log that kills the run when round `rnd`'s record is logged: that round is done, its
    checkpoint is not written (the last one is round `rnd` - 1's)."""
    def log(message: str) -> None:
        if message.startswith(f"round {rnd}/{rounds}: loss"):
            raise Killed(message)
    return log


def figures(report) -> list[tuple]:
    return [(r.round, r.loss, r.accuracy, r.accuracy_by_type, r.bytes_up, r.bytes_down, r.round_trips, r.failures)
            for r in report.rounds]


def killed_and_resumed(tmp_path, cfg: dict, dies_after: int = 2):
    directory = str(tmp_path / "run")
    with pytest.raises(Killed):
        run_in_process(cfg, log=dies_after_round(dies_after, cfg["num-rounds"]), directory=directory)
    state = torch.load(os.path.join(directory, CHECKPOINT), weights_only=False)
    assert state["round"] == dies_after - 1
    assert not os.path.exists(os.path.join(directory, CHECKPOINT + ".partial"))
    lines = []
    resumed, _ = run_in_process({**cfg, "resume": True}, log=lines.append, directory=directory)
    assert any(f"restored the checkpoint after round {dies_after - 1}" in line for line in lines)
    return resumed


@pytest.mark.parametrize("strategy, keys", [
    ("parallel", {"quantizer": "learned", "bits": 2, "grad-quantizer": "uniform", "grad-bits": 4}),
    ("splitfed-v1", {"quantizer": "uniform", "bits": 2}),
    ("sequential", {"quantizer": "learned", "bits": 1}),
    ("splitfed-v2", {"quantizer": "fp32", "fraction": 0.5}),
    ("fedavg", {"quantizer": "fp32"}),
    ("local-loss", {"quantizer": "learned", "bits": 2}),
])
def test_resumed_run_ends_where_the_uninterrupted_one_does(tmp_path, strategy, keys):
    cfg = {**RUN, "strategy": strategy, **keys}
    full, _ = run_in_process(cfg, directory=str(tmp_path / "full"))
    resumed = killed_and_resumed(tmp_path, cfg)
    assert figures(resumed) == figures(full)
    assert resumed.ledger.rows == full.ledger.rows  # every payload, its bytes and its message number
    assert resumed.round_trips == full.round_trips
    assert resumed.resumed_after == 1 and full.resumed_after == 0
    trained, reference = resumed.model.state_dict(), full.model.state_dict()
    assert trained.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(trained[name], tensor), name


def test_resume_keeps_what_the_observer_saw(tmp_path, monkeypatch):
    """The attacks' observation (batches kept in the final round, chosen by a seeded reservoir
    whose candidates and cursors run through every round) is the uninterrupted run's. The
    attacks themselves are left out: what they get is the point."""
    monkeypatch.setattr("strategies.strategy.attack_run", lambda *args, **kwargs: ({}, {}))
    cfg = {**RUN, "save-model": False, "attack": "inversion", "attack-samples": 64}
    full, _ = run_in_process(cfg, directory=str(tmp_path / "full"))
    resumed = killed_and_resumed(tmp_path, cfg)
    kept, reference = resumed.observation.batches, full.observation.batches
    assert [b.indices.tolist() for b in kept] == [b.indices.tolist() for b in reference] and kept
    for a, b in zip(kept, reference):
        assert a.payloads.keys() == b.payloads.keys()
        for m in a.payloads:
            assert all(torch.equal(x.data, y.data) for x, y in zip(a.payloads[m].fields, b.payloads[m].fields))


def test_resume_refuses_another_config_and_starts_afresh_without_a_checkpoint(tmp_path):
    cfg = {**RUN, "save-model": False}
    directory = str(tmp_path / "run")
    with pytest.raises(Killed):
        run_in_process(cfg, log=dies_after_round(2, 2), directory=directory)
    with pytest.raises(CheckpointMismatch, match="lr: 0.002 there, 0.01 here"):
        run_in_process({**cfg, "lr": 0.01, "resume": True}, directory=directory)
    lines = []
    report, _ = run_in_process({**cfg, "resume": True}, log=lines.append, directory=str(tmp_path / "empty"))
    assert any("no checkpoint" in line and "starting from round 1" in line for line in lines)
    assert report.resumed_after == 0 and len(report.rounds) == 2


def test_no_checkpoint_without_a_directory_or_with_checkpoint_off(tmp_path):
    cfg = {**RUN, "num-rounds": 1, "save-model": False, "checkpoint": False}
    run_in_process(cfg, directory=str(tmp_path / "off"))
    assert not os.path.exists(tmp_path / "off" / CHECKPOINT)
    run_in_process({**cfg, "checkpoint": True}, directory=str(tmp_path / "on"))
    assert os.path.exists(tmp_path / "on" / CHECKPOINT)  # run_in_process writes no results: it stays
