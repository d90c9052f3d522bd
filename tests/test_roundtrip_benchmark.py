"""The round-trip benchmark's figures (a step against a bare round trip) on a clock of our own."""

from types import SimpleNamespace

import pytest

from sltestbed import wire
from sltestbed.ledger import ByteLedger
from strategies import benchmark


def test_the_ratio_is_the_step_median_over_the_bare_round_trip_median(monkeypatch):
    ledger = ByteLedger()
    for rnd, step, client, direction, size in [(1, 0, 0, "down", 100), (1, 0, 0, "up", 300), (1, 1, 0, "down", 120),
                                                (1, 1, 0, "up", 340), (0, 0, 1, "down", 999)]:
        ledger.record(round=rnd, step=step, client=client, direction=direction, kind="activations", elements=1,
                      bits=8, serialized_bytes=size, message_bytes=size, message_type=wire.STEP)
    clock = iter([0.0, 0.2, 1.0, 1.3, 2.0, 2.1])  # three echo round trips: 0.2, 0.3, 0.1 s
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
    sent = []
    strategy = SimpleNamespace(
        transport=SimpleNamespace(ledger=ledger), clients=[SimpleNamespace(node_id=7, partition=0),
                                                           SimpleNamespace(node_id=8, partition=1)],
        cfg=SimpleNamespace(labels="client"), step_seconds=[9.0, 9.0, 0.5, 0.7, 0.6, 0.9], step_message=wire.STEP,
        exchange=lambda requests, rnd, step, account: sent.append((requests, account)) or {})
    out = benchmark.roundtrip_benchmark(strategy, 3)
    # steps: the first 3 left out, then the upper median of 0.6, 0.7, 0.9 -> 0.7; round trips: median 0.2
    assert out["step_median_s"] == 0.7 and out["bare_roundtrip_median_s"] == 0.2
    assert out["roundtrips_per_step"] == 2 and out["ratio"] == pytest.approx(0.7 / (2 * 0.2))
    # messages the size of a step's: mean of the round >= 1 messages of the clients that trained
    assert (out["message_bytes_down"], out["message_bytes_up"]) == (110, 320) and out["clients"] == 1
    assert all(not account for _, account in sent) and len(sent) == 3  # kept out of the ledger
    (node, (mtype, content)), = sent[0][0].items()
    assert node == 7 and mtype == wire.ECHO and len(content.echo) == 110 and content.meta.reply_bytes == 320
