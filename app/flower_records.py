"""The protocol's layout in Flower messages, and what each piece costs on the wire.

`write` turns a `sltestbed.wire.Content` into a Flower RecordDict, `read` turns one back;
`parts` lists a message's accountable pieces for the byte ledger. Both apps and both
transports use these three functions and nothing else touches records.

    meta    ConfigRecord   the typed meta (`wire.StepMeta`, ...) as plain values         (config)
    acts    ConfigRecord   {modality: codec bytes}   activations, client -> server       (activations)
    grads   ConfigRecord   {modality: codec bytes}   cut-layer gradients, server -> client (gradients)
    batch   ConfigRecord   lengths (and labels, qtype) of the batch as int lists          (config, labels)
    logits  ConfigRecord   {"logits": codec bytes}   labels at the client: server -> client (logits)
    hidden  ConfigRecord   {"hidden": codec bytes}   U-shaped: the server's output, down    (activations)
    loss    ConfigRecord   {"loss": float, "dlogits" or "dhidden": codec bytes}  up      (loss, gradients)
    part    ArrayRecord    client-part or whole-model weights                              (model)
    score   MetricRecord   correct.<type>, seen.<type> counts                              (config)
    calibration ConfigRecord  {"report": JSON}: per-modality entropy report               (config)
    echo    ConfigRecord   {"echo": bytes}: the round-trip benchmark's filler             (config)
    state   ConfigRecord   {"state": bytes}: a node's role state, checkpoints only (never accounted)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from sltestbed import codec
from sltestbed.quantizers import Field, Payload, dequantize
from sltestbed.scoring import Scores
from sltestbed.wire import Batch, Content, LossReply, MessageType


# --- each Content field's record ----------------------------------------------------------------
def encode_tensor(t: torch.Tensor) -> bytes:
    """A float tensor as an fp32 payload (logits, their gradients)."""
    return codec.encode(Payload("fp32", 32, tuple(t.shape), (Field(t.detach().float().contiguous(), 32),))).data


def decode_tensor(data: bytes) -> torch.Tensor:
    return dequantize(codec.decode(data, expect_scheme="fp32"))


def _write_batch(b: Batch, entropy: bool) -> ConfigRecord:
    record = {"lengths": b.lengths.tolist()}
    record.update({k: v.tolist() for k, v in (("labels", b.labels), ("qtype", b.qtype)) if v is not None})
    return ConfigRecord(record)


def _read_batch(record) -> Batch:
    b = {k: torch.tensor(v, dtype=torch.long) for k, v in record.items()}
    return Batch(b["lengths"], b.get("labels"), b.get("qtype"))


def _read_loss(record) -> LossReply:
    loss = dict(record)
    wrt = next((k[1:] for k in loss if k in ("dlogits", "dhidden")), None)
    if wrt is None or set(loss) != {"loss", f"d{wrt}"}:
        raise ValueError(f"loss record has keys {sorted(loss)}: expected loss and dlogits or dhidden")
    return LossReply(float(loss["loss"]), decode_tensor(loss[f"d{wrt}"]), wrt)


def _read_score(record) -> Scores:
    correct, seen = {}, {}
    for key, value in record.items():
        kind, q = key.split(".", 1)
        (correct if kind == "correct" else seen)[q] = float(value)
    return Scores(correct, seen)


def _payloads(value: dict, entropy: bool) -> ConfigRecord:
    return ConfigRecord({m: codec.encode(p, entropy=entropy).data for m, p in value.items()})


# field -> (write(value, entropy) -> record, read(record) -> value); `meta` is read by its type
LAYOUT = {
    "grads": (_payloads, lambda r: {m: codec.decode(v) for m, v in r.items()}),
    "acts": (_payloads, lambda r: {m: codec.decode(v) for m, v in r.items()}),
    "batch": (_write_batch, _read_batch),
    "logits": (lambda v, e: ConfigRecord({"logits": encode_tensor(v)}), lambda r: decode_tensor(r["logits"])),
    "hidden": (lambda v, e: ConfigRecord({"hidden": encode_tensor(v)}), lambda r: decode_tensor(r["hidden"])),
    "loss": (lambda v, e: ConfigRecord({"loss": v.loss, f"d{v.wrt}": encode_tensor(v.grad)}), _read_loss),
    "part": (lambda v, e: ArrayRecord(OrderedDict((k, t.detach().cpu()) for k, t in v.items())),
             lambda r: dict(r.to_torch_state_dict())),
    "echo": (lambda v, e: ConfigRecord({"echo": v}), lambda r: r["echo"]),
    "state": (lambda v, e: ConfigRecord({"state": v}), lambda r: r["state"]),
    "score": (lambda v, e: MetricRecord({**{f"correct.{q}": c for q, c in v.correct.items()},
                                         **{f"seen.{q}": n for q, n in v.seen.items()}}), _read_score),
    "calibration": (lambda v, e: ConfigRecord({"report": json.dumps(v)}), lambda r: json.loads(r["report"])),
    "meta": (lambda v, e: ConfigRecord(v.record()), None),
}


# --- writing and reading ----------------------------------------------------------------------
def write(content: Content, entropy: bool = False) -> RecordDict:
    """The Flower records of a message's content; payloads go through the codec (`entropy`:
    entropy-coded codes where that is smaller)."""
    out = RecordDict()
    for name in content.present():
        out[name] = LAYOUT[name][0](getattr(content, name), entropy)
    return out


def read(records: RecordDict, spec: MessageType, direction: str) -> Content:
    """A message's content from its records: a request of `spec` ("down") or its reply ("up").
    A record the registry does not allow that message, or a payload that does not decode,
    raises ValueError."""
    allowed = spec.carries(direction)
    unexpected = sorted(set(records) - set(allowed))
    if unexpected:
        raise ValueError(f"{spec.name} {'request' if direction == 'down' else 'reply'} carries unexpected "
                         f"record(s) {unexpected}; it may carry {list(allowed) or 'none'}")
    content = Content()
    meta = spec.request_meta if direction == "down" else spec.reply_meta
    for name in records:
        record = records[name]
        setattr(content, name, meta.from_record(dict(record)) if name == "meta" else LAYOUT[name][1](record))
    return content


# --- accounting ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One accountable piece of a message."""

    kind: str
    elements: int
    bits: int
    serialized_bytes: int


def size(records: RecordDict) -> int:
    """Bytes of the records' protobuf encoding."""
    return recorddict_to_proto(records).ByteSize()


def _entry_size(name: str, record, key) -> int:
    """Bytes one entry adds to the protobuf encoding of a RecordDict holding it (its record's
    framing included when it is the record's only entry)."""
    kind = type(record)
    alone = RecordDict({name: kind({key: record[key]})})
    empty = RecordDict({name: kind({})})
    return size(alone) - size(empty) + (size(empty) if len(record) == 1 else 0)


PAYLOAD_KINDS = {"acts": "activations", "grads": "gradients", "logits": "logits", "hidden": "activations"}


def parts(records: RecordDict) -> list[Part]:
    """The accountable pieces of a message's records, for the byte ledger."""
    out = []
    for name, record in records.items():
        if name in PAYLOAD_KINDS or name == "loss":
            for key, value in record.items():
                entry = _entry_size(name, record, key)
                if isinstance(value, bytes):
                    d = codec.describe(value)
                    kind = "gradients" if key == "dlogits" else PAYLOAD_KINDS.get(name, "gradients")
                    out.append(Part(kind, d.numel, d.bits, entry))
                else:
                    out.append(Part("loss", 1, 32, entry))
        elif name == "batch":
            for key, value in record.items():
                kind = "labels" if key == "labels" else "config"
                out.append(Part(kind, len(value), 32, _entry_size(name, record, key)))
        elif name in ("echo", "state"):  # the benchmark's bare round trip, a checkpoint: raw bytes
            for key, value in record.items():
                out.append(Part("config", len(value), 8, _entry_size(name, record, key)))
        elif name == "part":
            elements = sum(int(np.prod(a.shape)) for a in record.values())
            out.append(Part("model", elements, 32, size(RecordDict({name: record}))))
        else:  # meta, score, calibration
            values = record.values()
            elements = sum(len(v) if isinstance(v, list) else 1 for v in values)
            out.append(Part("config", elements, 32, size(RecordDict({name: record}))))
    return out
