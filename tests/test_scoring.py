"""Accuracy, per question type, through every path that reports one, against counts worked
out by hand: the centralized trainer's evaluation, the server scoring with the labels it
holds, a client scoring the logits it was sent, and the server adding clients' counts."""

import pytest
import torch

from sltestbed import wire
from sltestbed.client_node import ClientNode
from sltestbed.experiment import ExperimentConfig
from sltestbed.scoring import Scores
from sltestbed.trainer import evaluate
from sltestbed.wire import Batch, Content
from strategies.strategy import Strategy
from strategies.setup import Client, RunSetup
from strategies.transport import Exchange, Transport

# six questions: types a a b b b c, answers 1..6; the stub model answers 1 0 3 4 0 0
QTYPES = ["a", "b", "c"]
QTYPE = torch.tensor([0, 0, 1, 1, 1, 2])
LABELS = torch.tensor([1, 2, 3, 4, 5, 6])
ANSWERS = torch.tensor([1, 0, 3, 4, 0, 0])
# by hand: a 1/2, b 2/3, c 0/1; all 3/6
EXPECTED = {"accuracy": 0.5, "accuracy_by_type": {"a": 0.5, "b": 2 / 3, "c": 0.0}}


def assert_expected(result):
    assert result["accuracy"] == pytest.approx(EXPECTED["accuracy"])
    assert result["accuracy_by_type"] == pytest.approx(EXPECTED["accuracy_by_type"])


def logits_for(answers, vocab=8):
    return torch.nn.functional.one_hot(answers, vocab).float() * 5.0


def test_scores_count_by_hand():
    scores = Scores.of(ANSWERS, LABELS, QTYPE, QTYPES)
    assert scores.correct == {"a": 1.0, "b": 2.0, "c": 0.0} and scores.seen == {"a": 2.0, "b": 3.0, "c": 1.0}
    assert_expected(scores.result())
    # two shards that each answer a type-b question right: their counts add
    halves = Scores.of(ANSWERS[:3], LABELS[:3], QTYPE[:3], QTYPES) + Scores.of(ANSWERS[3:], LABELS[3:], QTYPE[3:], QTYPES)
    assert halves == scores  # shards add up exactly
    assert Scores().accuracy != Scores().accuracy  # nothing scored: NaN, not 0
    with pytest.raises(ValueError, match="one entry per question"):
        Scores.of(ANSWERS, LABELS[:3], QTYPE, QTYPES)
    with pytest.raises(ValueError, match="out of range"):
        Scores.of(ANSWERS, LABELS, QTYPE + 1, QTYPES)


class Shard:
    """What the scorers read of a test shard."""

    def __init__(self, rows):
        self.labels, self.qtype_index, self.qtypes = LABELS[rows], QTYPE[rows], QTYPES

    def __len__(self):
        return len(self.labels)

    def batches(self, batch_size):
        for start in range(0, len(self), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(self)))
            yield {"pixel_values": rows.float(), "input_ids": rows[:, None], "lengths": torch.ones_like(rows),
                   "labels": self.labels[rows], "qtype_index": self.qtype_index[rows]}


class StubModel(torch.nn.Module):
    """Answers ANSWERS[i] for question i (it reads i off the pixels)."""

    def forward(self, pixel_values, input_ids, lengths):
        return logits_for(ANSWERS[pixel_values.long()])


def test_the_centralized_evaluation():
    assert_expected(evaluate(StubModel(), Shard(torch.arange(6)), batch_size=3))


class StubServer:
    """A server part whose prediction for a client's batch is read off its lengths."""

    def predict(self, inputs):
        return [logits_for(ANSWERS[x.lengths]) for x in inputs]


class StubTransport(Transport):
    """Two clients holding questions 0-2 and 3-5; evaluation replies carry the rows' indices
    as their lengths; score requests are answered by real ClientNodes over stub shards."""

    def __init__(self, labels_at):
        self.ledger, self.round_trips, self.partitions = None, 0, {10: 0, 20: 1}
        self.rows = {10: torch.arange(3), 20: torch.arange(3, 6)}
        self.labels_at = labels_at

    def node_ids(self):
        return [10, 20]

    def is_free(self, node):
        return True

    def exchange(self, requests, round, step, account=True):
        out = Exchange()
        for node, (mtype, content) in requests.items():
            rows = self.rows[node]
            if mtype == wire.EVAL:
                batch = Batch(rows, LABELS[rows], QTYPE[rows]) if self.labels_at == "server" else Batch(rows)
                out.replies[node] = Content(acts={}, batch=batch)
            else:
                assert mtype == wire.SCORE and self.labels_at == "client"
                out.replies[node] = scoring_client(rows).handle(wire.SCORE, content)
        return out


def scoring_client(rows):
    node = ClientNode(ExperimentConfig.from_run_config({"preset": "tiny", "base": "none"}), 0, 1)
    node.start = lambda meta: None  # scoring needs no role
    node.__dict__["test_shard"] = Shard(rows)
    return node


@pytest.fixture
def shards(monkeypatch):
    monkeypatch.setattr(ClientNode, "test", property(lambda self: self.__dict__["test_shard"]))


@pytest.mark.parametrize("labels_at", ["server", "client"])
def test_split_evaluation_scores_where_the_labels_are(labels_at, shards):
    cfg = ExperimentConfig.from_run_config({"preset": "tiny", "base": "none", "labels": labels_at})
    setup = RunSetup(cfg, [Client(10, 0, 3, 3), Client(20, 1, 3, 3)], 8, QTYPES, None)
    strategy = Strategy(setup, StubTransport(labels_at), log=lambda m: None)
    assert_expected(strategy.evaluate_split(1, StubServer()))


def test_a_client_scores_the_logits_it_is_sent(shards):
    node = scoring_client(torch.arange(6))
    reply = node.handle(wire.SCORE, Content(logits=logits_for(ANSWERS)))
    assert_expected(reply.score.result())
