"""A transport without Flower: the strategies call each client node's handler directly.

The strategies' semantics tests use it (what each strategy computes, checked by hand against
the roles): no Flower `Message`, no records, no bytes in the ledger. Each request and reply
is deep-copied, as sending it would, so neither side touches the other's tensors. The Flower
path (`app.in_process`, `flwr run`) has its own end-to-end tests, bytes included.

    report, transport = run_locally({"strategy": "sequential", "preset": "tiny"}, num_clients=2)
"""

from __future__ import annotations

import copy
import random

from sltestbed.client_node import ClientNode
from sltestbed.experiment import ExperimentConfig
from sltestbed.ledger import ByteLedger
from sltestbed.wire import Content, NodeInfo

from . import run_strategy
from .transport import Exchange, Transport


class LocalTransport(Transport):
    """`num_clients` client nodes (partitions 0..n-1) under seeded random node ids; `sent`
    lists every request as (round, step, node, message type)."""

    def __init__(self, cfg: ExperimentConfig, num_clients: int = 2, seed: int = 0):
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        rng = random.Random(seed)  # node ids at random, as a SuperLink draws them
        self.nodes: dict[int, ClientNode] = {}
        while len(self.nodes) < num_clients:
            self.nodes.setdefault(rng.getrandbits(63) + 2, ClientNode(cfg, len(self.nodes), num_clients))
        self.ledger = ByteLedger()
        self.round_trips = 0
        self.partitions: dict[int, int] = {}
        self.sent: list[tuple[int, int, int, str]] = []

    def node_ids(self) -> list[int]:
        return sorted(self.nodes)

    def is_free(self, node: int) -> bool:
        return True  # every call answers before the next

    def exchange(self, requests: dict[int, tuple[str, Content]], round: int, step: int,
                 account: bool = True) -> Exchange:
        self.round_trips += 1
        result = Exchange()
        for node, (mtype, content) in requests.items():
            self.sent.append((round, step, node, mtype))
            try:
                reply = self.nodes[node].handle(mtype, copy.deepcopy(content))
            except Exception as exc:  # as a client's error reply
                result.failures[node] = f"client error: {type(exc).__name__}: {exc}"
                continue
            result.replies[node] = copy.deepcopy(reply)
            if isinstance(reply.meta, NodeInfo):
                self.partitions[node] = reply.meta.partition
        return result


def run_locally(run_config: dict, num_clients: int = 2, log=lambda message: None):
    """The whole server side of one experiment against local client nodes. Returns
    (RunReport, transport). `run_config`: run-config keys as in `flwr run`."""
    cfg = ExperimentConfig.from_run_config(run_config)
    transport = LocalTransport(cfg, num_clients)
    return run_strategy(cfg, transport, log), transport
