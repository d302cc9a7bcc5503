"""Identifier types shared by several protocol modules.

Ids are `NewType`s so signatures say what they take; at run time they are the
plain `str` or `int` they wrap, and the converter treats them as such. Ids
that belong to one protocol only (a worker's `SeqId`) live in that module.
"""

from __future__ import annotations

from typing import NewType

__all__ = ["ModelId", "NodeName"]

# A model as named on the node API and in worker frames, e.g. "Qwen/Qwen3-0.6B".
ModelId = NewType("ModelId", str)

# A neuron host as the gateway names it in its config, e.g. "beast".
NodeName = NewType("NodeName", str)
