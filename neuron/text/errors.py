"""Errors of the parent-side text pipeline (templates, tokens, sampling fields).

    TextError                          anything neuron.text raises on purpose
    ├── TokenizerLoadFailed            (not wire) a snapshot's tokenizer files are unusable
    ├── TemplateRenderFailed           ApiError 422 invalid_request_error/template_render_failed
    ├── InvalidParameter               InvalidRequest 400 invalid_value, param = the field
    │   └── UnsupportedValue           400 unsupported_value (e.g. n > 1)
    ├── ContextLengthExceeded          InvalidRequest 400 context_length_exceeded,
    │                                  extras prompt_len, max
    ├── ContentUnsupported             InvalidRequest 400 unsupported_content (audio, files)
    │   └── VisionUnsupported          400 vision_unsupported, extras model_id, suggestion
    ├── ImageNotDataUri                InvalidRequest 400 invalid_image_url (never fetched)
    ├── ImageInvalid                   InvalidRequest 400 invalid_image (undecodable, wrong
    │                                  type, no pixels), param = the part's path
    └── ImageLimitExceeded             InvalidRequest 400 image_limit_exceeded, extras
                                       limit (the `[vision]` key), value, max

Every class but `TokenizerLoadFailed` is also the `protocol.errors` class named, so the
daemon's HTTP edge renders it with its own status and code; nothing here knows
about HTTP. Not for: worker-side failures (`neuron.worker.errors`) or daemon
errors (`neuron.errors`).
"""

from __future__ import annotations

from protocol.errors import ApiError, InvalidRequest

__all__ = [
    "ContentUnsupported",
    "ContextLengthExceeded",
    "ImageInvalid",
    "ImageLimitExceeded",
    "ImageNotDataUri",
    "InvalidParameter",
    "TemplateRenderFailed",
    "TextError",
    "TokenizerLoadFailed",
    "UnsupportedValue",
    "VisionUnsupported",
]


class TextError(Exception):
    """Root of everything `neuron.text` raises on purpose."""


class TokenizerLoadFailed(TextError):
    """A snapshot's tokenizer or chat template files are missing or unreadable."""


class TemplateRenderFailed(TextError, ApiError):
    """The model's chat template could not render a request that needs it (tools)."""

    status = 422
    type = "invalid_request_error"
    code = "template_render_failed"


class InvalidParameter(TextError, InvalidRequest):
    """A sampling field is out of range or malformed; `param` names it."""

    code = "invalid_value"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"Invalid '{param}': {message}", param=param)


class UnsupportedValue(InvalidParameter):
    """A well-formed value this server does not serve (e.g. `n` > 1)."""

    code = "unsupported_value"


class ContextLengthExceeded(TextError, InvalidRequest):
    code = "context_length_exceeded"

    def __init__(self, prompt_len: int, max_len: int) -> None:
        super().__init__(
            f"This model's maximum context length is {max_len} tokens. However, your "
            f"messages resulted in {prompt_len} tokens. Please reduce the length of the "
            "messages.",
            param="messages",
            extra={"prompt_len": prompt_len, "max": max_len},
        )
        self.prompt_len = prompt_len
        self.max_len = max_len


class ContentUnsupported(TextError, InvalidRequest):
    """A message content part of a kind this model cannot take; `param` is its path."""

    code = "unsupported_content"


class VisionUnsupported(ContentUnsupported):
    code = "vision_unsupported"

    def __init__(self, param: str, model_id: str | None = None) -> None:
        name = f"model '{model_id}'" if model_id else "this model"
        super().__init__(
            f"{name} does not accept images (image_url parts); it is text-only",
            param=param,
            extra={
                "model_id": model_id,
                "suggestion": "send text only, or use a vision-capable model",
            },
        )


class ImageNotDataUri(TextError, InvalidRequest):
    """Images must arrive inline as `data:image/...;base64,` URIs: we never fetch URLs."""

    code = "invalid_image_url"

    def __init__(self, param: str) -> None:
        super().__init__(
            "image_url must be a data:image/...;base64 URI; remote image URLs are not fetched",
            param=param,
        )


class ImageInvalid(TextError, InvalidRequest):
    """An inline image that cannot be used: not base64, not the type it claims, not one
    of PNG / JPEG / WebP / GIF, truncated or corrupt, or without pixels."""

    code = "invalid_image"

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"Invalid image at '{param}': {reason}", param=param)


class ImageLimitExceeded(TextError, InvalidRequest):
    """An image, or a request's images, over one of the node's `[vision]` limits."""

    code = "image_limit_exceeded"

    def __init__(
        self, param: str, limit: str, value: float, maximum: float, what: str, *, key: bool = True
    ) -> None:
        where = f" ([vision] {limit})" if key else ""
        super().__init__(
            f"{what} is {_number(value)}, over this server's limit of {_number(maximum)}{where}",
            param=param,
            extra={"limit": limit, "value": value, "max": maximum},
        )


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
