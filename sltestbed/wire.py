"""The split-learning protocol: its message types and what each message carries.

Flower-free and typed. Both Flower apps speak it: the ClientApp answers with a `Content`
built by the client node (`client_node.py`), the strategies send `Content` and read the
replies. How a `Content` is laid out in a Flower message (which record, which key) is the
other half of the contract, in `app/flower_records.py`; nothing else touches records.

`MESSAGES` is the one registry of message types: what a request and its reply may carry,
the meta each has, the client node's handler, and whether it acts on or changes the node's
role. Everything else (the ClientApp's routes, the client node's dispatch, which messages
save the role, which may come before training, what `records.read` accepts) derives from
it; adding a message is one entry there (and its handler, where it needs a new one).

What is pending for a client rides in the next message to it, whatever its type: the
gradient of its last step (`grads`) first, then new client-part weights (`part`). The client
applies them in that order before the message's own action (`ClientNode.receive`); the
server keeps them until then (`strategies.strategy.Outbox`). A client whose last step the server
dropped gets no gradient: its pending forward is discarded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .quantizers import Payload
from .scoring import Scores

# --- meta: the small typed record a message carries besides its payloads -------------------
@dataclass(frozen=True)
class StepMeta:
    """Every request during training and evaluation: where the run is, and what a client needs
    to build its role on first contact (base model, batch size, schedule length; with
    bits="auto" the widths calibration chose; local-loss, the steps of a local round)."""

    round: int
    step: int
    base: str
    batch_size: int
    total_steps: int
    widths: dict[str, int] | None = None
    local_steps: int = 0

    def record(self) -> dict:
        out = {"round": self.round, "step": self.step, "base": self.base, "batch_size": self.batch_size,
               "total_steps": self.total_steps}
        if self.local_steps:
            out["local_steps"] = self.local_steps
        out.update({f"{m}_bits": b for m, b in (self.widths or {}).items()})
        return out

    @classmethod
    def from_record(cls, r: dict) -> "StepMeta":
        widths = {k[: -len("_bits")]: int(v) for k, v in r.items() if k.endswith("_bits")}
        return cls(int(r["round"]), int(r["step"]), str(r["base"]), int(r["batch_size"]), int(r["total_steps"]),
                   widths or None, int(r.get("local_steps", 0)))


@dataclass(frozen=True)
class CalibrationRequest:
    base: str
    batch_size: int
    batches: int
    max_rel_mse: float

    def record(self) -> dict:
        return {"base": self.base, "batch_size": self.batch_size, "batches": self.batches,
                "max_rel_mse": self.max_rel_mse}

    @classmethod
    def from_record(cls, r: dict) -> "CalibrationRequest":
        return cls(str(r["base"]), int(r["batch_size"]), int(r["batches"]), float(r["max_rel_mse"]))


@dataclass(frozen=True)
class BaseRequest:
    """base-delivery = flower: the base model's fingerprint (what the clients' metas name it
    by) and its model config (JSON), beside the client part's weights in `part`."""

    fingerprint: str
    config: str

    def record(self) -> dict:
        return {"fingerprint": self.fingerprint, "config": self.config}

    @classmethod
    def from_record(cls, r: dict) -> "BaseRequest":
        return cls(str(r["fingerprint"]), str(r["config"]))


@dataclass(frozen=True)
class EchoRequest:
    reply_bytes: int

    def record(self) -> dict:
        return {"reply_bytes": self.reply_bytes}

    @classmethod
    def from_record(cls, r: dict) -> "EchoRequest":
        return cls(int(r["reply_bytes"]))


@dataclass(frozen=True)
class NodeInfo:
    partition: int
    num_partitions: int
    train_size: int
    test_size: int
    threads: int = 0  # the node's torch compute threads (0: not reported)

    def record(self) -> dict:
        return {"partition": self.partition, "num_partitions": self.num_partitions, "train_size": self.train_size,
                "test_size": self.test_size, "threads": self.threads}

    @classmethod
    def from_record(cls, r: dict) -> "NodeInfo":
        return cls(int(r["partition"]), int(r["num_partitions"]), int(r["train_size"]), int(r["test_size"]),
                   int(r.get("threads", 0)))


@dataclass(frozen=True)
class LocalResult:
    num_examples: int
    loss: float

    def record(self) -> dict:
        return {"num_examples": self.num_examples, "loss": self.loss}

    @classmethod
    def from_record(cls, r: dict) -> "LocalResult":
        return cls(int(r["num_examples"]), float(r["loss"]))


Meta = StepMeta | CalibrationRequest | BaseRequest | EchoRequest | NodeInfo | LocalResult


# --- the other records ----------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """The small integers of a batch: question lengths, and where they may go the labels and
    the question types (the server scores with them when it holds the labels)."""

    lengths: torch.Tensor
    labels: torch.Tensor | None = None
    qtype: torch.Tensor | None = None


def client_batches(values: dict, batch: Batch, size: int, take=None):
    """A round's upload (local-loss: one payload per modality over the round's rows) cut into
    its client batches of `size` rows, in order: (values per modality, `Batch`), the question
    text to the batch's longest question. `take(value, rows, tokens)` cuts one modality's value
    (default: a tensor's rows, then its first `tokens` tokens where given)."""
    take = take or _tensor_rows
    for start in range(0, len(batch.lengths), size):
        rows = slice(start, start + size)
        lengths = batch.lengths[rows]
        tokens = int(lengths.max())
        yield ({m: take(v, rows, tokens if m == "text" else None) for m, v in values.items()},
               Batch(lengths, None if batch.labels is None else batch.labels[rows]))


def _tensor_rows(value: torch.Tensor, rows: slice, tokens: int | None) -> torch.Tensor:
    return value[rows] if tokens is None else value[rows][:, :tokens]


@dataclass(frozen=True)
class LossReply:
    """Labels at the client: its batch's loss and its gradient w.r.t. what the server sent,
    the logits (`wrt` "logits") or, U-shaped, the hidden state at the answer position."""

    loss: float
    grad: torch.Tensor
    wrt: str = "logits"


@dataclass
class Content:
    """What one message carries; every part optional. The field order is the order of the
    records in the Flower message."""

    grads: dict[str, Payload] | None = None  # cut-layer gradients, server -> client
    acts: dict[str, Payload] | None = None  # activations, client -> server
    batch: Batch | None = None
    logits: torch.Tensor | None = None  # server -> client, labels at the client
    hidden: torch.Tensor | None = None  # server -> client, U-shaped: its output at the answer position
    loss: LossReply | None = None
    part: dict[str, torch.Tensor] | None = None  # client-part (or whole-model) weights
    echo: bytes | None = None
    state: bytes | None = None  # a node's role state (`ClientRole.state_bytes`), for checkpoints
    score: Scores | None = None
    calibration: dict | None = None  # a client's entropy report (bits="auto")
    meta: Meta | None = None

    def present(self) -> list[str]:
        """Names of the parts this content carries, in record order."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


# --- the message registry -----------------------------------------------------------------------
@dataclass(frozen=True)
class MessageType:
    """One message type: what its request and reply may carry (`Content` fields; `meta` is
    the typed meta named beside), the `ClientNode` method that answers it, and its effect on
    the node's role."""

    name: str  # "<Flower category>.<action>": the ClientApp registers it under that route
    request: tuple[str, ...]
    reply: tuple[str, ...]
    handler: str
    request_meta: type | None = StepMeta
    reply_meta: type | None = None
    role: bool = False  # acts on the node's role (built on first contact, restored from saved state)
    saves_role: bool = False  # changes the role: the ClientApp saves its state after it
    setup: bool = False  # comes before training: a node may still be loading its data
    note: str = ""

    def carries(self, direction: str) -> tuple[str, ...]:
        """The `Content` fields a request ("down") or reply ("up") of this type may carry."""
        carried, meta = (self.request, self.request_meta) if direction == "down" else (self.reply, self.reply_meta)
        return carried + (("meta",) if meta is not None else ())


STEP, LOGITS, PART, EVAL, SCORE = "train.step", "train.logits", "query.part", "evaluate.forward", "evaluate.score"
INFO, CALIBRATE, ECHO, LOCAL, EVAL_LOCAL = "query.info", "query.calibrate", "query.echo", "train.local", "evaluate.local"
BASE, ROUND = "query.base", "train.round"
STATE, RESTORE = "query.state", "train.restore"  # checkpoints: outside the protocol, never in the ledger
PENDING = ("grads", "part")  # what waits for a client rides with its next role message
MESSAGES: dict[str, MessageType] = {m.name: m for m in (
    MessageType(INFO, (), (), "_info", request_meta=None, reply_meta=NodeInfo, setup=True),
    MessageType(BASE, ("part",), (), "_base", request_meta=BaseRequest, setup=True,
                note="base-delivery=flower: the base's client part, once per node"),
    MessageType(CALIBRATE, (), ("calibration",), "_calibrate", request_meta=CalibrationRequest, setup=True,
                note="bits=auto: the entropy report"),
    MessageType(ECHO, ("echo",), ("echo",), "_echo", request_meta=EchoRequest, note="round-trip benchmark"),
    MessageType(STEP, PENDING, ("acts", "batch"), "_step", role=True, saves_role=True),
    MessageType(ROUND, PENDING, ("acts", "batch"), "_round", reply_meta=LocalResult, role=True, saves_role=True,
                note="local-loss: a round's local steps, its activations up in one message"),
    MessageType(LOGITS, ("logits", "hidden"), ("loss",), "_logits", role=True, saves_role=True,
                note="labels at the client; U-shaped"),
    MessageType(PART, PENDING, ("part",), "_part", role=True, saves_role=True, note="client part up"),
    MessageType(EVAL, PENDING, ("acts", "batch"), "_evaluate", role=True, saves_role=True,
                note="test shard"),
    MessageType(SCORE, ("logits", "hidden"), ("score",), "_score", role=True,
                note="labels at the client; U-shaped"),
    MessageType(STATE, (), ("state",), "_state", role=True, note="checkpoint: the node's role state up"),
    MessageType(RESTORE, ("state",), (), "_restore", role=True, saves_role=True,
                note="resume: a checkpoint's role state down"),
    MessageType(LOCAL, ("part",), ("part",), "_local", reply_meta=LocalResult, note="FedAvg"),
    MessageType(EVAL_LOCAL, ("part",), ("score",), "_evaluate_local", note="FedAvg"),
)}
MESSAGE_TYPES = tuple(MESSAGES)
SETUP = tuple(t for t, m in MESSAGES.items() if m.setup)


def message_type(name: str) -> MessageType:
    try:
        return MESSAGES[name]
    except KeyError:
        raise ValueError(f"unknown message type {name!r}; known: {', '.join(MESSAGE_TYPES)}") from None
