"""SplitFed v1: clients in parallel, each with its own copy of the server part; at the end of a
round the client parts (sent up and back down, counted) and the server copies (on the server,
no link) are averaged with FedAvg."""

from __future__ import annotations

import math

from sltestbed.averaging import fedavg

from .strategy import Strategy


class SplitFedV1Strategy(Strategy):
    name = "splitfed-v1"

    def __init__(self, setup, transport, log=print):
        super().__init__(setup, transport, log)
        cfg = self.cfg
        self.client_batch = cfg.batch_size
        mean_size = sum(c.train_size for c in self.clients) / len(self.clients)
        self.steps_per_round = cfg.local_epochs * math.ceil(mean_size / cfg.batch_size)
        self.client_steps = cfg.num_rounds * self.steps_per_round
        self.server = self.server_role(setup.new_model(), self.client_steps)
        self.copies = {c.node_id: self.server.copy() for c in self.clients}

    def server_state(self) -> dict:
        partition = {c.node_id: c.partition for c in self.clients}
        return {**super().server_state(), "copies": {partition[n]: c.state() for n, c in self.copies.items()}}

    def load_server_state(self, state: dict) -> None:
        super().load_server_state(state)
        for c in self.clients:
            self.copies[c.node_id].load_state(state["copies"][c.partition])

    def train_round(self, rnd: int) -> dict:
        clients = self.sample()
        losses = [self.split_step(rnd, step, clients, lambda node: self.copies[node])
                  for step in range(self.steps_per_round)]
        answered = self.average_client_parts(rnd, clients) or [c.node_id for c in clients]
        size = {c.node_id: c.train_size for c in clients}
        server_average = fedavg([self.copies[n].part_state() for n in answered], [size[n] for n in answered])
        self.server.load_part_state(server_average)
        for copy in self.copies.values():
            copy.load_part_state(server_average)
        return {"loss": self.mean(losses)}
