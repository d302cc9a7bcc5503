"""Inline images in the parent: every supported format decodes, each refusal is precise.

Pure functions over small images made here with Pillow; the whole path through a
real neuron and gateway is tests/conformance/test_vision.py.
"""

from __future__ import annotations

import base64
import io

import pytest

from neuron.text.errors import ImageInvalid, ImageLimitExceeded, InvalidParameter
from neuron.text.images import ImageLimits, decode_image

Image = pytest.importorskip("PIL.Image")
LIMITS = ImageLimits(max_image_bytes=100_000, max_image_pixels=256 * 256,
                     max_images_per_request=2, max_image_aspect_ratio=4)  # fmt: skip
RED, BLUE = (200, 10, 10), (10, 10, 200)


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _encoded(fmt: str, size=(32, 24), color=RED) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_each_format_decodes_to_rgb(fmt, mime):
    image = decode_image(_uri(_encoded(fmt), mime), "p", LIMITS)
    assert (image.mode, image.size) == ("RGB", (32, 24))
    assert all(abs(a - b) < 12 for a, b in zip(image.getpixel((5, 5)), RED, strict=True))


def test_a_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c).convert("P") for c in (RED, BLUE)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    image = decode_image(_uri(out.getvalue(), "image/gif"), "p", LIMITS)
    assert image.mode == "RGB" and image.getpixel((3, 3))[0] > 150  # red, not blue


@pytest.mark.parametrize(
    ("uri", "error", "limit"),
    [
        (_uri(_encoded("PNG"), "image/gif"), ImageInvalid, None),  # the data is not its type
        (_uri(_encoded("PNG"), "image/tiff"), ImageInvalid, None),
        ("data:image/png;base64,%%%", ImageInvalid, None),
        (_uri(_encoded("PNG", (300, 300)), "image/png"), ImageLimitExceeded, "max_image_pixels"),
        (_uri(_encoded("PNG", (200, 20)), "image/png"), ImageLimitExceeded,
         "max_image_aspect_ratio"),
        (_uri(bytes(200_000), "image/png"), ImageLimitExceeded, "max_image_bytes"),
    ],
)  # fmt: skip
def test_refusals_name_the_part_and_the_limit(uri, error, limit):
    with pytest.raises(error) as caught:
        decode_image(uri, "messages[0].content[1]", LIMITS)
    assert (caught.value.status, caught.value.param) == (400, "messages[0].content[1]")
    if limit is not None:
        assert caught.value.extra["limit"] == limit
        assert f"[vision] {limit}" in str(caught.value)


def test_the_models_processor_expands_placeholders_and_bounds_the_frame(
    synth_snapshot, monkeypatch
):
    from neuron.synth import VISION_TOKEN_IDS
    from neuron.text import images

    inputs = images.ImageInputs.from_snapshot(synth_snapshot("qwen3_vl"), "qwen3_vl")
    pad = VISION_TOKEN_IDS["<|image_pad|>"]
    part = {"type": "image_url", "image_url": {"url": _uri(_encoded("PNG", (64, 96)), "image/png")}}
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "x"}]}]
    ids, tensors = inputs.prompt_inputs(messages, [7, pad, 8], LIMITS)
    assert ids == [7, *[pad] * 6, 8]  # 96x64: a 6x4 patch grid, 2x2 merged
    assert tensors["image_grid_thw"].shape == (1, 3)
    assert tensors["pixel_values"].dtype == "float32"
    with pytest.raises(InvalidParameter, match="placed 2 image placeholders for 1"):
        inputs.prompt_inputs(messages, [pad, 7, pad], LIMITS)
    with pytest.raises(ImageLimitExceeded, match="max_images_per_request"):
        inputs.prompt_inputs([{"role": "user", "content": [part] * 3}], [pad] * 3, LIMITS)
    monkeypatch.setattr(images, "MAX_PIXEL_BYTES", 1000)
    with pytest.raises(ImageLimitExceeded, match="generate frame") as caught:
        inputs.prompt_inputs(messages, [7, pad, 8], LIMITS)
    assert caught.value.extra["limit"] == "pixel_bytes"
