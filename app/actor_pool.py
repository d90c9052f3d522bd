"""A ClientApp worker that dies in a simulation is replaced, so the run recovers.

What flwr 1.41's simulation engine does when a Ray actor's process dies (Ray's memory monitor,
the OOM killer, a signal): the actors are made without restarts
(`simulation/ray_transport/ray_actor.py`, `BasicActorPool.create_actor_fn`: `.options(**client_resources)`
only), `RayBackend.process_message` catches the `ActorDiedError` of `ray.get` and puts the dead
actor BACK into the pool (`server/superlink/fleet/vce/backend/raybackend.py`,
`add_actor_back_to_pool` in its `except`), and the worker thread answers with an error reply
(`vce_api.py`, `worker`). Nothing ever makes a new actor: every later message that lands on the
dead one fails the same way (observed here: one partition failed every message after its
worker was killed; with one actor for all nodes, every node does).

`replace_dead_actors()` patches `BasicActorPool.fetch_result_and_return_actor_to_pool` so that
an actor found dead is swapped for a new one before the backend returns it to the pool. The
message that was running is lost (it fails as before, and the strategy records it); the next
message to that node runs on the new actor, which rebuilds the node's role from
`context.state` (the failed message never updated it). The ServerApp runs in the same process
as the simulation engine (`simulation/run_simulation.py`, `_main_loop`: a thread beside
`vce.start_vce`), so patching the class there reaches the pool, whenever it is built.
"""

from __future__ import annotations


def replace_dead_actors(log=print) -> bool:
    """Install the patch (once per process). Returns False, and says why, where this flwr's
    pool is not the one the patch was written for: a dead worker then fails every later
    message it takes, and `max-failed-steps` stops the run."""
    try:
        import ray
        from flwr.simulation.ray_transport.ray_actor import BasicActorPool
    except ImportError as exc:
        log(f"dead ClientApp workers will not be replaced: {exc}")
        return False
    original = BasicActorPool.fetch_result_and_return_actor_to_pool
    if getattr(original, "replaces_dead_actors", False):
        return True
    if not all(hasattr(BasicActorPool, name) for name in ("add_actor_back_to_pool", "submit")):
        log("dead ClientApp workers will not be replaced: flwr's BasicActorPool is not the one of flwr 1.41")
        return False

    def fetch_result_and_return_actor_to_pool(self, future):
        try:
            return original(self, future)
        except ray.exceptions.ActorDiedError:
            if not (hasattr(self, "create_actor_fn") and future in getattr(self, "_future_to_actor", {})):
                log("a ClientApp worker died and cannot be replaced: flwr's BasicActorPool is not the one of "
                    "flwr 1.41")
                raise
            dead = self._future_to_actor[future]
            # the backend's `except` puts this future's actor back into the pool: a new one
            self._future_to_actor[future] = self.create_actor_fn()
            log(f"a ClientApp worker died (Ray actor {dead._actor_id.hex()[:12]}): replaced by a new one")
            raise

    fetch_result_and_return_actor_to_pool.replaces_dead_actors = True
    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_result_and_return_actor_to_pool
    return True
