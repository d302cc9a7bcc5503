"""Prefix-aware routing: requests that share a prompt prefix go to the replica that
served that prefix last, where the neuron's prefix cache still holds it.

`prefix_key(path, body, chars)` names a request's prefix: a digest of the
model, the tools, the system (developer) messages and the first user message —
what stays the same across the turns of one conversation and across the
conversations of one agent — cut to its first `chars` characters, so two
requests whose first `chars` characters agree share a key even if they
diverge later. A raw prompt (`/v1/completions`) is keyed by its first `chars`
characters. A body that cannot be read, or has no text, has no key.

`PrefixAffinity.pick(model, key, replicas)` chooses among a model's routable
replicas, as `(load, node)` pairs:

* the replica that served `key` last, unless it is over its load bound
  (outcome `hit`);
* for a key not seen (or whose replica is gone), the replica that rendezvous
  hashing gives the key, so new prefixes spread over the replicas even between
  two load polls (outcome `miss`);
* the least loaded replica when the chosen one is over its load bound: its
  load above `load_factor` x the replicas' mean load and above the least
  loaded replica's by more than `load_slack` requests (outcome `overloaded`),
  as SGLang's cache-aware router does, so one hot prefix cannot pile onto one
  node.

The choice is remembered for the key (a bounded LRU of `MAX_KEYS` keys), so
after a fall-back the conversation follows its prefix to the new replica.
`cortex.fleet` asks for a key only when a model has two or more routable
replicas. Not
for: placement's other decisions (`cortex.placement`), or reading the nodes.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import attrs

from protocol.ids import ModelId, NodeName

__all__ = ["MAX_KEYS", "AffinityOutcome", "PrefixAffinity", "prefix_key"]

MAX_KEYS = 65536  # keys remembered (LRU); each costs ~200 bytes
AffinityOutcome = Literal["hit", "miss", "overloaded"]
_SYSTEM_ROLES = ("system", "developer")


def prefix_key(path: str, body: bytes, chars: int) -> bytes | None:
    """The digest naming the prefix of a request body sent to `path`, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    text = _prefix_text(path, data)
    if not text:
        return None
    head = f"{data.get('model')}\0{text[:chars]}"
    return hashlib.blake2b(head.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _prefix_text(path: str, data: dict[str, Any]) -> str:
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        prompt = data.get("prompt")
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0]
        return prompt if isinstance(prompt, str) else json.dumps(prompt)
    parts = [_canonical(data.get("tools"))]
    if isinstance(instructions := data.get("instructions"), str):  # responses
        parts.append(instructions)
    messages = data.get("messages", data.get("input"))
    if isinstance(messages, str):  # responses: a bare input string
        messages = [{"role": "user", "content": messages}]
    if isinstance(messages, list):
        parts.extend(_up_to_first_user(messages))
    return "\n".join(p for p in parts if p)


def _up_to_first_user(messages: Sequence[Any]) -> Iterable[str]:
    """The system/developer messages and the first user message: one conversation's
    constant head (later turns only append)."""
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in _SYSTEM_ROLES or role == "user":
            yield f"{role}:{_canonical(message.get('content'))}"
        if role == "user":
            return


def _canonical(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@attrs.define
class PrefixAffinity:
    """Which replica served each prefix last, and the load-bounded choice."""

    load_factor: float = 1.5
    load_slack: int = 4
    max_keys: int = MAX_KEYS
    _last: collections.OrderedDict[tuple[ModelId, bytes], NodeName] = attrs.field(
        factory=collections.OrderedDict
    )

    def pick(
        self, model: ModelId, key: bytes, replicas: Sequence[tuple[int, NodeName]]
    ) -> tuple[NodeName, AffinityOutcome]:
        """The replica for `key` among `replicas` ((load, node), not empty), and why."""
        loads = {name: load for load, name in replicas}
        last = self._last.get((model, key))
        if last in loads:
            choice, outcome = last, "hit"
        else:
            choice, outcome = max(loads, key=lambda name: _score(key, name)), "miss"
        if self._over_bound(loads[choice], loads.values()):
            choice, outcome = min(replicas)[1], "overloaded"
        return choice, outcome

    def served(self, model: ModelId, key: bytes, node: NodeName) -> None:
        """Remember that `node` now holds `key`'s prefix."""
        self._last[(model, key)] = node
        self._last.move_to_end((model, key))
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)

    def _over_bound(self, load: int, loads: Iterable[int]) -> bool:
        loads = list(loads)
        mean = sum(loads) / len(loads)
        return load > self.load_factor * mean and load - min(loads) > self.load_slack


def _score(key: bytes, node: NodeName) -> bytes:
    """Rendezvous hashing: each (key, node) pair's weight; the highest wins."""
    return hashlib.blake2b(key + node.encode(), digest_size=8).digest()
