"""helexa's actor runtime on trio: actors and their tasks, supervision, a live registry.

This package is for structuring a trio program as a tree of actors: actors
that own a piece of state and its child tasks for as long as they run
(`Actor`), supervisors that restart them (`SupervisorRef`, one_for_one with
backoff and intensity limits), light task actors for per-request work
(`open_task`, `start_task`), and a registry that inspectors read and watch.
There is no messaging: callers reach an actor's state directly (one trio
thread, synchronous mutations) and stop it by ref. It is not for processes
or the network: an actor here is a trio task; device worker processes and
remote nodes are managed by actors in `neuron` and `cortex`. See
docs/actors.md.

    async with actors.open_root("cortex") as root:
        fleet = await root.start_supervisor("fleet", backoff=actors.Backoff(initial=1))
        node = await fleet.start(NodeActor, node_state, name="beast")
        await node.cancel()
"""

from ._actor import Actor
from ._policy import Backoff, Restart, RestartIntensity
from ._ref import ActorRef
from ._registry import Registry, RegistryStatistics, Watch
from ._root import Root, open_root
from ._snapshot import ActorPath, ActorSnapshot, ActorState, ActorStatistics, RegistrySnapshot
from ._supervisor import SupervisorRef
from ._task import TaskActor, open_task
from .errors import (
    ActorError,
    ActorStopped,
    NameTaken,
    RestartIntensityExceeded,
)

__all__ = [
    "Actor",
    "ActorError",
    "ActorPath",
    "ActorRef",
    "ActorSnapshot",
    "ActorState",
    "ActorStatistics",
    "ActorStopped",
    "Backoff",
    "NameTaken",
    "Registry",
    "RegistrySnapshot",
    "RegistryStatistics",
    "Restart",
    "RestartIntensity",
    "RestartIntensityExceeded",
    "Root",
    "SupervisorRef",
    "TaskActor",
    "Watch",
    "open_root",
    "open_task",
]
