"""Checkpoints and resume: a run killed mid-way goes on from its last completed round.

After each round (training, then evaluation) the server writes `<run>/checkpoint.pt`
atomically (a temporary file, then a rename, so a kill leaves the last whole checkpoint):

    round        the last completed round
    config       the run config's results keys: a resume with other values is refused
    strategy     the server side (`Strategy.checkpoint_state`): its server parts, optimizers and
                 schedules, the sampling generator, what waits in the outbox, the observer,
                 the rounds' metrics, failures, the ledger and the transport's counters
    nodes        every node's role state (client part, optimizer, batch cursor), from a
                 query.state message, by partition
    torch_rng    the server process's global random stream

With `resume = true`, a run whose directory holds a checkpoint restores it after its set-up
(the server side here; each node's state through a train.restore message) and continues from
the next round. Everything is keyed by partition: a resumed run's SuperNodes have new node ids.
The checkpoint messages are outside the protocol: no byte of them is in the ledger and their
round trips are not counted, so a resumed run's figures are the uninterrupted run's (the
resumed run's own set-up messages are replaced by the original's, kept in the ledger).
"""

from __future__ import annotations

import json
import os

import torch

from sltestbed import wire
from sltestbed.checkpoint_files import ABOUT, CHECKPOINT
from sltestbed.wire import Content

from .transport import exchange


class CheckpointMismatch(ValueError):
    """A checkpoint that does not belong to the run asked to resume it."""


class Checkpoints:
    """The checkpoints of the run in `directory`."""

    def __init__(self, directory: str, log=print):
        self.directory, self.log = directory, log
        self.path = os.path.join(directory, CHECKPOINT)
        self.about_path = os.path.join(directory, ABOUT)

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    # --- writing -------------------------------------------------------------------------------
    def save(self, strategy, rnd: int) -> bool:
        """Checkpoint `strategy` after round `rnd`. A node that cannot give its state (busy with a
        reply that never came, or failing now) leaves the previous checkpoint in place: a
        checkpoint holds every node or none. Returns whether one was written."""
        nodes = {}
        if strategy.node_roles:
            clients = strategy.clients
            busy = [c.partition for c in clients if not strategy.transport.is_free(c.node_id)]
            states = {} if busy else self._node_states(strategy, rnd)
            missing = busy or [c.partition for c in clients if c.node_id not in states]
            if missing:
                self.log(f"checkpoint after round {rnd} not written: partition(s) {missing} gave no state; "
                         f"the last checkpoint stays")
                return False
            nodes = {c.partition: states[c.node_id] for c in clients}
        state = {"round": rnd, "config": strategy.cfg.results_config(), "strategy": strategy.checkpoint_state(),
                 "nodes": nodes, "torch_rng": torch.get_rng_state()}
        os.makedirs(self.directory, exist_ok=True)
        partial = self.path + ".partial"
        torch.save(state, partial)
        os.replace(partial, self.path)
        with open(self.about_path + ".partial", "w") as f:  # for the harness, which reads no torch
            json.dump({"round": rnd, "num_rounds": strategy.cfg.num_rounds, "config": state["config"],
                       "partitions": sorted(nodes)}, f, indent=1)
        os.replace(self.about_path + ".partial", self.about_path)
        return True

    def _node_states(self, strategy, rnd: int) -> dict[int, bytes]:
        """Each node's role state by node id (query.state), outside the ledger and the counts."""
        transport = strategy.transport
        trips = transport.round_trips
        meta = strategy.meta(rnd, -1)
        replies = exchange(transport, {c.node_id: (wire.STATE, Content(meta=meta)) for c in strategy.clients}, rnd, -1,
                           [], self.log, account=False)
        transport.round_trips = trips
        return {node: content.state for node, content in replies.items()}

    def remove(self) -> None:
        """After the run's results are written the checkpoint has served."""
        for path in (self.path, self.about_path):
            if os.path.exists(path):
                os.remove(path)

    # --- resuming --------------------------------------------------------------------------------
    def load(self, cfg) -> dict | None:
        """The checkpoint (None where there is none), after checking it is `cfg`'s."""
        if not self.exists():
            return None
        state = torch.load(self.path, weights_only=False, map_location="cpu")
        requested = cfg.results_config()
        diff = {k: (state["config"].get(k, "(not recorded)"), requested.get(k, "(unknown key)"))
                for k in sorted(set(state["config"]) | set(requested))
                if state["config"].get(k) != requested.get(k)}
        if diff:
            raise CheckpointMismatch(f"{self.path} is a checkpoint of another config ("
                                     + ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in diff.items())
                                     + "): resume with the same keys, or move it away")
        return state

    def resume(self, strategy) -> int:
        """Restore the checkpoint into `strategy` (just built, after set-up) and its nodes;
        returns the last completed round (0: no checkpoint, the run starts afresh)."""
        state = self.load(strategy.cfg)
        if state is None:
            self.log(f"resume: no checkpoint in {self.directory}: starting from round 1")
            return 0
        partitions = sorted(c.partition for c in strategy.clients)
        if strategy.node_roles and partitions != sorted(state["nodes"]):
            raise CheckpointMismatch(f"{self.path} holds partitions {sorted(state['nodes'])}, this run's SuperNodes "
                                     f"have {partitions}: resume with the same SuperNodes")
        strategy.load_checkpoint_state(state["strategy"])
        torch.set_rng_state(state["torch_rng"])
        if state["nodes"]:
            transport, trips = strategy.transport, strategy.transport.round_trips
            meta = strategy.meta(state["round"], -1)
            requests = {c.node_id: (wire.RESTORE, Content(state=state["nodes"][c.partition], meta=meta))
                        for c in strategy.clients}
            failures = []
            exchange(transport, requests, state["round"], -1, failures, self.log, account=False)
            transport.round_trips = trips
            if failures:
                raise RuntimeError(f"resume: partition(s) {[f.partition for f in failures]} could not restore their "
                                   f"state: {failures[0].reason}")
        self.log(f"resume: restored the checkpoint after round {state['round']} of {strategy.cfg.num_rounds}")
        return state["round"]
