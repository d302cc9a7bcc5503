"""helexa's actor runtime on trio: refs and mailboxes, supervision, a live registry.

This package is for structuring a trio program as a tree of actors: mailbox
actors that own state (`Actor`), supervisors that restart them
(`SupervisorRef`, one_for_one with backoff and intensity limits), light task
actors for per-request work (`open_task`, `start_task`), and a registry that
inspectors read and watch. It is not for processes or the network: an actor
here is a trio task; device worker processes and remote nodes are managed by
actors in `neuron` and `cortex`. See docs/actors.md.

    async with actors.open_root("cortex") as root:
        fleet = await root.start_supervisor("fleet", backoff=actors.Backoff(initial=1))
        node = await fleet.start(NodeActor, config, name="beast")
        reply = await node.ask(GetHealth(), timeout=5)
"""

from ._actor import Actor
from ._mailbox import Envelope, Reply
from ._policy import Backoff, Restart, RestartIntensity
from ._ref import ActorRef
from ._registry import Registry, RegistryStatistics, Watch
from ._root import Root, open_root
from ._snapshot import ActorPath, ActorSnapshot, ActorState, ActorStatistics, RegistrySnapshot
from ._supervisor import DEFAULT_MAILBOX, SupervisorRef
from ._task import DEFAULT_TASK_MAILBOX, TaskActor, open_task
from .errors import (
    ActorError,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    NameTaken,
    RemoteError,
    RestartIntensityExceeded,
)

__all__ = [
    "DEFAULT_MAILBOX",
    "DEFAULT_TASK_MAILBOX",
    "Actor",
    "ActorError",
    "ActorPath",
    "ActorRef",
    "ActorSnapshot",
    "ActorState",
    "ActorStatistics",
    "ActorStopped",
    "AskTimeout",
    "Backoff",
    "Envelope",
    "MailboxFull",
    "NameTaken",
    "Registry",
    "RegistrySnapshot",
    "RegistryStatistics",
    "RemoteError",
    "Reply",
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
