"""A run's set-up, done once before any strategy exists: the data splits, the base model, the
clients (discovery) and, with bits="auto", the widths (calibration).

`prepare_run` returns a ready `RunSetup`; strategies only read it, so their constructors do
no I/O and a test can hand one any set-up it likes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from sltestbed import calibration, wire
from sltestbed.base_delivery import DELIVERED, client_part_weights, fingerprint
from sltestbed.base_model import BaseSpec, build_model, ensure_base_model
from sltestbed.experiment import ExperimentConfig
from sltestbed.model import TinyLlava
from sltestbed.splits import question_types, splits
from sltestbed.trainer import TensorData
from sltestbed.wire import BaseRequest, CalibrationRequest, Content

from .transport import Failure, Transport, exchange


@dataclass
class Client:
    node_id: int
    partition: int
    train_size: int
    test_size: int
    num_partitions: int = 1
    threads: int = 0  # the node's torch compute threads, as it reported them


@dataclass
class RunSetup:
    cfg: ExperimentConfig  # with bits="auto", resolved to the widths calibration chose
    clients: list[Client]  # in partition order
    vocab_size: int
    question_types: list[str]
    base_dir: str | None  # the base checkpoint the clients load (None: seeded random weights)
    base: TinyLlava | None = None  # the same, loaded
    calibration: dict = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)  # nodes dropped during set-up
    delivered: str = ""  # base-delivery = flower: the name the clients know their copy by (flower:<fingerprint>)

    @property
    def client_base(self) -> str:
        """The base as the clients' metas name it: the delivered copy, else the path ("": none)."""
        return self.delivered or self.base_dir or ""

    def new_model(self) -> TinyLlava:
        """The run's model (server side), from the base with the run's quantizers."""
        return build_model(self.cfg, self.base, self.vocab_size)


def prepare_run(cfg: ExperimentConfig, transport: Transport, log=print) -> RunSetup:
    train, test, _, tokenizer, collator, _ = splits(cfg)
    base_dir = ensure_base_model(cfg.base, BaseSpec.of(cfg), cfg.cache_dir,
                                 lambda: (TensorData(train, collator), TensorData(test, collator)), len(tokenizer),
                                 progress=False, log_fn=log)
    failures: list[Failure] = []
    clients = discover(transport, failures, log)
    setup = RunSetup(cfg, clients, len(tokenizer), question_types(cfg), base_dir,
                     TinyLlava.from_pretrained(base_dir) if base_dir else None, failures=failures)
    if cfg.base_delivery == "flower" and base_dir:
        setup.delivered = deliver_base(setup, transport, log)
    if cfg.auto_bits:
        setup.calibration = calibrate(setup, transport, log)
        setup.cfg = cfg.resolved(setup.calibration["bits"])
    return setup


def discover(transport: Transport, failures: list[Failure], log=print) -> list[Client]:
    """Every connected node's partition and data sizes."""
    nodes = transport.node_ids()
    if not nodes:
        raise RuntimeError("no SuperNodes are connected")
    replies = exchange(transport, {n: (wire.INFO, Content()) for n in nodes}, 0, 0, failures, log)
    clients = sorted((Client(node, c.meta.partition, c.meta.train_size, c.meta.test_size, c.meta.num_partitions,
                             c.meta.threads)
                      for node, c in replies.items()), key=lambda c: c.partition)
    if not clients:
        raise RuntimeError("no SuperNode answered the first message")
    transport.partitions = {c.node_id: c.partition for c in clients}
    log(f"{len(clients)} clients: " + ", ".join(f"partition {c.partition} ({c.train_size} train, {c.test_size} test)"
                                                for c in clients))
    return clients


def deliver_base(setup: RunSetup, transport: Transport, log=print) -> str:
    """base-delivery = flower: send every client the base's config and its part's tensors at
    the run's cut, once (model bytes in the ledger). Returns the name the metas give it."""
    cut = setup.cfg.cut_layers
    weights = client_part_weights(setup.base, cut)
    meta = BaseRequest(fingerprint(setup.base_dir, cut), json.dumps(setup.base.config.to_dict()))
    replies = exchange(transport, {c.node_id: (wire.BASE, Content(part=weights, meta=meta)) for c in setup.clients},
                       0, 0, setup.failures, log)
    log(f"base model: the client part ({sum(t.numel() for t in weights.values()):,} values) sent to "
        f"{len(replies)} of {len(setup.clients)} clients")
    return DELIVERED + meta.fingerprint


def calibrate(setup: RunSetup, transport: Transport, log=print) -> dict:
    """bits="auto": every client reports the entropy of its first batches' normalised features
    per modality; the run then uses, per modality, the largest width chosen."""
    cfg = setup.cfg
    meta = CalibrationRequest(setup.client_base, max(1, math.ceil(cfg.batch_size / len(setup.clients))),
                              cfg.auto_batches, cfg.auto_max_rel_mse)
    replies = exchange(transport, {c.node_id: (wire.CALIBRATE, Content(meta=meta)) for c in setup.clients}, 0, 0,
                       setup.failures, log)
    partition = {c.node_id: c.partition for c in setup.clients}
    result = calibration.combine({partition[n]: c.calibration for n, c in replies.items()})

    def per_client(modality: str, key: str) -> str:
        return "/".join(f"{r[modality][key]:.2f}" for r in result["clients"].values())

    log("calibration: " + "; ".join(f"{m} {b} bits (h {per_client(m, 'entropy_bits')}, H* {per_client(m, 'needed_bits')})"
                                    for m, b in result["bits"].items()))
    return result
