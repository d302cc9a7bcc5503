"""Images for vision-language models, in the parent: decode, check, preprocess, count.

A chat request's image parts arrive as `data:image/...;base64,` URIs (the OpenAI
`image_url` part; Responses `input_image` and Anthropic base64 `image` blocks are
translated to it). `decode_image` checks each one against the node's `[vision]`
limits (`ImageLimits`) before it costs anything: the encoded size before decoding
base64, the pixel count and aspect ratio from the image header before decoding
pixels (so a decompression bomb — a huge declared size in a tiny file — is refused
unread), then decodes it with Pillow, only in the format its MIME type names (PNG,
JPEG, WebP, GIF's first frame). Every refusal is a 400 naming the part and, for a
limit, the `[vision]` key.

`ImageInputs` is a served model's image side: transformers' own image processor read
from the snapshot's `preprocessor_config.json` (no hand-written resizing) turns the
decoded images into `pixel_values` and `image_grid_thw`, and `prompt_inputs` expands
each image placeholder the chat template wrote into as many placeholder tokens as
that image costs — so prompt token counts, `count_tokens` and usage include image
tokens — and returns the tensors for the `Generate` frame (CPU, float32 pixels).

transformers (and through it torch, on the CPU only) is imported when a vision model
is loaded, never for text-only models. Not for: fetching URLs (never), videos, or the
model side (`neuron.worker.vision`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from neuron.text.errors import ImageInvalid, ImageLimitExceeded, InvalidParameter
from protocol.openai import ChatMessage, ImageUrlPart
from protocol.worker import MAX_FRAME_BYTES, RawTensor

__all__ = [
    "VISION_FAMILIES",
    "ImageInputs",
    "ImageLimits",
    "decode_image",
    "has_images",
    "image_parts",
]

# config.model_type of the families served with images in (neuron.worker.vision agrees).
VISION_FAMILIES = frozenset({"qwen3_vl", "qwen3_5"})
# A request's pixel values after preprocessing ride in one generate frame, with room
# left for the prompt's ids and the sampling fields.
MAX_PIXEL_BYTES = MAX_FRAME_BYTES - (16 << 20)
# MIME type -> the one Pillow format it may be decoded as.
FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}


@attrs.frozen
class ImageLimits:
    """The `[vision]` limits (neuron.config.Vision)."""

    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_images_per_request: int = 8
    max_image_aspect_ratio: float = 100.0


def has_images(messages: Sequence[ChatMessage]) -> bool:
    """Whether a chat request's messages have an image part."""
    return any(
        isinstance(part, ImageUrlPart)
        for m in messages
        if isinstance(m.content, tuple)
        for part in m.content
    )


def image_parts(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(path, data URI) of every image part of template-ready messages, in the order the
    template renders them."""
    found = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.get("type") == "image_url":
                    found.append((f"messages[{i}].content[{j}]", part["image_url"]["url"]))
    return found


def decode_image(uri: str, param: str, limits: ImageLimits):
    """An RGB Pillow image from a data URI, or the 400 that says why not."""
    from PIL import Image

    # Our own `max_image_pixels` is checked from the header before any pixel is
    # decoded; Pillow's global bomb check (which raises before we can) stays out of it.
    Image.MAX_IMAGE_PIXELS = None
    header, _, payload = uri.partition(",")
    mime = header.removeprefix("data:").split(";")[0].strip().lower()
    if mime not in FORMATS:
        raise ImageInvalid(param, f"type {mime!r} is not supported; send PNG, JPEG, WebP or GIF")
    if len(payload) * 3 // 4 > limits.max_image_bytes + 2:  # checked before decoding
        _over(param, "max_image_bytes", len(payload) * 3 // 4, limits.max_image_bytes, "bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInvalid(param, "the data is not valid base64") from None
    if len(data) > limits.max_image_bytes:
        _over(param, "max_image_bytes", len(data), limits.max_image_bytes, "bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=[FORMATS[mime]])
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageInvalid(param, f"the data is not a {mime} image") from None
    _check_size(image.size, param, limits)
    try:
        image.seek(0)  # a GIF's first frame
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError):
        raise ImageInvalid(param, "the image is truncated or corrupt") from None


def _check_size(size: tuple[int, int], param: str, limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageInvalid(param, f"the image is {width}x{height}: it has no pixels")
    if width * height > limits.max_image_pixels:
        _over(param, "max_image_pixels", width * height, limits.max_image_pixels,
              f"pixels ({width}x{height})")  # fmt: skip
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_image_aspect_ratio:
        _over(param, "max_image_aspect_ratio", round(ratio, 2), limits.max_image_aspect_ratio,
              f"aspect ratio ({width}x{height})")  # fmt: skip


def _over(param: str, limit: str, value: float, maximum: float, unit: str) -> None:
    raise ImageLimitExceeded(param, limit, value, maximum, f"The image's size in {unit}")


class ImageInputs:
    """A served vision model's image side: its own image processor and placeholder."""

    def __init__(self, processor: Any, image_token_id: int, merge: int) -> None:
        self._processor = processor
        self.image_token_id = image_token_id
        self._merge = merge

    @classmethod
    def from_snapshot(cls, path: Path, model_type: str | None) -> ImageInputs | None:
        """The image side of the snapshot at `path`; None for a model served as text."""
        config_file, processor_file = path / "config.json", path / "preprocessor_config.json"
        if model_type not in VISION_FAMILIES or not processor_file.is_file():
            return None
        from transformers import AutoImageProcessor

        config = json.loads(config_file.read_text())
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        merge = int(config.get("vision_config", {}).get("spatial_merge_size", 2))
        return cls(processor, int(config["image_token_id"]), merge)

    def prompt_inputs(
        self,
        messages: Sequence[Mapping[str, Any]],
        token_ids: Sequence[int],
        limits: ImageLimits,
    ) -> tuple[list[int], dict[str, RawTensor]]:
        """The prompt with every image placeholder expanded to its image's token count,
        and the `Generate.inputs` tensors ({} when the messages have no image)."""
        parts = image_parts(messages)
        if not parts:
            return list(token_ids), {}
        if len(parts) > limits.max_images_per_request:
            raise ImageLimitExceeded(
                parts[limits.max_images_per_request][0], "max_images_per_request",
                len(parts), limits.max_images_per_request, "The number of images",
            )  # fmt: skip
        images = [decode_image(uri, path, limits) for path, uri in parts]
        out = self._processor(images=images, return_tensors="np")
        grid = out["image_grid_thw"].astype("int64", copy=False)
        counts = [int(math.prod(row)) // self._merge**2 for row in grid.tolist()]
        expanded = self._expand(token_ids, counts)
        pixels = out["pixel_values"].astype("float32", copy=False)
        if pixels.nbytes > MAX_PIXEL_BYTES:
            raise ImageLimitExceeded(
                "messages", "pixel_bytes", pixels.nbytes, MAX_PIXEL_BYTES,
                "The request's images after the model's preprocessing, in bytes of pixel "
                "values (one generate frame carries them: send fewer or smaller images)",
                key=False,
            )  # fmt: skip
        inputs = {"pixel_values": _raw(pixels, "float32"), "image_grid_thw": _raw(grid, "int64")}
        return expanded, inputs

    def _expand(self, token_ids: Sequence[int], counts: list[int]) -> list[int]:
        placed = sum(t == self.image_token_id for t in token_ids)
        if placed != len(counts):
            raise InvalidParameter(
                "messages",
                f"the chat template placed {placed} image placeholders for {len(counts)} "
                "images (an image in a message the template does not render, or "
                "placeholder text in a message)",
            )
        expanded: list[int] = []
        remaining = iter(counts)
        for token in token_ids:
            if token == self.image_token_id:
                expanded.extend([token] * next(remaining))
            else:
                expanded.append(token)
        return expanded


def _raw(array: Any, dtype: str) -> RawTensor:
    import numpy

    array = numpy.ascontiguousarray(array)
    return RawTensor(dtype, array.shape, memoryview(array).cast("B"))
