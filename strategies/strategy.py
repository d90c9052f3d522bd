"""What the strategies share: the run loop, a round's clients, one split step, what waits for
each client until its next message, evaluation.

A strategy gets a ready `RunSetup` and a `Transport`; its constructor does no I/O. `run()`
trains and evaluates round after round and returns a `RunReport`.

    for each round:  train_round (the strategy's own)  ->  evaluate_round  ->  a RoundRecord
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from sltestbed import wire
from sltestbed.experiment import ExperimentConfig
from sltestbed.averaging import fedavg
from sltestbed.label_protocol import label_protocol
from sltestbed.ledger import ByteLedger
from sltestbed.model import ClientPart, TinyLlava
from sltestbed.roles import Activations, ServerRole, load_client_state
from sltestbed.trainer import OptimConfig
from sltestbed.wire import Content, StepMeta

from sltestbed.privacy import Observation, quantizer_state
from sltestbed.privacy.after_training import attack_run

from .benchmark import roundtrip_benchmark
from .observer import Observer
from .setup import Client, RunSetup
from .transport import Failure, Transport, exchange, record_failure

PROGRESS_SECONDS = 10.0  # within a round, a progress line at most this often


def activation_problem(content: Content, tokens: int, width: int, max_batch: int | None = None) -> str | None:
    """What is wrong with a reply's activations for a cut that sends `tokens` image tokens and
    question tokens of `width` values each (None: nothing). A payload's header may be
    consistent and its checksum valid and still lie about the tensor: the shapes are checked
    against what the cut sends before the server computes with them."""
    acts, batch = content.acts or {}, content.batch
    if set(acts) != {"image", "text"} or batch is None:
        return f"expected image and text activations with their batch, got {sorted(acts)}"
    b = len(batch.lengths)
    if max_batch is not None and not 1 <= b <= max_batch:
        return f"a batch of {b} samples, expected 1 to {max_batch}"
    image, text = tuple(acts["image"].shape), tuple(acts["text"].shape)
    if image != (b, tokens, width):
        return f"image shape {image}, expected {(b, tokens, width)}"
    longest = int(batch.lengths.max()) if b else 0
    if len(text) != 3 or text[0] != b or text[2] != width or text[1] < longest or int(batch.lengths.min()) < 1:
        return f"text shape {text} with question lengths up to {longest}, expected ({b}, >= {longest}, {width})"
    return None


@dataclass
class RoundRecord:
    round: int
    loss: float
    accuracy: float
    accuracy_by_type: dict
    bytes_up: int
    bytes_down: int
    round_trips: int
    failures: int
    seconds: float


@dataclass
class RunReport:
    """What a run produced; `app/results.py` writes it."""

    cfg: ExperimentConfig
    base_dir: str | None
    clients: list[Client]
    calibration: dict
    ledger: ByteLedger
    rounds: list[RoundRecord]
    failures: list[Failure]
    round_trips: int
    roundtrip: dict = field(default_factory=dict)  # the round-trip benchmark, when asked for
    model: TinyLlava | None = None  # the trained model, with save-model
    privacy: dict = field(default_factory=dict)  # the attacks' report, with attack != none
    privacy_images: dict = field(default_factory=dict)  # per knowledge level, first images and reconstructions
    observation: Observation | None = None  # what the server kept for the attacks
    client_state: dict | None = None  # the client weights the protocol sent the server (the white-box level)
    trained_quantizer: dict | None = None  # the first client's trained quantizer encoders (trained-quantizer level)
    resumed_after: int = 0  # a resumed run: the checkpoint's round (0: the run went through from round 1)


class RunStopped(RuntimeError):
    """The run cannot go on, or ended with no result: the message says why."""


def describe_failures(failures: list[Failure]) -> str:
    """Failures per partition: how many, from when, and why (each distinct reason, last first)."""
    parts = []
    for partition in sorted({f.partition for f in failures}):
        mine = [f for f in failures if f.partition == partition]
        reasons = list(dict.fromkeys(f.reason for f in reversed(mine)))
        why = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else "")
        parts.append(f"partition {partition}: {len(mine)} failed, the first in round {mine[0].round} step "
                     f"{mine[0].step} ({mine[0].message_type}), because: {why}")
    return "; ".join(parts)


class Outbox:
    """What waits on the server for each client until its next message, whatever its type:
    the gradient of its last step, then new client-part weights (see `sltestbed.wire`)."""

    def __init__(self):
        self.grads: dict[int, dict] = {}
        self.parts: dict[int, dict] = {}

    def request(self, node: int, mtype: str) -> tuple[str, Content]:
        return mtype, Content(grads=self.grads.pop(node, None), part=self.parts.pop(node, None))


class Strategy:
    """Base class: subclasses implement `train_round(round)` and may override `evaluate_round`."""

    name = "base"
    node_roles = True  # the nodes hold roles whose state a checkpoint keeps (FedAvg's hold none)
    step_message = wire.STEP  # the message of a training step (what the round-trip benchmark times)
    # what a client needs to build its role on first contact: its batch size and the length of
    # its learning-rate schedule (subclasses set both)
    client_batch: int = 1
    client_steps: int = 1

    def __init__(self, setup: RunSetup, transport: Transport, log=print):
        self.setup, self.cfg, self.transport, self.log = setup, setup.cfg, transport, log
        self.clients = setup.clients
        self.failures: list[Failure] = list(setup.failures)
        self.rounds: list[RoundRecord] = []
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.outbox = Outbox()
        self.labels = label_protocol(self.cfg.labels)  # where the labels and the loss are
        self.step_seconds: list[float] = []  # wall time of each training step (its round trips included)
        self.observer: Observer | None = None  # with attack != none: watches every exchange (`watch`)
        self.parts_seen: dict[int, dict] = {}  # node -> the last client weights it sent the server
        self.progress: dict | None = None  # this round's steps, samples and loss so far (the progress lines)
        self.scalars = None  # a writer with add_scalar(tag, value, step), e.g. TensorBoard's (run_strategy)
        self.checkpoints = None  # a `checkpoint.Checkpoints`: written after every round (run_strategy)
        self.first_round = 1  # a resumed run starts after its checkpoint's round

    # --- messages ---------------------------------------------------------------------------
    def meta(self, round: int, step: int) -> StepMeta:
        widths = self.cfg.widths if self.cfg.auto_bits else None  # calibration's choice, for the clients
        return StepMeta(round, step, self.setup.client_base, self.client_batch, self.client_steps, widths)

    def exchange(self, requests: dict[int, tuple[str, Content]], round: int, step: int,
                 account: bool = True) -> dict[int, Content]:
        """One round trip (every request gets this step's meta unless it has its own); the
        replies that came, in partition order. A node that fails or stays silent is recorded
        and left out; past `max-failed-steps` such failures the run stops (`RunStopped`)."""
        for _, content in requests.values():
            if content.meta is None:
                content.meta = self.meta(round, step)
        replies = exchange(self.transport, requests, round, step, self.failures, self.log, account)
        if self.observer is not None:
            self.observer.exchanged(round, step, requests, replies)
        self.check_failures()
        return replies

    def check_failures(self) -> None:
        """Past `max-failed-steps` lost client messages the run stops (`RunStopped`)."""
        if len(self.failures) > self.cfg.max_failed_steps:
            raise RunStopped(f"run stopped: {len(self.failures)} client messages failed, more than "
                             f"max-failed-steps = {self.cfg.max_failed_steps}. {describe_failures(self.failures)}")

    def refuse_bad_activations(self, replies: dict[int, Content], round: int, step: int, mtype: str, server_of,
                               max_batch: int | None = None) -> dict[int, Content]:
        """The replies whose activations are what the cut sends (`activation_problem`, against
        the `cut_shape` of the server role `server_of(node)` they go to); each of the others is
        a failure of its node, recorded and left out, as a reply that never came."""
        for node in list(replies):
            shape = getattr(server_of(node), "cut_shape", None)
            problem = None if shape is None else activation_problem(replies[node], *shape, max_batch)
            if problem is None:
                continue
            del replies[node]
            record_failure(self.transport, self.failures, round, step, node, mtype, f"activations refused: {problem}",
                           self.log)
        self.check_failures()
        return replies

    def sample(self) -> list[Client]:
        """Clients of this round: a seeded fraction of those with no reply outstanding."""
        free = [c for c in self.clients if self.transport.is_free(c.node_id)]
        k = max(1, math.ceil(self.cfg.fraction * len(self.clients)))
        if len(free) <= k:
            return free
        idx = torch.randperm(len(free), generator=self.generator)[:k].sort().values
        return [free[i] for i in idx]

    def server_role(self, model: TinyLlava, total_steps: int) -> ServerRole:
        return ServerRole(model, self.cfg.cut_layers, optim=OptimConfig(self.cfg.lr, total_steps),
                          trainable=self.cfg.modules, grad_scheme=self.cfg.grad_quantizer,
                          grad_bits=self.cfg.gradient_bits, seed=self.cfg.seed, head=not self.labels.head_on_client,
                          compute=self.cfg.compute())

    # --- the split step shared by the split strategies ----------------------------------------
    def split_step(self, rnd: int, step: int, clients: list[Client], server_of) -> float | None:
        """One training step of `clients`. `server_of(node)`: the ServerRole that node's
        activations go through (clients that share one form one batch). Returns the step's
        mean loss (None if no client answered)."""
        started = time.perf_counter()
        # 1. each client sends its next batch's activations (the gradient of its last step
        #    rides down with this request and is applied first: see `Outbox`)
        replies = self.exchange({c.node_id: self.outbox.request(c.node_id, wire.STEP) for c in clients}, rnd, step)
        replies = self.refuse_bad_activations(replies, rnd, step, wire.STEP, server_of, self.client_batch)
        if not replies:
            return None
        batches = {node: content.batch for node, content in replies.items()}
        groups: dict[int, tuple[ServerRole, list[int]]] = {}
        for node in replies:  # partition order, whatever order replies came in
            server = server_of(node)
            groups.setdefault(id(server), (server, []))[1].append(node)
        # 2. server forward, one batch per server role
        outputs = {}
        for server, nodes in groups.values():
            out = server.forward([Activations(replies[n].acts, batches[n].lengths) for n in nodes])
            outputs.update(zip(nodes, out))
        # 3. the loss where the labels are: here, or (a second round trip) on the clients,
        #    which answer the server's output with the loss and its gradient
        answers = self.labels.losses(outputs, lambda requests: self.exchange(requests, rnd, step))
        # 4. server backward; each client's cut-layer gradient waits in the outbox for the
        #    next message to that client, whatever its type
        total, samples = 0.0, 0
        for server, nodes in groups.values():
            loss, count, grads = self.labels.backward(server, nodes, batches, answers)
            total, samples = total + loss, samples + count
            self.outbox.grads.update({n: g for n, g in zip(nodes, grads) if g is not None})
        self.step_seconds.append(time.perf_counter() - started)
        self._progress(rnd, total / samples if samples else None, samples)
        if self.scalars is not None and samples:  # x: the split steps so far, all rounds
            self.scalars.add_scalar("step/loss", total / samples, len(self.step_seconds))
            self.scalars.add_scalar("step/samples", samples, len(self.step_seconds))
        return total / samples if samples else None

    def collect_parts(self, rnd: int, clients: list[Client], protocol: bool = True,
                      account: bool = True) -> dict[int, dict]:
        """Client-part weights from `clients` (their pending gradients applied first).
        `protocol`: the strategy's own hand-over or averaging (the server then knows them).
        `account`: count the messages' bytes in the ledger (False: a read for the experiment,
        not part of any protocol)."""
        replies = self.exchange({c.node_id: self.outbox.request(c.node_id, wire.PART) for c in clients}, rnd, -1,
                                account)
        parts = {node: content.part for node, content in replies.items()}
        if protocol:
            self.parts_seen.update(parts)
        return parts

    def average_client_parts(self, rnd: int, clients: list[Client]) -> list[int]:
        """FedAvg of `clients`' parts (weighted by their training samples), to every client with
        its next message. Returns the nodes whose parts went into the average."""
        parts = self.collect_parts(rnd, clients)
        if parts:
            size = {c.node_id: c.train_size for c in clients}
            average = fedavg([parts[n] for n in parts], [size[n] for n in parts])
            for c in self.clients:
                self.outbox.parts[c.node_id] = average
        return list(parts)

    # --- evaluation -----------------------------------------------------------------------
    def evaluate_split(self, round: int, server: ServerRole) -> dict:
        """Every client's test shard through its client part (pending gradients and weights
        delivered first) and `server`, scored where the labels are."""
        requests = {c.node_id: self.outbox.request(c.node_id, wire.EVAL) for c in self.clients
                    if self.transport.is_free(c.node_id)}
        replies = self.refuse_bad_activations(self.exchange(requests, round, -1), round, -1, wire.EVAL,
                                              lambda node: server)
        predicted = {node: (server.predict([Activations(c.acts, c.batch.lengths)])[0], c.batch)
                     for node, c in replies.items()}
        scores = self.labels.scores(predicted, lambda requests: self.exchange(requests, round, -1),
                                    self.setup.question_types)
        return scores.result()

    # --- the run --------------------------------------------------------------------------
    def train_round(self, round: int) -> dict:
        """One round of training; returns {"loss": mean training loss}."""
        raise NotImplementedError

    def round_steps(self) -> int:
        """Training steps in a round, for the progress lines (with every client sampled)."""
        return getattr(self, "steps_per_round", 0)

    def _progress(self, rnd: int, loss: float | None, samples: int) -> None:
        """A line every PROGRESS_SECONDS within a round: steps done, running loss, samples/s, ETA."""
        p = self.progress
        if p is None or p["round"] != rnd:
            p = self.progress = {"round": rnd, "started": time.perf_counter(), "last": time.perf_counter(), "steps": 0,
                                 "samples": 0, "loss": 0.0, "scored": 0}
        p["steps"] += 1
        p["samples"] += samples
        if loss is not None:
            p["loss"], p["scored"] = p["loss"] + loss, p["scored"] + 1
        now = time.perf_counter()
        if now - p["last"] < PROGRESS_SECONDS:
            return
        p["last"] = now
        elapsed, total = now - p["started"], self.round_steps()
        eta = f", about {elapsed / p['steps'] * (total - p['steps']):.0f} s left in the round" if total > p["steps"] else ""
        loss_text = f"loss {p['loss'] / p['scored']:.4f}, " if p["scored"] else ""
        self.log(f"round {rnd}/{self.cfg.num_rounds}: step {p['steps']}/{total or '?'}, {loss_text}"
                 f"{p['samples'] / elapsed:.0f} samples/s{eta}")

    def evaluate_round(self, round: int) -> dict:
        return self.evaluate_split(round, self.server)

    @staticmethod
    def mean(values) -> float:
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("nan")

    def trained_model(self) -> TinyLlava | None:
        """The model as trained: the server part, with the client part of the first client that
        answers (after its last gradient); None where there is no single model (parallel's
        clients each keep their own part: the first client's is used)."""
        model = self.server.model
        for client in self.clients:
            parts = self.collect_parts(self.cfg.num_rounds, [client], protocol=False)
            if client.node_id in parts:
                load_client_state(model, ClientPart(model, self.cfg.cut_layers), parts[client.node_id])
                return model
        return None

    # --- checkpoints (`checkpoint.py`) ---------------------------------------------------------
    def server_state(self) -> dict:
        """The server side's own training state; strategies with more (SplitFed's copies, the
        sequential holder) add theirs."""
        return {"server": self.server.state()}

    def load_server_state(self, state: dict) -> None:
        self.server.load_state(state["server"])

    def checkpoint_state(self) -> dict:
        """Everything of the server side a resumed run needs to go on as this one would, with
        nodes named by partition."""
        partition = {c.node_id: c.partition for c in self.clients}
        return {"server": self.server_state(), "generator": self.generator.get_state(),
                "grads": {partition[n]: g for n, g in self.outbox.grads.items()},
                "parts": {partition[n]: p for n, p in self.outbox.parts.items()},
                "parts_seen": {partition[n]: p for n, p in self.parts_seen.items()},
                "observer": None if self.observer is None else self.observer.checkpoint_state(),
                "rounds": list(self.rounds), "failures": list(self.failures), "step_seconds": list(self.step_seconds),
                "transport": self.transport.checkpoint_state()}

    def load_checkpoint_state(self, state: dict) -> None:
        node = {c.partition: c.node_id for c in self.clients}
        self.load_server_state(state["server"])
        self.generator.set_state(state["generator"])
        self.outbox.grads = {node[p]: g for p, g in state["grads"].items()}
        self.outbox.parts = {node[p]: w for p, w in state["parts"].items()}
        self.parts_seen = {node[p]: w for p, w in state["parts_seen"].items()}
        if self.watch() is not None:
            self.observer.load_checkpoint_state(state["observer"])
        self.rounds, self.failures = list(state["rounds"]), list(state["failures"])
        self.step_seconds = list(state["step_seconds"])
        self.transport.load_checkpoint_state(state["transport"])
        self.first_round = self.rounds[-1].round + 1 if self.rounds else 1

    def watch(self) -> Observer | None:
        """With attack != none, the observer of every exchange (built once the subclass has set
        its client batch)."""
        if self.cfg.attack != "none" and self.observer is None:
            self.observer = Observer(self.cfg, self.clients, self.client_batch, self.log)
        return self.observer

    def run(self) -> RunReport:
        ledger = self.transport.ledger
        self.watch()
        for rnd in range(self.first_round, self.cfg.num_rounds + 1):
            t0, trips, fails, before = time.perf_counter(), self.transport.round_trips, len(self.failures), len(ledger.rows)
            train = self.train_round(rnd)
            result = self.evaluate_round(rnd)
            rows = ledger.rows[before:]
            record = RoundRecord(rnd, train.get("loss", float("nan")), result["accuracy"], result["accuracy_by_type"],
                                 sum(r.serialized_bytes for r in rows if r.direction == "up"),
                                 sum(r.serialized_bytes for r in rows if r.direction == "down"),
                                 self.transport.round_trips - trips, len(self.failures) - fails, time.perf_counter() - t0)
            self.rounds.append(record)
            if self.scalars is not None:
                for name in ("loss", "accuracy", "bytes_up", "bytes_down", "round_trips", "failures", "seconds"):
                    self.scalars.add_scalar(f"round/{name}", getattr(record, name), rnd)
                for qtype, value in record.accuracy_by_type.items():
                    self.scalars.add_scalar(f"round/accuracy_{qtype}", value, rnd)
            self.log(f"round {rnd}/{self.cfg.num_rounds}: loss {record.loss:.4f}, accuracy {record.accuracy:.4f}, "
                     f"{record.bytes_up:,} B up, {record.bytes_down:,} B down, {record.round_trips} round trips, "
                     f"{record.failures} failures, {record.seconds:.1f} s")
            if self.checkpoints is not None:
                self.checkpoints.save(self, rnd)
        last = self.rounds[-1]
        if not math.isfinite(last.accuracy):  # never a "finished" run without a result
            lost = [f for f in self.failures if f.round == last.round and f.step == -1]
            raise RunStopped(f"run stopped: the final round ({last.round}) has no accuracy (nan): no client's test "
                             f"shard was scored" + (f". Its evaluation lost {describe_failures(lost)}" if lost else ""))
        roundtrip = {}
        if self.cfg.benchmark_roundtrips:
            roundtrip = roundtrip_benchmark(self, self.cfg.benchmark_roundtrips)
            self.log(f"round-trip benchmark: step {roundtrip['step_median_s'] * 1e3:.1f} ms, bare Flower round trip "
                     f"{roundtrip['bare_roundtrip_median_s'] * 1e3:.1f} ms, ratio {roundtrip['ratio']:.2f} "
                     f"({roundtrip['roundtrips_per_step']} round trip(s) per step)")
        model = self.trained_model() if self.cfg.save_model else None
        report = RunReport(self.cfg, self.setup.base_dir, self.clients, self.setup.calibration, ledger, self.rounds,
                           self.failures, self.transport.round_trips, roundtrip, model,
                           resumed_after=self.first_round - 1)
        if self.cfg.attack != "none":
            self.attack(report)
        return report

    def trained_quantizer(self) -> dict | None:
        """The first client's trained quantizer encoders (None where the quantizer has no
        weights), read after training outside the protocol: no byte of it is counted."""
        if not any(True for _ in self.server.model.quant_encoders.parameters()):
            return None
        for client in self.clients:
            parts = self.collect_parts(self.cfg.num_rounds, [client], protocol=False, account=False)
            if client.node_id in parts:
                return quantizer_state(parts[client.node_id])
        return None

    def attack(self, report: RunReport) -> None:
        """After training: the attacks on what the server kept, at the public-base level and,
        where the protocol sent client weights through the server, white-box."""
        report.observation = self.observer.observation() if self.observer else None
        if report.observation is None:
            self.log("attacks: no training batch was kept, nothing to attack")
            return
        seen = sorted(self.parts_seen, key=lambda n: next(c.partition for c in self.clients if c.node_id == n))
        report.client_state = self.parts_seen[seen[0]] if seen else None
        report.trained_quantizer = quantizer_state(report.client_state) or self.trained_quantizer()
        started = time.perf_counter()
        report.privacy, report.privacy_images = attack_run(self.cfg, report.observation,
                                                           self.setup.base or self.setup.new_model(),
                                                           report.client_state, self.clients, self.log,
                                                           trained_quantizer=report.trained_quantizer)
        self.log(f"attacks: done in {time.perf_counter() - started:.0f} s")
