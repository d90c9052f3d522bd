"""The federated-learning baseline: every client trains the whole model locally for
`local-epochs`, the server averages the weights (FedAvg) and sends them back. Model bytes both
ways each round, no activations: the communication comparison split learning is judged by."""

from __future__ import annotations

from flwr.app import RecordDict

from sltestbed.roles import fedavg

from . import protocol as P
from .base import Strategy


def model_weights(model) -> dict:
    """The weights FedAvg moves: the whole model but the (unused) cut quantizers."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("quant_")}


class FedAvgStrategy(Strategy):
    name = "fedavg"

    def __init__(self, grid, cfg, log=print):
        super().__init__(grid, cfg, log)
        self.client_batch = cfg.batch_size
        self.model = self.new_model()

    def _with_model(self, mtype: str) -> tuple[str, RecordDict]:
        content = RecordDict()
        P.put_state(content, model_weights(self.model))
        return mtype, content

    def train_round(self, rnd: int) -> dict:
        clients = self.sample()
        replies = self.exchange({c.node_id: self._with_model(P.LOCAL) for c in clients}, rnd, 0)
        if not replies:
            return {"loss": float("nan")}
        nodes = list(replies)
        weights = [float(replies[n]["meta"]["num_examples"]) for n in nodes]
        self.model.load_weights(fedavg([P.get_state(replies[n]) for n in nodes], weights))
        losses = [float(replies[n]["meta"]["loss"]) * w for n, w in zip(nodes, weights)]
        return {"loss": sum(losses) / sum(weights)}

    def trained_model(self):
        return self.model

    def evaluate_round(self, rnd: int) -> dict:
        replies = self.exchange({c.node_id: self._with_model(P.EVAL_LOCAL) for c in self.clients}, rnd, -1)
        correct, seen = {}, {}
        for content in replies.values():
            self._add_scores(content, correct, seen)
        return self._accuracy(correct, seen)
