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
        meta = super().meta(round, step)
        return StepMeta(meta.round, meta.step, meta.base, meta.batch_size, meta.total_steps, meta.widths,
                        local_steps=self.steps_per_round)

    def train_round(self, rnd: int) -> dict:
        started = time.perf_counter()
        requests = {c.node_id: self.outbox.request(c.node_id, wire.ROUND) for c in self.sample()}
        replies = self.refuse_bad_activations(self.exchange(requests, rnd, 0), rnd, 0, wire.ROUND,
                                              lambda node: self.server, self.steps_per_round * self.client_batch)
        uploads = {node: ({m: dequantize(p) for m, p in r.acts.items()}, r.batch) for node, r in replies.items()}
        b, losses = self.client_batch, []
        for step in range(self.steps_per_round):
            rows = {n: slice(step * b, (step + 1) * b) for n, (_, batch) in uploads.items()
                    if step * b < len(batch.lengths)}
            if not rows:
                break
            lengths = [uploads[n][1].lengths[r] for n, r in rows.items()]
            values = [{m: v[r][:, : int(n_.max())] if m == "text" else v[r] for m, v in uploads[n][0].items()}
                      for (n, r), n_ in zip(rows.items(), lengths)]
            labels = [uploads[n][1].labels[r] for n, r in rows.items()]
            losses.append(self.server.train_on(values, lengths, labels))
            self._progress(rnd, losses[-1], sum(len(x) for x in lengths))
        self.step_seconds.append(time.perf_counter() - started)
        local = [r.meta.loss for r in replies.values()]
        return {"loss": self.mean(losses), "local_loss": self.mean(local)}
