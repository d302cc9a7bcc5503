"""Image requests at the gateway: spot image parts, refuse them for text-only models.

A request with an image part (chat `image_url`, Responses `input_image`, and Anthropic
`image` blocks, which arrive here already translated to chat) goes only to a model
whose capabilities include `image` (or upstream's `vision`); a model known to be text
only is refused here with 400 `vision_unsupported`, before any node is asked or any
model loaded. A model whose capabilities the gateway does not know yet (not in the
catalogue with `capabilities`, not reported by any node) is sent on, and the node
decides. Not for: decoding or checking images (the node does, with the model's own
processor).
"""

from __future__ import annotations

from typing import Any

from protocol.errors import InvalidRequest

__all__ = ["check_vision", "has_images"]

IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
VISION_CAPABILITIES = frozenset({"image", "vision"})


def has_images(body: Any) -> bool:
    """Whether a chat or Responses request body has an image part in its messages."""
    if not isinstance(body, dict):
        return False
    turns = body.get("messages")
    if turns is None:
        turns = body.get("input")
    return isinstance(turns, list) and any(_turn_has_image(t) for t in turns)


def _turn_has_image(turn: Any) -> bool:
    content = turn.get("content") if isinstance(turn, dict) else None
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES for part in content
    )


def check_vision(body: Any, model: str, capabilities: tuple[str, ...]) -> None:
    """Raise `vision_unsupported` for an image request to a model known to be text only."""
    if capabilities and not VISION_CAPABILITIES & set(capabilities) and has_images(body):
        raise InvalidRequest(
            f"model '{model}' does not accept images; it is text-only",
            param="messages", code="vision_unsupported",
            extra={"model_id": model,
                   "suggestion": "send text only, or use a vision-capable model"},
        )  # fmt: skip
