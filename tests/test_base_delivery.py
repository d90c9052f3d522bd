"""base-delivery = flower: the clients get their part of the base through the protocol, once,
counted as model bytes, and train exactly as clients that read it from the server's path."""

import json

import pytest
import torch

from app.in_process import run_in_process
from sltestbed.base_delivery import client_part_weights, delivered_dir, fingerprint, save_delivered
from sltestbed.base_model import build_model
from sltestbed.client_node import ClientNode
from sltestbed.experiment import ExperimentConfig
from sltestbed.model import TinyLlava
from sltestbed.splits import vocab_size
from sltestbed.wire import BASE, BaseRequest, Content, StepMeta

RUN = {"preset": "tiny", "num-rounds": 2, "test-fraction": 0.85, "public-fraction": 0.05}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A base checkpoint of the tiny preset (seeded random weights: no training needed)."""
    cfg = ExperimentConfig.from_run_config({**RUN, "base": "none"})
    directory = tmp_path_factory.mktemp("base") / "base"
    build_model(cfg, None, vocab_size(cfg)).save_pretrained(str(directory))
    return str(directory)


def without_numbering(rows):
    """The ledger rows less the bytes of what names the base in every meta (the config rows'
    serialized and the whole-message bytes) and the message numbers (the delivery comes first)."""
    return sorted((r.round, r.step, r.client, r.direction, r.kind, r.elements, r.bits, r.ideal_bytes,
                   -1 if r.kind == "config" else r.serialized_bytes, r.message_type) for r in rows)


def test_a_delivered_base_trains_as_the_base_read_from_the_path(base_dir, tmp_path):
    path, _ = run_in_process({**RUN, "base": base_dir, "cache-dir": str(tmp_path / "a")})
    flower, _ = run_in_process({**RUN, "base": base_dir, "base-delivery": "flower", "cache-dir": str(tmp_path / "b")})
    assert [(r.loss, r.accuracy) for r in flower.rounds] == [(r.loss, r.accuracy) for r in path.rounds]
    sent = [r for r in flower.ledger.rows if r.message_type == BASE and r.kind == "model"]  # beside: its meta
    cfg = ExperimentConfig.from_run_config({**RUN, "base": base_dir})
    part = client_part_weights(TinyLlava.from_pretrained(base_dir), cfg.cut_layers)
    elements = sum(t.numel() for t in part.values())
    assert sorted(r.client for r in sent) == [0, 1]  # once per client, before anything else
    assert all(r.direction == "down" and r.elements == elements and r.round == 0 for r in sent)
    assert {r.kind for r in flower.ledger.rows if r.message_type == BASE} == {"model", "config"}
    assert without_numbering(r for r in flower.ledger.rows if r.message_type != BASE) == without_numbering(
        path.ledger.rows)
    copy = delivered_dir(str(tmp_path / "b"), fingerprint(base_dir, cfg.cut_layers))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [copy.rsplit("/", 1)[1]]


def test_a_client_refuses_a_crafted_delivery_and_names_an_undelivered_base(base_dir, tmp_path):
    cfg = ExperimentConfig.from_run_config({**RUN, "base": base_dir, "base-delivery": "flower",
                                            "cache-dir": str(tmp_path)})
    base = TinyLlava.from_pretrained(base_dir)
    part = client_part_weights(base, cfg.cut_layers)
    config = json.dumps(base.config.to_dict())
    node = ClientNode(cfg, 0, 2)
    name = next(iter(part))
    for weights, named in (({**part, "lm.lm_head.weight": torch.zeros(3)}, "unexpected \\['lm.lm_head.weight'\\]"),
                           ({k: v for k, v in part.items() if k != name}, f"missing \\['{name}'\\]"),
                           ({**part, name: torch.zeros(1, 2)}, "wrong shape")):
        with pytest.raises(ValueError, match=named):
            node.handle(BASE, Content(part=weights, meta=BaseRequest("ab12", config)))
    assert not (tmp_path / "delivered-ab12").exists()
    with pytest.raises(ValueError, match="lowercase hex"):
        node.handle(BASE, Content(part=part, meta=BaseRequest("../../etc", config)))
    meta = StepMeta(1, 0, "flower:0123abcd", cfg.batch_size, 10)
    with pytest.raises(ValueError, match="the base flower:0123abcd was never delivered to this node"):
        node.start(meta)
    save_delivered(delivered_dir(str(tmp_path), "0123abcd"), config, part, cfg.cut_layers)
    role = node.start(meta)  # built from the delivered copy: its part is the base's, tensor for tensor
    read = client_part_weights(build_model(cfg, base_dir, vocab_size(cfg)), cfg.cut_layers)
    got = client_part_weights(role.model, cfg.cut_layers)
    assert list(got) == list(read) and all(torch.equal(got[k], read[k]) for k in read)
