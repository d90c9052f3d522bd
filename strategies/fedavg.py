"""The federated-learning baseline: every client trains the whole model locally for
`local-epochs`, the server averages the weights (FedAvg) and sends them back. Model bytes both
ways each round, no activations: the communication comparison split learning is judged by."""

from __future__ import annotations

from sltestbed import wire
from sltestbed.averaging import fedavg, load_trained, model_weights
from sltestbed.scoring import Scores
from sltestbed.wire import Content

from .strategy import Strategy


class FedAvgStrategy(Strategy):
    name = "fedavg"
    node_roles = False  # a node trains the model it is sent and keeps nothing

    def __init__(self, setup, transport, log=print):
        super().__init__(setup, transport, log)
        self.client_batch = self.cfg.batch_size
        self.model = setup.new_model()

    def _with_model(self, mtype: str) -> tuple[str, Content]:
        return mtype, Content(part=model_weights(self.model, self.cfg.modules))

    def train_round(self, rnd: int) -> dict:
        replies = self.exchange({c.node_id: self._with_model(wire.LOCAL) for c in self.sample()}, rnd, 0)
        if not replies:
            return {"loss": float("nan")}
        results = [c.meta for c in replies.values()]
        weights = [float(r.num_examples) for r in results]
        load_trained(self.model, fedavg([c.part for c in replies.values()], weights))
        return {"loss": sum(r.loss * w for r, w in zip(results, weights)) / sum(weights)}

    def server_state(self) -> dict:
        return {"model": model_weights(self.model, self.cfg.modules)}

    def load_server_state(self, state: dict) -> None:
        load_trained(self.model, state["model"])

    def trained_model(self):
        return self.model

    def evaluate_round(self, rnd: int) -> dict:
        replies = self.exchange({c.node_id: self._with_model(wire.EVAL_LOCAL) for c in self.clients}, rnd, -1)
        return sum((c.score for c in replies.values()), Scores()).result()
