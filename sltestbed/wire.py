"""The split-learning protocol: its message types and what each message carries.

Flower-free and typed. Both Flower apps speak it: the ClientApp answers with a `Content`
built by the client node (`client_node.py`), the strategies send `Content` and read the
replies. How a `Content` is laid out in a Flower message (which record, which key) is the
other half of the contract, in `simulations/records.py`; nothing else touches records.

    type                 request                        reply
    query.info           -                              meta: NodeInfo
    query.calibrate      meta: CalibrationRequest       calibration (entropy report)
    query.echo           echo, meta: EchoRequest        echo                (benchmark)
    train.step           [grads] [part], meta: StepMeta acts, batch
    train.logits         logits|hidden, meta            loss                (labels at the client; U-shaped)
    query.part           [grads] [part], meta           part                (client part up)
    evaluate.forward     [grads] [part], meta           acts, batch         (test shard)
    evaluate.score       logits|hidden, meta            score               (labels at the client; U-shaped)
    train.local          part, meta                     part, meta: LocalResult   (FedAvg)
    evaluate.local       part, meta                     score               (FedAvg)

What is pending for a client rides in the next message to it, whatever its type: the
gradient of its last step (`grads`) first, then new client-part weights (`part`). The client
applies them in that order before the message's own action (`ClientNode.receive`); the
server keeps them until then (`strategies.base.Outbox`). A client whose last step the server
dropped gets no gradient: its pending forward is discarded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .quantizers import Payload
from .scoring import Scores

STEP = "train.step"
LOGITS = "train.logits"
LOCAL = "train.local"
INFO = "query.info"
CALIBRATE = "query.calibrate"
ECHO = "query.echo"
PART = "query.part"
EVAL = "evaluate.forward"
SCORE = "evaluate.score"
EVAL_LOCAL = "evaluate.local"
MESSAGE_TYPES = (STEP, LOGITS, LOCAL, INFO, CALIBRATE, ECHO, PART, EVAL, SCORE, EVAL_LOCAL)
SETUP = (INFO, CALIBRATE)  # messages before training: a node may still be loading its data


# --- meta: the small typed record a message carries besides its payloads -------------------
@dataclass(frozen=True)
class StepMeta:
    """Every request during training and evaluation: where the run is, and what a client needs
    to build its role on first contact (base model, batch size, schedule length; with
    bits="auto" the widths calibration chose)."""

    round: int
    step: int
    base: str
    batch_size: int
    total_steps: int
    widths: dict[str, int] | None = None

    def record(self) -> dict:
        out = {"round": self.round, "step": self.step, "base": self.base, "batch_size": self.batch_size,
               "total_steps": self.total_steps}
        out.update({f"{m}_bits": b for m, b in (self.widths or {}).items()})
        return out

    @classmethod
    def from_record(cls, r: dict) -> "StepMeta":
        widths = {k[: -len("_bits")]: int(v) for k, v in r.items() if k.endswith("_bits")}
        return cls(int(r["round"]), int(r["step"]), str(r["base"]), int(r["batch_size"]), int(r["total_steps"]),
                   widths or None)


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

    def record(self) -> dict:
        return {"partition": self.partition, "num_partitions": self.num_partitions, "train_size": self.train_size,
                "test_size": self.test_size}

    @classmethod
    def from_record(cls, r: dict) -> "NodeInfo":
        return cls(int(r["partition"]), int(r["num_partitions"]), int(r["train_size"]), int(r["test_size"]))


@dataclass(frozen=True)
class LocalResult:
    num_examples: int
    loss: float

    def record(self) -> dict:
        return {"num_examples": self.num_examples, "loss": self.loss}

    @classmethod
    def from_record(cls, r: dict) -> "LocalResult":
        return cls(int(r["num_examples"]), float(r["loss"]))


Meta = StepMeta | CalibrationRequest | EchoRequest | NodeInfo | LocalResult

# which meta a message carries, per type and direction (None: no meta)
REQUEST_META: dict[str, type | None] = {t: StepMeta for t in MESSAGE_TYPES}
REQUEST_META.update({INFO: None, CALIBRATE: CalibrationRequest, ECHO: EchoRequest})
REPLY_META: dict[str, type | None] = {t: None for t in MESSAGE_TYPES}
REPLY_META.update({INFO: NodeInfo, LOCAL: LocalResult})


# --- the other records ----------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """The small integers of a batch: question lengths, and where they may go the labels and
    the question types (the server scores with them when it holds the labels)."""

    lengths: torch.Tensor
    labels: torch.Tensor | None = None
    qtype: torch.Tensor | None = None


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
    score: Scores | None = None
    calibration: dict | None = None  # a client's entropy report (bits="auto")
    meta: Meta | None = None

    def present(self) -> list[str]:
        """Names of the parts this content carries, in record order."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]
