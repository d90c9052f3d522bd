"""The round-trip benchmark: a training step against a bare round trip, measured in the same
run. `n` echo exchanges with the clients of a step, each message as large as a step's (from
the ledger), no model on either side; kept out of the ledger."""

from __future__ import annotations

import time

from sltestbed import wire
from sltestbed.label_protocol import label_protocol
from sltestbed.wire import Content, EchoRequest


def roundtrip_benchmark(strategy, n: int) -> dict:
    """{"step_median_s", "bare_roundtrip_median_s", "ratio", ...} for a strategy that has trained."""
    steps = [r for r in strategy.transport.ledger.rows if r.message_type == strategy.step_message and r.round >= 1]
    clients = sorted({r.client for r in steps})
    nodes = [c.node_id for c in strategy.clients if c.partition in clients] or [c.node_id for c in strategy.clients]
    per_message = {}
    for d in ("up", "down"):
        sizes = {(r.round, r.step, r.client): r.message_bytes for r in steps if r.direction == d}
        per_message[d] = int(sum(sizes.values()) / max(len(sizes), 1))
    seconds = []
    for i in range(n):
        requests = {node: (wire.ECHO, Content(echo=bytes(per_message["down"]), meta=EchoRequest(per_message["up"])))
                    for node in nodes}
        t0 = time.perf_counter()
        strategy.exchange(requests, 0, i, account=False)
        seconds.append(time.perf_counter() - t0)
    trips = label_protocol(strategy.cfg.labels).round_trips
    skip = min(3, len(strategy.step_seconds) // 2)  # leave out the first steps (caches, start-up)
    step = _median(strategy.step_seconds[skip:])
    bare = _median(seconds)
    return {"step_median_s": step, "bare_roundtrip_median_s": bare, "roundtrips_per_step": trips,
            "ratio": step / (trips * bare) if bare else float("nan"), "clients": len(nodes),
            "message_bytes_up": per_message["up"], "message_bytes_down": per_message["down"], "samples": n}


def _median(values: list[float]) -> float:
    """The upper median (the middle value of the sorted list), NaN for none."""
    return sorted(values)[len(values) // 2] if values else float("nan")

