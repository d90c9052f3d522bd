"""Parallel split learning, MPSL style: one shared server part, every sampled client in each
step, no client synchronisation.

A step: one round trip in which each client applies the gradient of the last step and sends
its activations; the server joins them into one batch, one forward pass. Labels at the
server: they come with the activations, the server computes the loss, steps, and the
gradients ride to the clients with the next request. Labels at the client: a second round
trip sends each client its slice of the logits and brings back its loss and d loss / d logits;
the server steps on sum_k (b_k / B) L_k. The server batch B is split over K clients,
b_k = ceil(B / K).
"""

from __future__ import annotations

import math

from flwr.app import RecordDict

from sltestbed.roles import dequantized

from . import protocol as P
from .base import Strategy


class ParallelStrategy(Strategy):
    name = "parallel"

    def __init__(self, grid, cfg, log=print):
        super().__init__(grid, cfg, log)
        k = max(1, math.ceil(cfg.fraction * len(self.clients)))
        self.client_batch = math.ceil(cfg.batch_size / k)
        mean_size = sum(c.train_size for c in self.clients) / len(self.clients)
        self.steps_per_round = cfg.local_epochs * math.ceil(mean_size / self.client_batch)
        self.client_steps = cfg.num_rounds * self.steps_per_round
        self.server = self.server_role(self.new_model(), self.client_steps)
        self.pending: dict[int, dict] = {}  # node -> gradient payloads not yet delivered

    def _request(self, node: int, mtype: str) -> tuple[str, RecordDict]:
        content = RecordDict()
        if node in self.pending:
            P.put_payloads(content, "grads", self.pending.pop(node), entropy=self.cfg.entropy_coding)
        return mtype, content

    def train_round(self, rnd: int) -> dict:
        clients = self.sample()
        losses = []
        for step in range(self.steps_per_round):
            replies = self.exchange({c.node_id: self._request(c.node_id, P.STEP) for c in clients}, rnd, step)
            if not replies:
                continue
            nodes = list(replies)
            batches = [P.get_batch(replies[n]) for n in nodes]
            inputs = [{**dequantized(P.get_payloads(replies[n], "acts")), "lengths": b["lengths"]}
                      for n, b in zip(nodes, batches)]
            logits = self.server.forward(inputs)
            if self.cfg.labels == "server":
                loss, grads = self.server.backward_from_labels([b["labels"] for b in batches])
            else:
                answers = self.exchange({n: (P.LOGITS, self._logits_content(l)) for n, l in zip(nodes, logits)},
                                        rnd, step)
                dlogits = [P.decode_tensor(answers[n]["loss"]["dlogits"]) if n in answers else None for n in nodes]
                grads = self.server.backward_from_logit_grads(dlogits)
                sizes = {n: len(b["lengths"]) for n, b in zip(nodes, batches) if n in answers}
                loss = (sum(float(answers[n]["loss"]["loss"]) * s for n, s in sizes.items()) / sum(sizes.values())
                        if sizes else float("nan"))
            for n, g in zip(nodes, grads):
                if g is not None:
                    self.pending[n] = g
            losses.append(loss)
        return {"loss": sum(losses) / len(losses) if losses else float("nan")}

    def evaluate_round(self, rnd: int) -> dict:
        extra = {c.node_id: self._request(c.node_id, P.EVAL)[1] for c in self.clients}
        return self.evaluate_split(rnd, self.server, extra)
