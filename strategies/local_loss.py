"""Local-loss split learning (Han et al. 2021, "Accelerating Federated Learning with Split
Learning on Locally Generated Losses"; CSE-FSL, Mu and Shen 2023): one message per client per
round, and no gradient comes down.

A round: each sampled client trains its part for the round's steps against an auxiliary head
of its own (`sltestbed.model.LocalHead`, on the values the server will receive) and answers
with the round's activations in one payload per modality, quantized as every strategy
quantizes them, with their labels. The server then trains its one shared part on them, step
by step as parallel split learning would: step s joins each client's s-th batch of the round
(client batches of ceil(B / K), parallel's). Nothing goes back but the next request.

What changes against parallel split learning: the client part no longer follows the server's
loss (its only signal is the local head's), and the activations are those of the client part
as it ends the round, encoded once over the round's rows (as an evaluation encodes its shard),
where Han et al. send each step's as it is computed. A round costs two exchanges (this and
the evaluation) instead of one a step.
"""

from __future__ import annotations

import time
from dataclasses import replace

from sltestbed import wire
from sltestbed.quantizers import dequantize
from sltestbed.wire import StepMeta

from .parallel import ParallelStrategy


class LocalLossStrategy(ParallelStrategy):
    """Parallel split learning's clients, batches and shared server part (its constructor),
    trained by local loss: its own round."""

    name = "local-loss"
    step_message = wire.ROUND  # what the round-trip benchmark times as a step: the round's one exchange

    def meta(self, round: int, step: int) -> StepMeta:
        return replace(super().meta(round, step), local_steps=self.steps_per_round)

    def train_round(self, rnd: int) -> dict:
        started = time.perf_counter()
        requests = {c.node_id: self.outbox.request(c.node_id, wire.ROUND) for c in self.sample()}
        replies = self.refuse_bad_activations(self.exchange(requests, rnd, 0), rnd, 0, wire.ROUND,
                                              lambda node: self.server, self.steps_per_round * self.client_batch)
        uploads = [list(wire.client_batches({m: dequantize(p) for m, p in r.acts.items()}, r.batch, self.client_batch))
                   for r in replies.values()]
        losses = []
        for step in range(max(map(len, uploads), default=0)):
            values, batches = zip(*(upload[step] for upload in uploads if step < len(upload)))
            losses.append(self.server.train_on(list(values), [b.lengths for b in batches], [b.labels for b in batches]))
            self._progress(rnd, losses[-1], sum(len(b.lengths) for b in batches))
        self.step_seconds.append(time.perf_counter() - started)
        if replies:
            self.log(f"round {rnd}/{self.cfg.num_rounds}: the clients' local loss "
                     f"{self.mean(r.meta.loss for r in replies.values()):.4f}")
        return {"loss": self.mean(losses)}
