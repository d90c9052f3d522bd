"""What every strategy shares: set-up (data, base model, the nodes and their partitions),
one exchange of messages with accounting and fault handling, evaluation, the results."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from flwr.app import Message, RecordDict
from flwr.common.serde import message_to_proto

from sltestbed import calibration
from sltestbed.experiment import ExperimentConfig, model_config, question_types, quantizer_overrides, splits
from sltestbed.ledger import ByteLedger
from sltestbed.model import PRESETS, ClientPart, TinyLlava
from sltestbed.roles import OptimConfig, ServerRole, dequantized
from sltestbed.train import ensure_base_model
from sltestbed.trainer import TensorData

from . import protocol as P


SETUP_TIMEOUT = 600.0  # seconds for a node's first messages (it loads data and builds its model)


@dataclass
class Client:
    node_id: int
    partition: int
    train_size: int
    test_size: int


@dataclass
class Failure:
    round: int
    step: int
    partition: int
    message_type: str
    reason: str


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


class Strategy:
    """Base class: subclasses implement `train_round(round)` and may override `evaluate`."""

    name = "base"

    def __init__(self, grid, cfg: ExperimentConfig, log=print):
        self.grid, self.cfg, self.log = grid, cfg, log
        # seconds between reply polls: the simulation's in-memory grid is a local call (its own
        # default, 0.1 s, would double a step's latency); a deployment's grid is a request
        self.poll_interval = 0.002 if type(grid).__name__ == "InMemoryGrid" else 0.02
        self.ledger = ByteLedger()
        self.messages_sent = 0  # numbers the messages in the ledger
        self.failures: list[Failure] = []
        self.rounds: list[RoundRecord] = []
        self.round_trips = 0
        self.outstanding: dict[int, str] = {}  # node -> id of a message whose reply never came
        self.warm: set[int] = set()  # nodes that have built their role (answered a step)
        train, test, tokenizer, collator = splits(cfg)
        self.vocab = len(tokenizer)
        self.base_dir = ensure_base_model(cfg.base, cfg.base_spec(), cfg.cache_dir, TensorData(train, collator),
                                          TensorData(test, collator), self.vocab, progress=False, log_fn=log)
        self.clients = self.discover()
        self.calibration: dict = {}
        if cfg.auto_bits:
            self.calibrate()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.pending_grads: dict[int, dict] = {}  # node -> gradient payloads to deliver with its next message
        self.pending_part: dict[int, dict] = {}  # node -> client-part weights to deliver with its next message
        self.step_seconds: list[float] = []  # wall time of each training step (its round trips included)
        self.roundtrip: dict = {}

    # --- set-up ---------------------------------------------------------------------------
    def new_model(self) -> TinyLlava:
        if self.base_dir:
            return TinyLlava.from_pretrained(self.base_dir, **quantizer_overrides(self.cfg))
        torch.manual_seed(self.cfg.seed)
        return TinyLlava(model_config(self.cfg, self.vocab))

    def discover(self) -> list[Client]:
        nodes = sorted(self.grid.get_node_ids())
        if not nodes:
            raise RuntimeError("no SuperNodes are connected")
        replies = self.exchange({n: (P.INFO, RecordDict()) for n in nodes}, round=0, step=0, meta=False)
        clients = []
        for node, content in replies.items():
            m = content["meta"]
            clients.append(Client(node, int(m["partition"]), int(m["train_size"]), int(m["test_size"])))
        if not clients:
            raise RuntimeError("no SuperNode answered the first message")
        clients.sort(key=lambda c: c.partition)
        self.log(f"{len(clients)} clients: " + ", ".join(f"partition {c.partition} ({c.train_size} train, "
                                                          f"{c.test_size} test)" for c in clients))
        return clients

    def calibrate(self) -> None:
        """bits="auto": every client reports the entropy of its first batches' normalised
        features per modality; the run then uses, per modality, the largest width chosen."""
        batch = max(1, math.ceil(self.cfg.batch_size / len(self.clients)))
        requests = {c.node_id: (P.CALIBRATE, RecordDict()) for c in self.clients}
        replies = self.exchange(requests, round=0, step=0, meta={
            "base": self.base_dir or "", "batch_size": batch, "batches": self.cfg.auto_batches,
            "max_rel_mse": self.cfg.auto_max_rel_mse})
        partition = {c.node_id: c.partition for c in self.clients}
        self.calibration = calibration.combine({partition[n]: P.get_calibration(c) for n, c in replies.items()})
        self.cfg = self.cfg.resolved(self.calibration["bits"])
        self.log("calibration: " + "; ".join(
            f"{m} {b} bits (h {self._pooled(m, 'entropy_bits')}, H* {self._pooled(m, 'needed_bits')})"
            for m, b in self.calibration["bits"].items()))

    def _pooled(self, modality: str, key: str) -> str:
        return "/".join(f"{r[modality][key]:.2f}" for r in self.calibration["clients"].values())

    def sample(self) -> list[Client]:
        """Clients of this round: a seeded fraction of those with no reply outstanding."""
        free = [c for c in self.clients if self._free(c.node_id)]
        k = max(1, math.ceil(self.cfg.fraction * len(self.clients)))
        if len(free) <= k:
            return free
        idx = torch.randperm(len(free), generator=self.generator)[:k].sort().values
        return [free[i] for i in idx]

    def _free(self, node: int) -> bool:
        """A node whose last reply never came takes no new message until that reply is in."""
        mid = self.outstanding.get(node)
        if mid is None:
            return True
        if list(self.grid.pull_messages([mid])):
            del self.outstanding[node]
            return True
        return False

    def server_role(self, model: TinyLlava, total_steps: int) -> ServerRole:
        return ServerRole(model, self.cfg.cut_layers, optim=OptimConfig(self.cfg.lr, total_steps),
                          trainable=self.cfg.modules, grad_scheme=self.cfg.grad_quantizer,
                          grad_bits=self.cfg.gradient_bits, seed=self.cfg.seed)

    # --- one exchange ---------------------------------------------------------------------
    # what a client needs to build its role on first contact: its batch size and the length of
    # its learning-rate schedule (subclasses set both)
    client_batch: int = 1
    client_steps: int = 1

    def meta(self, round: int, step: int) -> dict:
        meta = {"round": round, "step": step, "base": self.base_dir or "", "batch_size": self.client_batch,
                "total_steps": self.client_steps}
        if self.cfg.auto_bits:  # the widths calibration chose, for the clients to build their quantizers
            meta.update({f"{m}_bits": b for m, b in self.cfg.widths.items()})
        return meta

    def exchange(self, requests: dict[int, tuple[str, RecordDict]], round: int, step: int,
                 meta: dict | bool = True, account: bool = True) -> dict[int, RecordDict]:
        """Send one message to each node (all in one round trip), return the replies that came,
        in partition order. A node that fails or stays silent past the step timeout is recorded and
        left out. `account=False` keeps the messages out of the ledger (the benchmark's)."""
        partition = {c.node_id: c.partition for c in getattr(self, "clients", [])}
        messages = []
        for node, (mtype, content) in requests.items():
            if meta is not False:
                P.put_meta(content, **(meta if isinstance(meta, dict) else self.meta(round, step)))
            msg = Message(content, dst_node_id=node, message_type=mtype)
            if account:
                self._account(msg, "down", round, step, partition.get(node, -1), mtype)
            messages.append(msg)
        # a node's first message of a kind that builds its role (model, data) may take far longer
        # than a step: it gets the set-up timeout
        cold = any(n not in self.warm for n in requests) or any(t in P.SETUP for t, _ in requests.values())
        replies, missing = self._send_and_receive(messages, SETUP_TIMEOUT if cold else self.cfg.step_timeout)
        self.round_trips += 1
        out = {}
        for reply in replies:
            src = reply.metadata.src_node_id
            mtype = requests[src][0]
            if reply.has_error():
                reason = reply.error.reason.strip().splitlines()
                self._fail(round, step, partition.get(src, -1), mtype, f"client error: {reason[-1][-300:] if reason else '?'}")
                continue
            if account:
                self._account(reply, "up", round, step, partition.get(src, -1), mtype)
            out[src] = reply.content
            if mtype not in P.SETUP:
                self.warm.add(src)
        for node, mid in missing.items():  # no reply within the timeout: the node stays busy
            self.outstanding[node] = mid
            self._fail(round, step, partition.get(node, -1), requests[node][0],
                       f"no reply within {SETUP_TIMEOUT if cold else self.cfg.step_timeout} s")
        # in partition order: node ids are drawn at random each run, and the order in which
        # replies are joined into one batch (or averaged) changes floating-point sums
        return dict(sorted(out.items(), key=lambda kv: (partition.get(kv[0], -1), kv[0])))

    def _send_and_receive(self, messages: list[Message], timeout: float):
        """Push all messages, pull replies until every one is in or `timeout` passes.
        Returns (replies, {node: id of the message still unanswered})."""
        ids = dict(zip(self.grid.push_messages(messages), (m.metadata.dst_node_id for m in messages)))
        waiting = set(ids)
        replies = []
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(waiting)):
                waiting.discard(reply.metadata.reply_to_message_id)
                replies.append(reply)
            if waiting:
                time.sleep(self.poll_interval)
        return replies, {ids[mid]: mid for mid in waiting}

    def _account(self, message: Message, direction: str, round: int, step: int, partition: int, mtype: str) -> None:
        size = message_to_proto(message).ByteSize()
        self.messages_sent += 1
        if partition < 0 and "meta" in message.content and "partition" in message.content["meta"]:
            partition = int(message.content["meta"]["partition"])  # a reply to discovery names its partition
        for part in P.parts(message.content):
            self.ledger.record(round=round, step=step, client=partition, direction=direction, kind=part.kind,
                               elements=part.elements, bits=part.bits, serialized_bytes=part.serialized_bytes,
                               message_bytes=size, message_type=mtype, message=self.messages_sent)

    def _fail(self, round, step, partition, mtype, reason) -> None:
        self.failures.append(Failure(round, step, partition, mtype, reason))
        self.log(f"round {round} step {step}: partition {partition} dropped ({mtype}: {reason})")

    # --- the split step shared by the split strategies ----------------------------------------
    def request(self, node: int, mtype: str) -> tuple[str, RecordDict]:
        """A message for `node`, carrying what is pending for it: last step's gradient first,
        then new client-part weights."""
        content = RecordDict()
        if node in self.pending_grads:
            P.put_payloads(content, "grads", self.pending_grads.pop(node), entropy=self.cfg.entropy_coding)
        if node in self.pending_part:
            P.put_state(content, self.pending_part.pop(node))
        return mtype, content

    def split_step(self, rnd: int, step: int, clients: list[Client], server_of) -> float | None:
        """One training step of `clients` (one round trip; two with labels on the clients).
        `server_of(node)` is the ServerRole that node's activations go through: clients that
        share one are joined into one batch. Returns the step's mean loss (None if no client
        answered); the gradients wait in `pending_grads`."""
        started = time.perf_counter()
        replies = self.exchange({c.node_id: self.request(c.node_id, P.STEP) for c in clients}, rnd, step)
        if not replies:
            return None
        groups: dict[int, tuple] = {}
        for node, content in replies.items():  # partition order, whatever order replies came in
            server = server_of(node)
            groups.setdefault(id(server), (server, []))[1].append((node, content))
        logits_of, batch_of = {}, {}
        for server, members in groups.values():
            batches = [P.get_batch(c) for _, c in members]
            inputs = [{**dequantized(P.get_payloads(c, "acts")), "lengths": b["lengths"]}
                      for (_, c), b in zip(members, batches)]
            for (node, _), b, logits in zip(members, batches, server.forward(inputs)):
                logits_of[node], batch_of[node] = logits, b
        losses, sizes = [], []
        if self.cfg.labels == "client":
            answers = self.exchange({n: (P.LOGITS, self._logits_content(l)) for n, l in logits_of.items()}, rnd, step)
        for server, members in groups.values():
            nodes = [n for n, _ in members]
            if self.cfg.labels == "server":
                loss, grads = server.backward_from_labels([batch_of[n]["labels"] for n in nodes])
                losses.append(loss * sum(len(batch_of[n]["lengths"]) for n in nodes))
                sizes.append(sum(len(batch_of[n]["lengths"]) for n in nodes))
            else:
                dlogits = [P.decode_tensor(answers[n]["loss"]["dlogits"]) if n in answers else None for n in nodes]
                grads = server.backward_from_logit_grads(dlogits)
                for n in nodes:
                    if n in answers:
                        losses.append(float(answers[n]["loss"]["loss"]) * len(batch_of[n]["lengths"]))
                        sizes.append(len(batch_of[n]["lengths"]))
            for n, g in zip(nodes, grads):
                if g is not None:
                    self.pending_grads[n] = g
        self.step_seconds.append(time.perf_counter() - started)
        return sum(losses) / sum(sizes) if sizes else None

    def collect_parts(self, rnd: int, clients: list[Client]) -> dict[int, dict]:
        """Client-part weights from `clients` (their pending gradients applied first)."""
        replies = self.exchange({c.node_id: self.request(c.node_id, P.PART) for c in clients}, rnd, -1)
        return {node: P.get_state(content) for node, content in replies.items()}

    # --- evaluation -----------------------------------------------------------------------
    def evaluate_split(self, round: int, server: ServerRole) -> dict:
        """Every client's test shard through its client part (pending gradients and weights
        delivered first) and `server`."""
        requests = {c.node_id: self.request(c.node_id, P.EVAL) for c in self.clients if self._free(c.node_id)}
        replies = self.exchange(requests, round, -1)
        by_node = {}
        for node, content in replies.items():
            acts = dequantized(P.get_payloads(content, "acts"))
            batch = P.get_batch(content)
            logits = server.predict([{**acts, "lengths": batch["lengths"]}])[0]
            by_node[node] = (logits, batch)
        correct, seen = {}, {}
        if self.cfg.labels == "server":
            names = question_types(self.cfg.dataset, self.cfg.seed, self.cfg.test_fraction,
                                   PRESETS[self.cfg.preset]["image_size"])
            for logits, batch in by_node.values():
                hit = (logits.argmax(-1) == batch["labels"]).float()
                for i, q in enumerate(names):
                    mask = batch["qtype"] == i
                    correct[q] = correct.get(q, 0.0) + float(hit[mask].sum())
                    seen[q] = seen.get(q, 0.0) + float(mask.sum())
        else:
            scores = self.exchange({n: (P.SCORE, self._logits_content(l)) for n, (l, _) in by_node.items()}, round, -1)
            for content in scores.values():
                self._add_scores(content, correct, seen)
        return self._accuracy(correct, seen)

    @staticmethod
    def _logits_content(logits: torch.Tensor) -> RecordDict:
        content = RecordDict()
        P.put_logits(content, logits)
        return content

    @staticmethod
    def _add_scores(content: RecordDict, correct: dict, seen: dict) -> None:
        for key, value in content["score"].items():
            kind, q = key.split(".", 1)
            target = correct if kind == "correct" else seen
            target[q] = target.get(q, 0.0) + value

    @staticmethod
    def _accuracy(correct: dict, seen: dict) -> dict:
        total = sum(seen.values())
        return {"accuracy": sum(correct.values()) / total if total else float("nan"),
                "accuracy_by_type": {q: correct[q] / seen[q] for q in sorted(seen) if seen[q]}}

    # --- the run --------------------------------------------------------------------------
    def train_round(self, round: int) -> dict:
        """One round of training; returns {"loss": mean training loss}."""
        raise NotImplementedError

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
            parts = self.collect_parts(self.cfg.num_rounds, [client])
            if client.node_id in parts:
                ClientPart(model, self.cfg.cut_layers).load_state_dict(parts[client.node_id])
                return model
        return None

    def benchmark_roundtrips(self, n: int) -> dict:
        """A training step against a bare Flower round trip measured in the same run: `n` echo
        exchanges with the clients of a step, each message as large as a step's (from the
        ledger), no model on either side."""
        steps = [r for r in self.ledger.rows if r.message_type == P.STEP and r.round >= 1]
        clients = sorted({r.client for r in steps})
        nodes = [c.node_id for c in self.clients if c.partition in clients] or [c.node_id for c in self.clients]
        per_message = {}
        for d in ("up", "down"):
            sizes = {(r.round, r.step, r.client): r.message_bytes for r in steps if r.direction == d}
            per_message[d] = int(sum(sizes.values()) / max(len(sizes), 1))
        seconds = []
        for i in range(n):
            requests = {}
            for node in nodes:
                content = RecordDict()
                content["echo"] = P.ConfigRecord({"echo": bytes(per_message["down"])})
                requests[node] = (P.ECHO, content)
            t0 = time.perf_counter()
            self.exchange(requests, 0, i, meta={"reply_bytes": per_message["up"]}, account=False)
            seconds.append(time.perf_counter() - t0)
        trips = 2 if self.cfg.labels == "client" else 1
        skip = min(3, len(self.step_seconds) // 2)  # leave out the first steps (caches, start-up)
        step = sorted(self.step_seconds[skip:])[len(self.step_seconds[skip:]) // 2] if self.step_seconds else float("nan")
        bare = sorted(seconds)[len(seconds) // 2] if seconds else float("nan")
        return {"step_median_s": step, "bare_roundtrip_median_s": bare, "roundtrips_per_step": trips,
                "ratio": step / (trips * bare) if bare else float("nan"), "clients": len(nodes),
                "message_bytes_up": per_message["up"], "message_bytes_down": per_message["down"], "samples": n}

    def run(self) -> list[RoundRecord]:
        for rnd in range(1, self.cfg.num_rounds + 1):
            t0, trips, fails = time.perf_counter(), self.round_trips, len(self.failures)
            before = len(self.ledger.rows)
            train = self.train_round(rnd)
            result = self.evaluate_round(rnd)
            rows = self.ledger.rows[before:]
            record = RoundRecord(rnd, train.get("loss", float("nan")), result["accuracy"], result["accuracy_by_type"],
                                 sum(r.serialized_bytes for r in rows if r.direction == "up"),
                                 sum(r.serialized_bytes for r in rows if r.direction == "down"),
                                 self.round_trips - trips, len(self.failures) - fails, time.perf_counter() - t0)
            self.rounds.append(record)
            self.log(f"round {rnd}/{self.cfg.num_rounds}: loss {record.loss:.4f}, accuracy {record.accuracy:.4f}, "
                     f"{record.bytes_up:,} B up, {record.bytes_down:,} B down, {record.round_trips} round trips, "
                     f"{record.failures} failures, {record.seconds:.1f} s")
        if self.cfg.benchmark_roundtrips:
            self.roundtrip = self.benchmark_roundtrips(self.cfg.benchmark_roundtrips)
            self.log(f"round-trip benchmark: step {self.roundtrip['step_median_s'] * 1e3:.1f} ms, bare Flower round trip "
                     f"{self.roundtrip['bare_roundtrip_median_s'] * 1e3:.1f} ms, ratio {self.roundtrip['ratio']:.2f} "
                     f"({self.roundtrip['roundtrips_per_step']} round trip(s) per step)")
        return self.rounds
