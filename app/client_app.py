"""The Flower ClientApp: a SuperNode's side of split learning, over `sltestbed.client_node`.

One handler serves every message type: read the request's content, restore this node's
`ClientNode` (its role: client part, optimizer, batch cursor, the forward awaiting its
gradient) from `context.state`, let it answer, save the role back, reply. A per-process
cache keyed by run, node and state version skips the restore when the same actor serves the
node again; `context.state` stays the source of truth.

The role is saved only when the message changed it (`ClientNode.revision` moved: the server's
output scored, or with the labels at the client its loss computed, leave it as it was). It is
saved after every message that did change it, because the next message to this node may land
on any worker: flwr 1.41's simulation hands each message to whichever Ray actor is free, and a
deployment SuperNode starts a new ClientApp process per message, so no worker can know it will
serve the node again.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from sltestbed import wire
from sltestbed.client_node import ClientNode, kill_this_process
from sltestbed.experiment import ExperimentConfig
from sltestbed.threads import fit_threads

from . import flower_records

app = ClientApp()
# a simulation's actor computes on its CPU share (Ray sets OMP_NUM_THREADS to it); a deployed
# SuperNode's ClientApp on every core of its host unless its environment says otherwise
fit_threads("OMP_NUM_THREADS")
_CACHE: dict = {}  # (run id, node id) -> (state version, ClientNode, its revision then): a speed-up only


def _partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise ValueError(f"node config lacks {exc}: start the SuperNode with "
                         f"--node-config 'partition-id=<i> num-partitions=<n>'") from None


def handle(msg: Message, context: Context, wait=time.sleep, kill=kill_this_process) -> Message:
    """Answer one message (`wait(seconds)`: how the `stall` fault waits; `kill()`: how the
    `kill` fault ends this worker process)."""
    spec = wire.message_type(msg.metadata.message_type)
    request = flower_records.read(msg.content, spec, "down")
    key = (msg.metadata.run_id, msg.metadata.dst_node_id)
    version = int(context.state["sl"]["version"]) if "sl" in context.state else 0
    held, node, saved = _CACHE.get(key) or (0, ClientNode(ExperimentConfig.from_run_config(dict(context.run_config)),
                                                          *_partition(context)), None)
    if spec.role:
        node.start(request.meta)
        if held != version:  # another actor served this node since: its saved state is newer
            node.restore(context.state["sl"]["role"])
            held, saved = version, node.revision
        elif saved is None:  # built here, not saved yet
            saved = node.revision
    _CACHE[key] = (held, node, saved)
    try:
        reply = node.handle(spec.name, request, wait, kill)
    except BaseException:  # the role may be half changed; its saved state is not: restore from it next time
        _CACHE.pop(key, None)
        raise
    if spec.saves_role and (node.revision != saved or "sl" not in context.state):
        version += 1
        context.state["sl"] = ConfigRecord({"version": version, "role": node.state()})
        _CACHE[key] = (version, node, node.revision)
    return Message(flower_records.write(reply, entropy=node.cfg.entropy_coding), reply_to=msg)


for _type in wire.MESSAGE_TYPES:
    _category, _action = _type.split(".")
    getattr(app, _category)(_action)(handle)
