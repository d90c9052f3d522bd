"""Vanilla (sequential) split learning and SplitFed v2: one server part, clients in turn.

sequential: each client trains `local-epochs` over its partition, then its client part goes
  (through the server, counted as model bytes both ways) to the next client.
splitfed-v2: clients in a seeded random order each round, each from the round's common client
  part; at the end of the round the client parts are averaged (FedAvg) and sent back.
"""

from __future__ import annotations

import math

import torch

from .strategy import Strategy


class SequentialStrategy(Strategy):
    name = "sequential"

    def __init__(self, setup, transport, log=print):
        super().__init__(setup, transport, log)
        cfg = self.cfg
        self.client_batch = cfg.batch_size
        self.steps = {c.node_id: cfg.local_epochs * math.ceil(c.train_size / cfg.batch_size) for c in self.clients}
        self.client_steps = cfg.num_rounds * max(self.steps.values())
        self.server = self.server_role(setup.new_model(), cfg.num_rounds * sum(self.steps.values()))
        self.holder = None  # the client holding the latest client part

    def server_state(self) -> dict:
        return {**super().server_state(), "holder": None if self.holder is None else self.holder.partition}

    def load_server_state(self, state: dict) -> None:
        super().load_server_state(state)
        self.holder = next((c for c in self.clients if c.partition == state["holder"]), None)

    def round_steps(self) -> int:
        return sum(self.steps.values())

    def train_round(self, rnd: int) -> dict:
        losses = []
        for client in self.sample():
            if self.holder is not None and self.holder.node_id != client.node_id:
                self.hand_over(rnd, [client])
            for step in range(self.steps[client.node_id]):
                losses.append(self.split_step(rnd, step, [client], lambda node: self.server))
            self.holder = client
        return {"loss": self.mean(losses)}

    def hand_over(self, rnd: int, clients) -> None:
        """The latest client part moves from its holder to `clients` (with their next message)."""
        parts = self.collect_parts(rnd, [self.holder])
        if self.holder.node_id in parts:
            for c in clients:
                if c.node_id != self.holder.node_id:
                    self.outbox.parts[c.node_id] = parts[self.holder.node_id]

    def evaluate_round(self, rnd: int) -> dict:
        if self.holder is not None:  # every client evaluates with the latest client part
            self.hand_over(rnd, self.clients)
        return self.evaluate_split(rnd, self.server)


class SplitFedV2Strategy(SequentialStrategy):
    name = "splitfed-v2"

    def train_round(self, rnd: int) -> dict:
        clients = self.sample()
        clients = [clients[i] for i in torch.randperm(len(clients), generator=self.generator)]
        losses = []
        for client in clients:  # each from the averaged client part it already holds
            for step in range(self.steps[client.node_id]):
                losses.append(self.split_step(rnd, step, [client], lambda node: self.server))
        self.average_client_parts(rnd, clients)
        return {"loss": self.mean(losses)}

    def evaluate_round(self, rnd: int) -> dict:
        return self.evaluate_split(rnd, self.server)
