"""The strategies on the in-process transport: the ServerApp's code against the ClientApp's
own handler, in this process, no Flower processes. Every strategy, labels at the client,
a dropped and a stalled client, calibration, and one client equal to centralized training."""

import math

import pytest
import torch

from app.in_process import InProcessTransport, run_in_process
from sltestbed import wire
from sltestbed.base_model import build_model
from sltestbed.experiment import ExperimentConfig
from sltestbed.model import TinyLlava
from sltestbed.splits import client_data
from sltestbed.trainer import MODULE_GROUPS, Stage, evaluate, train_stage
from strategies import STRATEGY_CLASSES

# the tiny model, most of digits-VQA held out (180 training questions per client), no base model
TINY = {"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.9, "public-fraction": 0.05}


def run(num_supernodes=2, **overrides):
    return run_in_process({**TINY, **overrides}, num_supernodes)


@pytest.fixture(scope="module")
def runs():
    """One run per strategy (2 clients, one round), shared by the tests below."""
    return {name: run(strategy=name) for name in STRATEGY_CLASSES}


def rows(report, **match):
    return [r for r in report.ledger.rows if all(getattr(r, k) == v for k, v in match.items())]


@pytest.mark.parametrize("name", list(STRATEGY_CLASSES))
def test_every_strategy_trains_and_counts_its_messages(runs, name):
    report, transport = runs[name]
    assert report.cfg.strategy == name and [c.partition for c in report.clients] == [0, 1]
    assert not report.failures and math.isfinite(report.rounds[0].loss)
    assert 0.0 <= report.rounds[0].accuracy <= 1.0
    kinds = {(r.direction, r.kind) for r in report.ledger.rows}
    if name == "fedavg":
        assert {("up", "model"), ("down", "model")} <= kinds and ("up", "activations") not in kinds
    elif name == "local-loss":  # the round's activations and labels up in one message; nothing comes down
        assert {("up", "activations"), ("up", "labels")} <= kinds
        assert not kinds & {("down", "gradients"), ("up", "model"), ("down", "model")}
        assert len(rows(report, message_type=wire.ROUND, direction="up", kind="activations")) == 2 * 2  # 2 modalities
    else:
        assert {("up", "activations"), ("down", "gradients"), ("up", "labels")} <= kinds
        # hand-off or averaging of client parts; parallel's clients never synchronise
        assert ({("up", "model"), ("down", "model")} <= kinds) == (name != "parallel")
    # the round's bytes are the ledger's: every row but discovery's (round 0) is the round's
    assert report.rounds[0].bytes_up == sum(r.serialized_bytes for r in rows(report, direction="up") if r.round == 1)
    assert report.round_trips == transport.round_trips == report.rounds[0].round_trips + 1  # + discovery


def test_labels_at_the_client(runs):
    report, _ = run(labels="client")
    reference, _ = runs["parallel"]
    up = {r.kind for r in rows(report, direction="up")}
    assert "labels" not in up and {"activations", "loss", "gradients"} <= up  # loss and d loss / d logits
    assert rows(report, direction="down", kind="logits")
    # the same training as with the labels at the server, two round trips a step instead of one
    assert report.rounds[0].loss == pytest.approx(reference.rounds[0].loss, abs=1e-5)
    assert report.rounds[0].accuracy == pytest.approx(reference.rounds[0].accuracy, abs=1e-3)
    steps = len({r.step for r in rows(reference, message_type=wire.STEP, direction="down")})
    assert reference.rounds[0].round_trips == steps + 1  # + evaluation
    assert report.rounds[0].round_trips == 2 * steps + 2  # + evaluation and its scoring


def test_a_client_that_raises_is_dropped_for_that_step():
    report, _ = run(fault="raise:1:1:2")
    assert [(f.partition, f.round, f.step, f.message_type) for f in report.failures] == [(1, 1, 2, wire.STEP)]
    assert "injected fault" in report.failures[0].reason and report.rounds[0].failures == 1
    assert not rows(report, client=1, step=2, direction="up", kind="activations")
    assert rows(report, client=0, step=2, direction="up", kind="activations")
    assert math.isfinite(report.rounds[0].loss)


def test_a_client_that_stalls_is_dropped_and_answers_late():
    report, transport = run(fault="stall:1:1:1", **{"step-timeout": 4.0})
    assert [(f.partition, f.step) for f in report.failures] == [(1, 1)]
    assert report.failures[0].reason == "no reply within 4.0 s"
    # its late reply was never counted or used; it was asked again at the next step
    assert not rows(report, client=1, step=1, direction="up")
    assert rows(report, client=1, step=2, direction="up", kind="activations")
    assert not transport.outstanding and math.isfinite(report.rounds[0].accuracy)


def test_calibration_chooses_the_widths_the_clients_then_use():
    report, _ = run(bits="auto", **{"auto-batches": 2, "auto-max-rel-mse": 0.02})
    chosen = report.calibration["bits"]
    assert set(chosen) == {"image", "text"} and set(report.calibration["clients"]) == {"0", "1"}
    for m, b in chosen.items():  # per modality the widest choice of any client
        assert b == max(c[m]["bits"] for c in report.calibration["clients"].values())
    assert report.cfg.widths == chosen
    acts = rows(report, kind="activations", direction="up")
    assert {r.bits for r in acts} == set(chosen.values())
    assert {r.direction for r in rows(report, message_type=wire.CALIBRATE)} == {"up", "down"}


def test_sequential_with_one_client_trains_like_the_centralized_trainer():
    overrides = {"strategy": "sequential", "quantizer": "fp32", "train-modules": ",".join(MODULE_GROUPS),
                 "save-model": True}
    report, _ = run(num_supernodes=1, **overrides)
    cfg = ExperimentConfig.from_run_config({**TINY, **overrides})
    train, test = client_data(cfg, 0, 1)
    torch.manual_seed(cfg.seed)
    central = TinyLlava(report.model.config)
    train_stage(central, central, train, Stage("full", MODULE_GROUPS, 1, cfg.lr), cfg.batch_size, cfg.seed,
                progress=False)
    assert max((a - b).abs().max().item() for a, b in zip(central.parameters(), report.model.parameters())) <= 1e-4
    assert report.rounds[0].accuracy == pytest.approx(evaluate(central, test)["accuracy"], abs=1e-9)


def test_a_node_restored_from_its_saved_state_trains_the_same(runs):
    """Every message on a fresh actor: the role rebuilt from `context.state` each time."""
    reference, _ = runs["parallel"]
    transport = InProcessTransport({**TINY}, 2, restore_every=True)
    from strategies import run_strategy

    report = run_strategy(ExperimentConfig.from_run_config(TINY), transport, lambda m: None)
    transport.stop()
    assert report.rounds[0].loss == pytest.approx(reference.rounds[0].loss, abs=1e-6)
    assert report.rounds[0].accuracy == reference.rounds[0].accuracy


@pytest.mark.parametrize("labels", ["client", "u-shaped"])
def test_the_role_is_saved_only_when_a_message_changed_it(labels):
    """With the labels at the client the loss message computes a gradient and steps nothing: the
    role is not saved again. U-shaped, the head steps there: saved. Each run trains exactly as
    its twin whose role is rebuilt from the saved state before every message."""
    from sltestbed import wire
    from strategies import run_strategy

    config = {**TINY, "labels": labels}
    cached, transport = run_in_process(config, keep_messages=True)
    for node, context in transport.contexts.items():
        sent = [request.metadata.message_type for request, _ in transport.kept if request.metadata.dst_node_id == node]
        saving = [t for t in sent if wire.message_type(t).saves_role]
        unchanged = sent.count(wire.LOGITS) if labels == "client" else 0
        assert sent.count(wire.LOGITS) > 0
        assert int(context.state["sl"]["version"]) == len(saving) - unchanged
    restored_transport = InProcessTransport(config, 2, restore_every=True)
    try:
        restored = run_strategy(ExperimentConfig.from_run_config(config), restored_transport, lambda m: None)
    finally:
        restored_transport.stop()
    assert restored.rounds[0].loss == pytest.approx(cached.rounds[0].loss, abs=1e-6)
    assert restored.rounds[0].accuracy == cached.rounds[0].accuracy


def upward(transport):
    return [(request.metadata.message_type, reply.content) for request, reply in transport.kept]


def test_labels_at_the_client_never_go_up(monkeypatch):
    """Every upward message of a labels=client run, record by record: only activations, the
    batch's question lengths, the loss with d loss / d logits, and evaluation counts. And
    nothing in them is derived from the labels: with every client's labels permuted, the first
    step sends up the same bytes (only the loss record, sent after the logits, differs)."""
    config = {**TINY, "labels": "client"}

    def run_kept():
        transport = InProcessTransport(config, 2, keep_messages=True)
        from strategies import run_strategy

        run_strategy(ExperimentConfig.from_run_config(config), transport, lambda m: None)
        transport.stop()
        return upward(transport)

    plain = run_kept()
    allowed = {wire.INFO: {"meta"}, wire.STEP: {"acts", "batch"}, wire.LOGITS: {"loss"}, wire.EVAL: {"acts", "batch"},
               wire.SCORE: {"score"}}
    for mtype, content in plain:
        assert set(content) == allowed[mtype], mtype
        if "batch" in content:
            assert list(content["batch"]) == ["lengths"]
        if "loss" in content:
            assert list(content["loss"]) == ["loss", "dlogits"]  # dlogits leak the labels: see the privacy tests

    import copy

    from sltestbed import client_node

    real = client_node.client_data

    def permuted(cfg, partition, num_partitions):
        train, test = real(cfg, partition, num_partitions)
        train = copy.copy(train)
        train.labels = train.labels[torch.randperm(len(train), generator=torch.Generator().manual_seed(1))]
        return train, test

    monkeypatch.setattr(client_node, "client_data", permuted)
    other = run_kept()
    first = [i for i, (mtype, _) in enumerate(plain) if mtype == wire.STEP][:2]  # both clients' first step
    for i in first:
        assert dict(plain[i][1]["acts"]) == dict(other[i][1]["acts"])
        assert list(plain[i][1]["batch"]["lengths"]) == list(other[i][1]["batch"]["lengths"])
    logits = next(i for i, (mtype, _) in enumerate(plain) if mtype == wire.LOGITS)
    assert plain[logits][1]["loss"]["dlogits"] != other[logits][1]["loss"]["dlogits"]


def test_the_same_config_gives_the_same_numbers_over_two_rounds():
    a, _ = run(**{"num-rounds": 2})
    b, _ = run(**{"num-rounds": 2})
    strip = lambda r: {**r.__dict__, "seconds": 0}  # noqa: E731
    assert [strip(r) for r in a.rounds] == [strip(r) for r in b.rounds] and len(a.rounds) == 2
    assert a.ledger.rows == b.ledger.rows


def test_entropy_coding_changes_the_bytes_and_nothing_else(runs):
    plain, _ = runs["parallel"]
    coded, _ = run(**{"entropy-coding": True})
    assert [(r.loss, r.accuracy) for r in coded.rounds] == [(r.loss, r.accuracy) for r in plain.rounds]
    acts = lambda report: report.ledger.totals()["up"]["activations"]  # noqa: E731
    assert acts(coded)["ideal"] == acts(plain)["ideal"]  # the same codes at the same nominal width...
    assert acts(coded)["serialized"] < 0.9 * acts(plain)["serialized"]  # ...in fewer bytes


def test_two_bit_activations_cost_an_eighth_of_fp16(runs):
    learned, _ = runs["parallel"]
    fp16, _ = run(quantizer="fp16")
    up = lambda report: report.ledger.totals()["up"]["activations"]  # noqa: E731
    assert up(learned)["ideal"] * 8 == up(fp16)["ideal"]
    assert up(learned)["serialized"] <= 0.13 * up(fp16)["serialized"]


def test_the_u_shaped_split_keeps_the_head_and_the_labels_on_the_client():
    """With one client, the same training as with the head at the server (with more, each
    client's head learns from its own batches only, as its client part does)."""
    report, _ = run(num_supernodes=1, labels="u-shaped", **{"save-model": True})
    reference, _ = run(num_supernodes=1)
    kinds = {(r.direction, r.kind) for r in report.ledger.rows}
    assert ("up", "labels") not in kinds and ("down", "logits") not in kinds
    hidden = [r for r in report.ledger.rows if r.direction == "down" and r.message_type == wire.LOGITS
              and r.kind == "activations"]
    assert hidden and all(r.elements % report.model.lm_hidden == 0 for r in hidden)  # the hidden state goes down
    assert {"loss", "gradients"} <= {r.kind for r in report.ledger.rows if r.direction == "up"}
    assert report.rounds[0].loss == pytest.approx(reference.rounds[0].loss, abs=1e-5)
    assert report.rounds[0].accuracy == pytest.approx(reference.rounds[0].accuracy, abs=1e-3)


@pytest.mark.parametrize("modules", ["connector,quantizers", "lm"])
def test_a_side_with_nothing_to_train_still_passes_gradients_on(modules):
    """Uniform quantizers have no parameters: with the language model frozen the server trains
    nothing (and still sends gradients down); with only the language model training, the
    client trains its token embeddings alone."""
    report, _ = run(quantizer="uniform", bits=4, **{"train-modules": modules, "save-model": True})
    assert not report.failures and math.isfinite(report.rounds[0].loss)
    initial = build_model(report.cfg, None, report.model.config.vocab_size)
    moved = {name: not torch.equal(p, dict(initial.named_parameters())[name])
             for name, p in report.model.named_parameters()}
    trained = "connector" if modules.startswith("connector") else "lm"
    assert all(moved[n] for n in moved if n.startswith(trained + "."))  # the side that trains does
    assert not any(moved[n] for n in moved if n.startswith("vision."))  # frozen stays put


def test_a_node_that_failed_a_message_trains_the_same_on_any_actor():
    """A message that raised left the node's saved state as it was: the actor that ran it
    must not keep a role the failed message half changed (here: the gradient it applied
    before raising), or the training depends on which actor serves the node next."""
    from strategies import run_strategy

    config = {**TINY, "fault": "raise:1:1:2"}
    cached, _ = run_in_process(config)
    transport = InProcessTransport(config, 2, restore_every=True)
    try:
        restored = run_strategy(ExperimentConfig.from_run_config(config), transport, lambda m: None)
    finally:
        transport.stop()
    assert len(cached.failures) == len(restored.failures) == 1
    assert cached.rounds[0].loss == pytest.approx(restored.rounds[0].loss, abs=1e-6)
    assert cached.rounds[0].accuracy == restored.rounds[0].accuracy


def test_max_failed_steps_must_be_a_count_of_at_least_zero():
    with pytest.raises(ValueError, match=r"'max-failed-steps' = -1 is out of range: must be >= 0"):
        ExperimentConfig.from_run_config({"max-failed-steps": -1})
    with pytest.raises(ValueError, match=r"'max-failed-steps' = 0.5 must be of type int"):
        ExperimentConfig.from_run_config({"max-failed-steps": 0.5})


def test_past_max_failed_steps_the_run_stops_naming_the_clients_and_the_cause():
    from strategies import RunStopped

    with pytest.raises(RunStopped) as stopped:
        run(fault="raise:1:1:2", **{"max-failed-steps": 0})
    message = str(stopped.value)
    assert "1 client messages failed, more than max-failed-steps = 0" in message
    assert "partition 1: 1 failed, the first in round 1 step 2 (train.step)" in message
    assert "injected fault at partition 1, round 1, step 2" in message and "partition 0" not in message


class LosesOneStep(InProcessTransport):
    """Partition 1's step-2 message of round 1 is lost on the way: an error reply, the node
    never sees it (its cached role stays valid)."""

    def _deliver(self, messages, timeout):
        from flwr.app import Error, Message

        from app import flower_records as records

        def lost(m):
            if m.metadata.message_type != wire.STEP or self.partitions.get(m.metadata.dst_node_id) != 1:
                return False
            meta = records.read(m.content, wire.message_type(wire.STEP), "down").meta
            return (meta.round, meta.step) == (1, 2)

        gone = [m for m in messages if lost(m)]
        replies, missing = super()._deliver([m for m in messages if m not in gone], timeout)
        return replies + [Message(Error(code=0, reason="RuntimeError: lost"), reply_to=m) for m in gone], missing


def test_a_killed_worker_loses_its_message_and_the_nodes_go_on_from_their_saved_state():
    """In process, the `kill` fault loses the message and every node's cached role, as a dead
    actor does: both nodes rebuild their roles from `context.state` (weights, optimizer,
    cursor, the forward awaiting its gradient), and the run is the one where that message
    was merely lost."""
    from strategies import run_strategy

    killed, _ = run(fault="kill:1:1:2")
    transport = LosesOneStep({**TINY}, 2)
    try:
        lost = run_strategy(ExperimentConfig.from_run_config(TINY), transport, lambda m: None)
    finally:
        transport.stop()
    assert [(f.partition, f.round, f.step, f.message_type) for f in killed.failures] == [(1, 1, 2, wire.STEP)]
    assert [(f.partition, f.round, f.step) for f in lost.failures] == [(1, 1, 2)]
    assert "worker process was killed" in killed.failures[0].reason
    assert rows(killed, client=1, step=3, direction="up", kind="activations")
    assert killed.rounds[0].loss == pytest.approx(lost.rounds[0].loss, abs=1e-6)
    assert killed.rounds[0].accuracy == lost.rounds[0].accuracy and math.isfinite(killed.rounds[0].accuracy)


class NoEvaluation(InProcessTransport):
    """Every evaluation message fails (as when every worker is gone by then)."""

    def _deliver(self, messages, timeout):
        from flwr.app import Error, Message

        evaluate = [m for m in messages if m.metadata.message_type == wire.EVAL]
        replies, missing = super()._deliver([m for m in messages if m not in evaluate], timeout)
        return replies + [Message(Error(code=0, reason="RuntimeError: no worker"), reply_to=m) for m in evaluate], missing


def test_a_run_whose_final_round_has_no_accuracy_stops_saying_why():
    from strategies import RunStopped, run_strategy

    transport = NoEvaluation({**TINY}, 2)
    try:
        with pytest.raises(RunStopped) as stopped:
            run_strategy(ExperimentConfig.from_run_config(TINY), transport, lambda m: None)
    finally:
        transport.stop()
    message = str(stopped.value)
    assert "the final round (1) has no accuracy (nan): no client's test shard was scored" in message
    assert "partition 0: 1 failed" in message and "partition 1: 1 failed" in message and "no worker" in message


def test_a_round_shows_its_progress_with_an_eta(monkeypatch):
    import strategies.strategy as strategy

    monkeypatch.setattr(strategy, "PROGRESS_SECONDS", 0.0)  # a line after every step
    lines = []
    run_in_process({"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.85, "public-fraction": 0.05},
                   log=lines.append)
    progress = [line for line in lines if " step " in line and "samples/s" in line]
    assert progress and progress[0].startswith("round 1/1: step 1/") and "s left in the round" in progress[0]
    total = int(progress[0].split("step 1/")[1].split(",")[0])
    assert len(progress) == total and "s left" not in progress[-1]


def test_activations_whose_header_lies_are_refused_and_the_run_goes_on():
    """The `lie` fault: partition 1's step-2 activations claim another shape with as many
    elements (a consistent payload, a valid checksum); the server refuses them before it
    computes, records the failure, and trains on with the other client."""
    report, _ = run_in_process({"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.85,
                                "public-fraction": 0.05, "fault": "lie:1:1:2"})
    assert [(f.partition, f.round, f.step, f.message_type) for f in report.failures] == [(1, 1, 2, "train.step")]
    assert "activations refused: image shape (32, 64), expected (32, 4, 16)" in report.failures[0].reason
    assert math.isfinite(report.rounds[-1].accuracy) and report.rounds[-1].failures == 1
    up = [r for r in report.ledger.rows if r.kind == "activations" and r.client == 1 and r.step == 2]
    assert up  # the refused bytes crossed, and are counted


def test_activation_shapes_are_checked_against_the_cut():
    from sltestbed.quantizers import Field, Payload
    from sltestbed.wire import Batch, Content
    from strategies.strategy import activation_problem

    def payload(*shape):
        return Payload("fp32", 32, shape, (Field(torch.zeros(shape).reshape(-1), 32),))

    lengths = torch.tensor([3, 5])
    good = Content(acts={"image": payload(2, 4, 16), "text": payload(2, 5, 16)}, batch=Batch(lengths))
    assert activation_problem(good, 4, 16, 2) is None
    assert "a batch of 2 samples, expected 1 to 1" in activation_problem(good, 4, 16, 1)
    short = Content(acts={"image": payload(2, 4, 16), "text": payload(2, 4, 16)}, batch=Batch(lengths))
    assert "question lengths up to 5" in activation_problem(short, 4, 16)
    assert "expected image and text" in activation_problem(Content(acts={"image": payload(2, 4, 16)},
                                                                   batch=Batch(lengths)), 4, 16)


def test_tensorboard_gets_every_step_and_round(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from app.results import scalar_writer

    keys = {"preset": "tiny", "base": "none", "num-rounds": 2, "test-fraction": 0.85, "public-fraction": 0.05,
            "tensorboard": True}
    writer = scalar_writer(ExperimentConfig.from_run_config(keys), str(tmp_path))
    report, _ = run_in_process(keys, scalars=writer)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    accuracy = [e.value for e in events.Scalars("round/accuracy")]
    assert accuracy == pytest.approx([r.accuracy for r in report.rounds])
    assert [e.value for e in events.Scalars("round/bytes_up")] == [r.bytes_up for r in report.rounds]
    steps = events.Scalars("step/loss")
    assert [e.step for e in steps] == list(range(1, len(steps) + 1)) and len(steps) % 2 == 0
    per_round = len(steps) // 2  # the round's loss is the mean of its steps'
    for k, record in enumerate(report.rounds):
        mean = sum(e.value for e in steps[k * per_round:(k + 1) * per_round]) / per_round
        assert mean == pytest.approx(record.loss, rel=1e-5)
    assert scalar_writer(ExperimentConfig.from_run_config({}), str(tmp_path)) is None  # off by default


@pytest.mark.parametrize("labels", ["client", "u-shaped"])
def test_local_loss_refuses_private_labels_by_name(labels):
    with pytest.raises(ValueError, match=f"strategy 'local-loss' needs labels = 'server'.*labels = '{labels}'"):
        ExperimentConfig.from_run_config({**TINY, "strategy": "local-loss", "labels": labels})
