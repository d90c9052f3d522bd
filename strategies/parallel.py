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

from .strategy import Strategy


class ParallelStrategy(Strategy):
    name = "parallel"

    def __init__(self, setup, transport, log=print):
        super().__init__(setup, transport, log)
        cfg = self.cfg
        k = max(1, math.ceil(cfg.fraction * len(self.clients)))
        self.client_batch = math.ceil(cfg.batch_size / k)
        mean_size = sum(c.train_size for c in self.clients) / len(self.clients)
        self.steps_per_round = cfg.local_epochs * math.ceil(mean_size / self.client_batch)
        self.client_steps = cfg.num_rounds * self.steps_per_round
        self.server = self.server_role(setup.new_model(), self.client_steps)

    def train_round(self, rnd: int) -> dict:
        clients = self.sample()
        losses = [self.split_step(rnd, step, clients, lambda node: self.server) for step in range(self.steps_per_round)]
        return {"loss": self.mean(losses)}
