"""The gateway's model list (`GET /v1/models`) on the wire.

OpenAI's `{"object": "list", "data": [...]}` whose entries carry, besides
`id`/`object`/`created`/`owned_by`, helexa's fleet view of each model:
whether it is loaded, where (with status and VRAM estimate), where it could
be loaded, its capabilities, context limits and price. Absent `cost` means
"not priced"; a zero cost means "free" (the difference is contractual).
How the list is assembled from the catalogue and the nodes is the gateway's
business, not this module's; a node's own `/models` answer is in
`protocol.node`.
"""

from typing import Any, Literal, Self

import attrs

from protocol.ids import ModelId, NodeName

__all__ = ["ModelCard", "ModelCost", "ModelLimit", "ModelList", "ModelLocation"]


@attrs.frozen(kw_only=True)
class ModelLocation:
    node: NodeName
    status: str  # loaded | loading | poisoned | recovering | …
    vram_estimate_mb: int | None = None


@attrs.frozen(kw_only=True)
class ModelLimit:
    """Token limits: the context window and, when known, input/output caps."""

    context: int
    input: int | None = None
    output: int | None = None


@attrs.frozen(kw_only=True)
class ModelCost:
    """Price per million tokens."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


@attrs.frozen(kw_only=True)
class ModelCard:
    """One entry of the list; the flat `max_*` fields mirror `limit`."""

    id: ModelId
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "helexa"
    loaded: bool = False
    feasible_on: tuple[NodeName, ...] = ()
    locations: tuple[ModelLocation, ...] = ()
    capabilities: tuple[str, ...] = ()  # text | vision | image | …
    limit: ModelLimit | None = None
    cost: ModelCost | None = None
    tool_call: bool = False
    reasoning: bool = False
    max_model_len: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None

    @classmethod
    def with_limit(cls, limit: ModelLimit | None, **fields: Any) -> Self:
        """A card whose flat `max_*` fields agree with `limit`."""
        if limit is None:
            return cls(**fields)
        return cls(
            limit=limit,
            max_model_len=limit.context,
            max_input_tokens=limit.input,
            max_output_tokens=limit.output,
            **fields,
        )


@attrs.frozen(kw_only=True)
class ModelList:
    object: Literal["list"] = "list"
    data: tuple[ModelCard, ...] = ()
