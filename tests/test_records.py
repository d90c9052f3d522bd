"""The protocol's layout in Flower records, and the byte accounting the ledger is made of."""

import math

import pytest
import torch
from flwr.app import RecordDict

from app import flower_records as records
from sltestbed import codec, wire
from sltestbed.ledger import ByteLedger, ideal_bytes
from sltestbed.quantizers import build_quantizer
from sltestbed.scoring import Scores
from sltestbed.wire import Batch, Content, LocalResult, LossReply, NodeInfo, StepMeta


def payloads(bits=2):
    encoder, _ = build_quantizer("learned", bits, dim=16)
    torch.manual_seed(0)
    return {"image": encoder.encode(torch.randn(4, 4, 16)), "text": encoder.encode(torch.randn(4, 7, 16))}


def without(rd: RecordDict, name: str, key=None) -> RecordDict:
    """`rd` with one entry (or, key None, one whole record) removed."""
    out = RecordDict()
    for n, record in rd.items():
        if n == name and key is None:
            continue
        out[n] = type(record)({k: v for k, v in record.items() if not (n == name and k == key)})
    return out


# a message type that may carry every field (no real one does)
EVERYTHING = wire.MessageType("test.everything", tuple(f for f in Content().__dataclass_fields__ if f != "meta"), (),
                              "_info")


def test_every_content_survives_the_round_trip():
    acts = payloads()
    content = Content(grads=acts, acts=acts, batch=Batch(torch.tensor([3, 5]), torch.tensor([7, 1]), torch.tensor([0, 2])),
                      logits=torch.randn(2, 9), loss=LossReply(0.25, torch.randn(2, 9)),
                      part={"w": torch.randn(3, 2)}, echo=b"\x00" * 5, score=Scores({"a": 1.0}, {"a": 2.0}),
                      calibration={"bits": {"image": 3}}, meta=StepMeta(1, 2, "/base", 32, 100, {"image": 3, "text": 2}))
    back = records.read(records.write(content), EVERYTHING, "down")
    assert back.present() == content.present() == list(records.write(content))
    for m in acts:
        assert back.acts[m].shape == acts[m].shape and torch.equal(back.acts[m].fields[0].data.flatten(), acts[m].fields[0].data.flatten())
    assert torch.equal(back.batch.labels, content.batch.labels) and torch.equal(back.batch.qtype, content.batch.qtype)
    assert torch.equal(back.logits, content.logits) and torch.equal(back.loss.grad, content.loss.grad)
    assert back.loss.loss == 0.25 and torch.equal(back.part["w"], content.part["w"]) and back.echo == content.echo
    assert back.score == content.score and back.calibration == content.calibration and back.meta == content.meta
    for meta, mtype, direction in ((NodeInfo(1, 2, 30, 8), wire.INFO, "up"), (LocalResult(30, 0.5), wire.LOCAL, "up"),
                                   (wire.CalibrationRequest("", 32, 8, 0.05), wire.CALIBRATE, "down"),
                                   (wire.EchoRequest(100), wire.ECHO, "down")):
        back = records.read(records.write(Content(meta=meta)), wire.message_type(mtype), direction)
        assert back.meta == meta


def test_unexpected_records_are_refused():
    """Each message type reads only the records the registry lets it carry."""
    rd = records.write(Content(meta=StepMeta(1, 0, "", 1, 1)))
    with pytest.raises(ValueError, match=r"query.info request carries unexpected record\(s\) \['meta'\]"):
        records.read(rd, wire.message_type(wire.INFO), "down")
    rd["labels"] = rd["meta"]
    with pytest.raises(ValueError, match=r"unexpected record\(s\) \['labels'\]"):
        records.read(rd, wire.message_type(wire.STEP), "down")
    score = records.write(Content(score=Scores({"a": 1.0}, {"a": 2.0})))
    with pytest.raises(ValueError, match="train.step reply carries unexpected"):
        records.read(score, wire.message_type(wire.STEP), "up")
    assert records.read(score, wire.message_type(wire.SCORE), "up").score == Scores({"a": 1.0}, {"a": 2.0})


def test_the_registry_names_every_content_field_and_a_handler_for_every_message():
    from sltestbed.client_node import ClientNode

    fields = set(Content().__dataclass_fields__)
    assert set(records.LAYOUT) == fields
    for spec in wire.MESSAGES.values():
        assert set(spec.carries("down")) | set(spec.carries("up")) <= fields, spec.name
        assert callable(getattr(ClientNode, spec.handler)), spec.name
        assert spec.name.split(".")[0] in ("train", "evaluate", "query"), spec.name  # a Flower ClientApp route


def test_each_part_is_what_removing_it_saves():
    """A payload's serialized bytes are what its entry adds to the message's encoding: the
    size difference when that entry (or, for meta and weights, that record) is removed."""
    content = Content(acts=payloads(), batch=Batch(torch.tensor([3, 5, 7, 2]), torch.tensor([1, 2, 3, 4])),
                      part={"w": torch.randn(8, 8)}, meta=StepMeta(1, 2, "", 32, 100))
    rd = records.write(content)
    total = records.size(rd)
    parts = records.parts(rd)
    assert [p.kind for p in parts] == ["activations", "activations", "config", "labels", "model", "config"]
    entries = [("acts", "image"), ("acts", "text"), ("batch", "lengths"), ("batch", "labels"), ("part", None),
               ("meta", None)]
    for part, (name, key) in zip(parts, entries):
        assert part.serialized_bytes == total - records.size(without(rd, name, key)), (name, key)
    # what no single entry owns: the framing of the records holding two entries
    shared = sum(records.size(RecordDict({n: rd[n]})) - sum(p.serialized_bytes for p, (e, _) in zip(parts, entries)
                                                            if e == n) for n in ("acts", "batch"))
    assert total == sum(p.serialized_bytes for p in parts) + shared and 0 < shared < 32
    for part, (name, key) in zip(parts[:2], entries[:2]):  # a payload's elements and width, from its header
        payload = content.acts[key]
        assert (part.elements, part.bits) == (math.prod(payload.shape), 2)
        assert part.serialized_bytes >= len(codec.encode(payload).data)


def test_the_ledger_adds_up_by_hand():
    ledger = ByteLedger()
    ledger.record(round=1, step=0, client=0, direction="up", kind="activations", elements=10, bits=2,
                  serialized_bytes=50, message_bytes=90)
    ledger.record(round=1, step=0, client=1, direction="up", kind="activations", elements=7, bits=3,
                  serialized_bytes=40, message_bytes=80)
    ledger.record(round=1, step=0, client=0, direction="down", kind="gradients", elements=10, bits=32,
                  serialized_bytes=48, message_bytes=60)
    # ideal = ceil(elements * bits / 8): 10*2/8 -> 3, 7*3/8 -> 3, 10*32/8 = 40
    assert ledger.totals() == {"up": {"activations": {"ideal": 6, "serialized": 90}},
                               "down": {"gradients": {"ideal": 40, "serialized": 48}}}
    assert ideal_bytes(1, 1) == 1 and ideal_bytes(8, 1) == 1 and ideal_bytes(9, 1) == 2
    with pytest.raises(ValueError, match="direction"):
        ledger.record(round=1, step=0, client=0, direction="sideways", kind="activations", elements=1, bits=1,
                      serialized_bytes=1, message_bytes=1)
    with pytest.raises(ValueError, match="kind"):
        ledger.record(round=1, step=0, client=0, direction="up", kind="secrets", elements=1, bits=1,
                      serialized_bytes=1, message_bytes=1)


def test_a_round_upload_cuts_into_its_client_batches_alike_as_values_and_as_payloads():
    """Local-loss's one upload a round: the server trains on it, and the observer keeps it,
    batch by batch; both cuts must name the same rows and tokens."""
    from sltestbed.quantizers import dequantize
    from strategies.observer import rows_of

    encoder, _ = build_quantizer("learned", 2, dim=8)
    torch.manual_seed(0)
    lengths, labels = torch.tensor([3, 5, 2, 4, 1]), torch.tensor([0, 1, 2, 3, 4])
    acts = {"image": encoder.encode(torch.randn(5, 4, 8)), "text": encoder.encode(torch.randn(5, 5, 8))}
    values = {m: dequantize(p) for m, p in acts.items()}
    cut = list(wire.client_batches(values, Batch(lengths, labels), 2))
    kept = list(wire.client_batches(acts, Batch(lengths, labels), 2, rows_of))
    assert [len(b.lengths) for _, b in cut] == [2, 2, 1]
    assert [v["text"].shape[1] for v, _ in cut] == [5, 4, 1]  # each batch's longest question
    assert torch.equal(torch.cat([v["image"] for v, _ in cut]), values["image"])
    assert torch.equal(torch.cat([b.labels for _, b in cut]), labels)
    for (v, b), (p, c) in zip(cut, kept):
        assert torch.equal(b.lengths, c.lengths) and torch.equal(b.labels, c.labels)
        for m in v:
            assert isinstance(p[m], type(acts[m])) and torch.equal(dequantize(p[m]), v[m])
