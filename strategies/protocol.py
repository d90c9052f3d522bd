"""The split-learning protocol on Flower messages, shared by the strategies (server) and the
ClientApp: message types, where each payload goes in a message, and its accounting.

Every message's content is a RecordDict of these records (each optional):

    meta    ConfigRecord   round, step, schedule length, base model path, partition id   (config)
    acts    ConfigRecord   {modality: codec bytes}   activations, client -> server       (activations)
    grads   ConfigRecord   {modality: codec bytes}   cut-layer gradients, server -> client (gradients)
    batch   ConfigRecord   lengths (and labels, qtype) of the batch as int lists          (config, labels)
    logits  ConfigRecord   {"logits": codec bytes}   labels at the client: server -> client (logits)
    loss    ConfigRecord   {"loss": float, "dlogits": codec bytes}  client -> server      (loss, gradients)
    part    ArrayRecord    client-part or whole-model weights                              (model)
    score   MetricRecord   evaluation counts                                               (config)
    calibration ConfigRecord  per-modality entropy report as JSON, client -> server       (config)

A gradient pending on the client rides in the next message to it, whatever its type.
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

STEP = "train.step"  # [grads] -> acts, batch
LOGITS = "train.logits"  # logits -> loss (labels kept on the client)
LOCAL = "train.local"  # part (whole model) -> part (FedAvg)
INFO = "query.info"  # -> meta (partition id, data sizes)
CALIBRATE = "query.calibrate"  # -> calibration (bits="auto": entropy report of the first batches)
SETUP = (INFO, CALIBRATE)  # messages before training: a node may still be loading
ECHO = "query.echo"  # echo bytes -> echo bytes: a bare round trip, for the benchmark
PART = "query.part"  # [grads] -> part (client part, for hand-off and averaging)
EVAL = "evaluate.forward"  # [grads] [part] -> acts, batch (test shard)
SCORE = "evaluate.score"  # logits -> score (labels kept on the client)
EVAL_LOCAL = "evaluate.local"  # part (whole model) -> score (FedAvg)

MODALITIES = ("image", "text")


# --- building ------------------------------------------------------------------------------
def put_payloads(content: RecordDict, name: str, payloads: dict[str, Payload], entropy: bool = False) -> None:
    content[name] = ConfigRecord({key: codec.encode(p, entropy=entropy).data for key, p in payloads.items()})


def get_payloads(content: RecordDict, name: str, expect_scheme: str | None = None) -> dict[str, Payload]:
    return {key: codec.decode(value, expect_scheme=expect_scheme) for key, value in content[name].items()}


def encode_tensor(t: torch.Tensor) -> bytes:
    """A float tensor as an fp32 payload (logits, their gradients)."""
    return codec.encode(Payload("fp32", 32, tuple(t.shape), (Field(t.detach().float().contiguous(), 32),))).data


def decode_tensor(data: bytes) -> torch.Tensor:
    return dequantize(codec.decode(data, expect_scheme="fp32"))


def put_logits(content: RecordDict, logits: torch.Tensor) -> None:
    content["logits"] = ConfigRecord({"logits": encode_tensor(logits)})


def get_logits(content: RecordDict) -> torch.Tensor:
    return decode_tensor(content["logits"]["logits"])


def put_batch(content: RecordDict, lengths: torch.Tensor, labels: torch.Tensor | None = None,
              qtype_index: torch.Tensor | None = None) -> None:
    record = {"lengths": lengths.tolist()}
    if labels is not None:
        record["labels"] = labels.tolist()
    if qtype_index is not None:
        record["qtype"] = qtype_index.tolist()
    content["batch"] = ConfigRecord(record)


def get_batch(content: RecordDict) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.long) for k, v in content["batch"].items()}


def put_state(content: RecordDict, state: dict[str, torch.Tensor]) -> None:
    content["part"] = ArrayRecord(OrderedDict((k, v.detach().cpu()) for k, v in state.items()))


def get_state(content: RecordDict) -> dict[str, torch.Tensor]:
    return dict(content["part"].to_torch_state_dict())


def put_meta(content: RecordDict, **values) -> None:
    content["meta"] = ConfigRecord(values)


def put_calibration(content: RecordDict, report: dict) -> None:
    content["calibration"] = ConfigRecord({"report": json.dumps(report)})


def get_calibration(content: RecordDict) -> dict:
    return json.loads(content["calibration"]["report"])


# --- accounting ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One accountable piece of a message."""

    kind: str
    elements: int
    bits: int
    serialized_bytes: int


def _size(content: RecordDict) -> int:
    return recorddict_to_proto(content).ByteSize()



def _entry_size(name: str, record, key) -> int:
    """Bytes one entry adds to the protobuf encoding of a RecordDict holding it (its record's
    framing included when it is the record's only entry)."""
    kind = type(record)
    alone = RecordDict({name: kind({key: record[key]})})
    empty = RecordDict({name: kind({})})
    return _size(alone) - _size(empty) + (_size(empty) if len(record) == 1 else 0)


PAYLOAD_KINDS = {"acts": "activations", "grads": "gradients", "logits": "logits"}


def parts(content: RecordDict) -> list[Part]:
    """The accountable pieces of a message's content, for the byte ledger."""
    out = []
    for name, record in content.items():
        if name in PAYLOAD_KINDS or name == "loss":
            for key, value in record.items():
                size = _entry_size(name, record, key)
                if isinstance(value, bytes):
                    d = codec.describe(value)
                    kind = "gradients" if key == "dlogits" else PAYLOAD_KINDS.get(name, "gradients")
                    out.append(Part(kind, d.numel, d.bits, size))
                else:
                    out.append(Part("loss", 1, 32, size))
        elif name == "batch":
            for key, value in record.items():
                kind = "labels" if key == "labels" else "config"
                out.append(Part(kind, len(value), 32, _entry_size(name, record, key)))
        elif name == "echo":  # the benchmark's bare round trip: raw bytes
            for key, value in record.items():
                out.append(Part("config", len(value), 8, _entry_size(name, record, key)))
        elif name == "part":
            elements = sum(int(np.prod(a.shape)) for a in record.values())
            out.append(Part("model", elements, 32, _size(RecordDict({name: record}))))
        else:  # meta, score
            values = record.values()
            elements = sum(len(v) if isinstance(v, list) else 1 for v in values)
            out.append(Part("config", elements, 32, _size(RecordDict({name: record}))))
    return out
