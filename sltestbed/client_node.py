"""A client's side of the protocol: what a SuperNode does with each message (Flower-free).

A `ClientNode` holds one partition's data and, once training starts, its `ClientRole`
(client part, optimizer, batch cursor, the forward awaiting its gradient). `handle` takes a
request's `Content` and returns the reply's. The Flower ClientApp (and the in-process
transport of the tests) only move contents and keep the role's state between messages.
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Callable, NamedTuple

import torch

from . import calibration, wire
from .base_delivery import DELIVERED, delivered_dir, save_delivered
from .base_model import build_model
from .experiment import ExperimentConfig
from .averaging import load_trained, model_weights
from .label_protocol import label_protocol
from .model import MODALITIES, ClientPart
from .quantizers import Payload
from .roles import ClientRole
from .scoring import Scores
from .splits import client_data, vocab_size
from .trainer import OptimConfig, Stage, TensorData, train_stage
from .wire import Content, LocalResult, LossReply, NodeInfo, StepMeta

def kill_this_process() -> None:
    """How the `kill` fault dies: SIGKILL to this process, as the OS or Ray's memory monitor
    ends a worker (no handler runs, no reply is sent)."""
    os.kill(os.getpid(), signal.SIGKILL)


def lying_shape(payload: Payload) -> Payload:
    """The `lie` fault's payload: the same codes under a header that claims another shape with
    as many elements (B x N x d as B x (N d)), so the codec encodes it with a valid checksum and
    decodes it again; only the receiver's check of what it expects can refuse it."""
    batch, *rest = payload.shape
    return Payload(payload.scheme, payload.bits, (batch, math.prod(rest)), payload.fields, payload.params)


class FaultHooks(NamedTuple):
    """How the injected faults act, per message: `wait(seconds)` for `stall`, `kill()` for `kill`."""

    wait: Callable[[float], None]
    kill: Callable[[], None]


class ClientNode:
    def __init__(self, cfg: ExperimentConfig, partition: int, num_partitions: int):
        if not 0 <= partition < num_partitions:
            raise ValueError(f"partition-id {partition} is out of range for num-partitions {num_partitions}")
        self.cfg, self.partition, self.num_partitions = cfg, partition, num_partitions
        self.labels = label_protocol(cfg.labels)
        self.role: ClientRole | None = None

    # --- data and role ------------------------------------------------------------------------
    @property
    def train(self) -> TensorData:
        return client_data(self.cfg, self.partition, self.num_partitions)[0]

    @property
    def test(self) -> TensorData:
        return client_data(self.cfg, self.partition, self.num_partitions)[1]

    def run_config(self, meta: StepMeta | None = None) -> ExperimentConfig:
        """The run config; with bits="auto", resolved by the widths the server sends once chosen."""
        if self.cfg.auto_bits and meta is not None and meta.widths:
            return self.cfg.resolved(meta.widths)
        return self.cfg

    def model(self, cfg: ExperimentConfig, base: str):
        return build_model(cfg, self.base_dir(base), vocab_size(cfg))

    def base_dir(self, base: str) -> str | None:
        """Where this node reads the base a meta names: the path itself, or for
        `flower:<fingerprint>` the copy the server delivered to this node's cache directory."""
        if not base.startswith(DELIVERED):
            return base or None
        directory = delivered_dir(self.cfg.cache_dir, base[len(DELIVERED):])
        if not os.path.isdir(directory):
            raise ValueError(f"the base {base} was never delivered to this node (no {os.path.abspath(directory)})")
        return directory

    def start(self, meta: StepMeta) -> ClientRole:
        """The role, built on first contact from what the server's meta says."""
        if self.role is None:
            cfg = self.run_config(meta)
            self.role = ClientRole(self.model(cfg, meta.base), cfg.cut_layers, self.train, batch_size=meta.batch_size,
                                   seed=cfg.seed + self.partition, optim=OptimConfig(cfg.lr, meta.total_steps),
                                   trainable=cfg.modules, distortion_weight=cfg.distortion_weight,
                                   head=self.labels.head_on_client, local_head=cfg.strategy == "local-loss",
                                   seed_head=cfg.seed, compute=cfg.compute())
        return self.role

    def state(self) -> bytes:
        return self.role.state_bytes()

    @property
    def revision(self) -> int:
        """Moves whenever the role changes (-1 before it exists): `state()` is worth saving
        again only when this moved since the last save."""
        return -1 if self.role is None else self.role.revision

    def restore(self, state: bytes) -> None:
        self.role.load_state_bytes(state)

    def receive(self, request: Content) -> None:
        """What rode with the message: the pending gradient first (or, if none came, the last
        forward is dropped: the server left this client out of that step), then weights."""
        if request.grads is not None:
            self.role.backward(request.grads)
        else:
            self.role.drop_pending()
        if request.part is not None:
            self.role.load_part_state(request.part)

    # --- the messages ---------------------------------------------------------------------------
    def handle(self, mtype: str, request: Content, wait=time.sleep, kill=kill_this_process) -> Content:
        """The reply to one message. `wait(seconds)` is how the `stall` fault waits, `kill()`
        how the `kill` fault ends this worker."""
        spec = wire.message_type(mtype)
        if spec.role:
            self.start(request.meta)
        return getattr(self, spec.handler)(request, FaultHooks(wait, kill))

    def _info(self, request: Content, hooks: FaultHooks) -> Content:
        return Content(meta=NodeInfo(self.partition, self.num_partitions, len(self.train), len(self.test),
                                     torch.get_num_threads()))

    def _calibrate(self, request: Content, hooks: FaultHooks) -> Content:
        """bits="auto": the entropy report of this node's first training batches (summaries only)."""
        meta = request.meta
        probe = self.cfg.resolved({m: 8 for m in MODALITIES})  # the normalisation does not depend on the width
        part = ClientPart(self.model(probe, meta.base), self.cfg.cut_layers)
        report = calibration.calibrate(part, self.train, meta.batch_size, meta.batches, self.cfg.seed + self.partition,
                                       meta.max_rel_mse)
        return Content(calibration=calibration.to_dict(report))

    def _base(self, request: Content, hooks: FaultHooks) -> Content:
        """base-delivery = flower: keep the base's client part the server sent (checked first)."""
        if request.part is None:
            raise ValueError("query.base carried no weights")
        meta = request.meta
        save_delivered(delivered_dir(self.cfg.cache_dir, meta.fingerprint), meta.config, request.part,
                       self.cfg.cut_layers)
        return Content()

    def _echo(self, request: Content, hooks: FaultHooks) -> Content:
        """A bare round trip: no model, a reply of the requested size (the benchmark's reference)."""
        return Content(echo=bytes(request.meta.reply_bytes))

    def _state(self, request: Content, hooks: FaultHooks) -> Content:
        """A checkpoint: this node's role state, as the ClientApp saves it (nothing applied)."""
        return Content(state=self.state())

    def _restore(self, request: Content, hooks: FaultHooks) -> Content:
        """A resumed run: the role as a checkpoint saved it."""
        self.restore(request.state)
        return Content()

    def _step(self, request: Content, hooks: FaultHooks) -> Content:
        self.receive(request)
        lie = self._fault(request.meta, hooks) == "lie"
        acts, labels = self.role.forward()
        payloads = {m: lying_shape(p) if lie and m == "image" else p for m, p in acts.payloads.items()}
        return Content(acts=payloads, batch=self.labels.batch_up(acts.lengths, labels))

    def _round(self, request: Content, hooks: FaultHooks) -> Content:
        """Local-loss split learning: the round's local steps, then its activations and labels
        in one reply, with the mean local loss."""
        self.receive(request)
        lie = self._fault(request.meta, hooks) == "lie"
        loss, acts, labels = self.role.local_round(request.meta.local_steps)
        payloads = {m: lying_shape(p) if lie and m == "image" else p for m, p in acts.payloads.items()}
        return Content(acts=payloads, batch=self.labels.batch_up(acts.lengths, labels),
                       meta=LocalResult(len(labels), loss))

    def _logits(self, request: Content, hooks: FaultHooks) -> Content:
        """Labels here: the loss of the last batch and its gradient w.r.t. the server's output."""
        wrt = "logits" if request.logits is not None else "hidden"
        loss, grad = self.role.loss_and_grad(request.logits if wrt == "logits" else request.hidden)
        return Content(loss=LossReply(loss, grad, wrt))

    def _part(self, request: Content, hooks: FaultHooks) -> Content:
        """The client part's weights that train (the frozen rest is every party's base)."""
        self.receive(request)
        return Content(part=self.role.trainable_state())

    def _evaluate(self, request: Content, hooks: FaultHooks) -> Content:
        self.receive(request)
        acts, batch = self.role.evaluate_forward(self.test)
        return Content(acts=acts.payloads, batch=self.labels.batch_up(acts.lengths, batch["labels"], batch["qtype_index"]))

    def _score(self, request: Content, hooks: FaultHooks) -> Content:
        """Labels here: the server's output (logits, or U-shaped the hidden state, through the
        head here) scored against this shard's labels."""
        test = self.test
        logits = request.logits if request.logits is not None else self.role.logits(request.hidden)
        return Content(score=Scores.of(logits.argmax(-1), test.labels, test.qtype_index, test.qtypes))

    def _local(self, request: Content, hooks: FaultHooks) -> Content:
        """FedAvg baseline: the whole model, trained here on the local partition."""
        cfg, meta = self.cfg, request.meta
        model = self.model(cfg, meta.base)
        load_trained(model, request.part)
        stage = Stage("local", cfg.modules, cfg.local_epochs, cfg.lr)
        losses = train_stage(model, model, self.train, stage, meta.batch_size, cfg.seed + meta.round, progress=False)
        return Content(part=model_weights(model, cfg.modules), meta=LocalResult(len(self.train), float(losses[-1])))

    def _evaluate_local(self, request: Content, hooks: FaultHooks) -> Content:
        """FedAvg baseline: the global model on this node's test shard."""
        model = self.model(self.cfg, request.meta.base)
        load_trained(model, request.part)
        model.eval()
        test = self.test
        with torch.no_grad():
            batch = test.batch(torch.arange(len(test)))
            predicted = model(batch["pixel_values"], batch["input_ids"], batch["lengths"]).argmax(-1)
        return Content(score=Scores.of(predicted, batch["labels"], batch["qtype_index"], test.qtypes))

    def _fault(self, meta: StepMeta, hooks: FaultHooks) -> str | None:
        """The `fault` run-config hook: fail, stall, die or lie at one step, to test the server's
        handling. Returns "lie" where the step's activations are to lie about their shape."""
        spec = self.cfg.fault_spec
        if spec and (spec[1], spec[2], spec[3]) == (self.partition, meta.round, meta.step):
            if spec[0] == "lie":
                return "lie"
            if spec[0] == "raise":
                raise RuntimeError(f"injected fault at partition {spec[1]}, round {spec[2]}, step {spec[3]}")
            if spec[0] == "kill":
                hooks.kill()
                raise RuntimeError("the kill fault's kill() returned")  # a kill() must not return
            hooks.wait(self.cfg.step_timeout + 2)
