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
from sltestbed.wire import Batch, Content, LossReply


# --- writing and reading ----------------------------------------------------------------------
def encode_tensor(t: torch.Tensor) -> bytes:
    """A float tensor as an fp32 payload (logits, their gradients)."""
    return codec.encode(Payload("fp32", 32, tuple(t.shape), (Field(t.detach().float().contiguous(), 32),))).data


def decode_tensor(data: bytes) -> torch.Tensor:
    return dequantize(codec.decode(data, expect_scheme="fp32"))


def write(content: Content, entropy: bool = False) -> RecordDict:
    """The Flower records of a message's content; payloads go through the codec (`entropy`:
    entropy-coded codes where that is smaller)."""
    out = RecordDict()
    for name in content.present():
        value = getattr(content, name)
        if name in ("acts", "grads"):
            out[name] = ConfigRecord({m: codec.encode(p, entropy=entropy).data for m, p in value.items()})
        elif name == "batch":
            record = {"lengths": value.lengths.tolist()}
            if value.labels is not None:
                record["labels"] = value.labels.tolist()
            if value.qtype is not None:
                record["qtype"] = value.qtype.tolist()
            out[name] = ConfigRecord(record)
        elif name in ("logits", "hidden"):
            out[name] = ConfigRecord({name: encode_tensor(value)})
        elif name == "loss":
            out[name] = ConfigRecord({"loss": value.loss, f"d{value.wrt}": encode_tensor(value.grad)})
        elif name == "part":
            out[name] = ArrayRecord(OrderedDict((k, v.detach().cpu()) for k, v in value.items()))
        elif name == "echo":
            out[name] = ConfigRecord({"echo": value})
        elif name == "score":
            out[name] = MetricRecord({**{f"correct.{q}": c for q, c in value.correct.items()},
                                      **{f"seen.{q}": n for q, n in value.seen.items()}})
        elif name == "calibration":
            out[name] = ConfigRecord({"report": json.dumps(value)})
        elif name == "meta":
            out[name] = ConfigRecord(value.record())
    return out


def read(records: RecordDict, meta: type | None = None) -> Content:
    """A message's content from its records; `meta`: the type its meta record has (see
    `wire.REQUEST_META` / `wire.REPLY_META`). A payload that does not decode raises ValueError."""
    unknown = sorted(set(records) - set(_NAMES))
    if unknown:
        raise ValueError(f"message carries unknown record(s) {unknown}")
    content = Content()
    if "acts" in records:
        content.acts = {m: codec.decode(v) for m, v in records["acts"].items()}
    if "grads" in records:
        content.grads = {m: codec.decode(v) for m, v in records["grads"].items()}
    if "batch" in records:
        b = {k: torch.tensor(v, dtype=torch.long) for k, v in records["batch"].items()}
        content.batch = Batch(b["lengths"], b.get("labels"), b.get("qtype"))
    if "logits" in records:
        content.logits = decode_tensor(records["logits"]["logits"])
    if "hidden" in records:
        content.hidden = decode_tensor(records["hidden"]["hidden"])
    if "loss" in records:
        loss = dict(records["loss"])
        wrt = next((k[1:] for k in loss if k in ("dlogits", "dhidden")), None)
        if wrt is None or set(loss) != {"loss", f"d{wrt}"}:
            raise ValueError(f"loss record has keys {sorted(loss)}: expected loss and dlogits or dhidden")
        content.loss = LossReply(float(loss["loss"]), decode_tensor(loss[f"d{wrt}"]), wrt)
    if "part" in records:
        content.part = dict(records["part"].to_torch_state_dict())
    if "echo" in records:
        content.echo = records["echo"]["echo"]
    if "score" in records:
        correct, seen = {}, {}
        for key, value in records["score"].items():
            kind, q = key.split(".", 1)
            (correct if kind == "correct" else seen)[q] = float(value)
        content.score = Scores(correct, seen)
    if "calibration" in records:
        content.calibration = json.loads(records["calibration"]["report"])
    if "meta" in records:
        if meta is None:
            raise ValueError("message carries a meta record where none is expected")
        content.meta = meta.from_record(dict(records["meta"]))
    return content


_NAMES = ("grads", "acts", "batch", "logits", "hidden", "loss", "part", "echo", "score", "calibration", "meta")


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
        elif name == "echo":  # the benchmark's bare round trip: raw bytes
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
