"""Inline images in the parent: every supported format decodes, each refusal is precise.

Pure functions over small images made here with Pillow; the whole path through a
real neuron and gateway is tests/conformance/test_vision.py.
"""

from __future__ import annotations

import base64
import io

import pytest

from neuron.text.errors import ImageInvalid, ImageLimitExceeded
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
