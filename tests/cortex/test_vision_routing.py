"""The gateway's image check: which bodies carry images, and which models refuse them."""

from __future__ import annotations

import pytest

from cortex.vision import check_vision, has_images
from protocol.errors import InvalidRequest

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
CHAT = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}, IMAGE]}]}
RESPONSES = {"model": "m", "input": [{"role": "user", "content": [
    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]}  # fmt: skip
TEXT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "input": "hi"}


def test_image_parts_are_found_in_chat_and_responses_bodies():
    assert has_images(CHAT) and has_images(RESPONSES)
    assert not has_images(TEXT) and not has_images({"input": "hi"}) and not has_images([])


@pytest.mark.parametrize("capabilities", [("text", "image"), ("vision",), ()])
def test_vision_models_and_unknown_ones_pass(capabilities):
    check_vision(CHAT, "m", capabilities)


def test_a_text_only_model_is_refused_and_text_passes():
    with pytest.raises(InvalidRequest) as caught:
        check_vision(CHAT, "m", ("text",))
    assert (caught.value.status, caught.value.code) == (400, "vision_unsupported")
    check_vision(TEXT, "m", ("text",))
