"""Images in a device worker: the vision tower, the embedding splice, multimodal rope.

A `Generate` job for a vision-language model carries, beside its token ids, the
image processor's outputs as CPU tensors (`pixel_values`, `image_grid_thw`); the
parent has already expanded each image's placeholder to its token count.
`VisionModel.prepare` checks them against the prompt and computes the prompt's
multimodal rope (mrope) positions once: three position rows (time, height, width)
that advance over an image by its grid, not by its token count, so every later token
sits `rope_delta` positions off its index. The engine keeps that delta per sequence
and adds it to each decode position; text-only sequences have a delta of 0, which is
why image and text sequences share one decode batch.

The vision tower runs on the sequence's first prefill chunk (`VisionPrompt.chunk_inputs`),
in the worker, and its output (the merged patch embeddings and Qwen3-VL's deepstack
features) is handed to the model's own `forward` as `mm_encoder_outputs`, sliced to
the image tokens that fall in each chunk: the model splices them at the placeholder
positions itself, so chunked prefill computes exactly what one forward over the whole
prompt computes. The encoder output is dropped when the prompt is done.

Supported: Qwen3-VL (`Qwen3VLForConditionalGeneration`), the family whose
`forward` takes `mm_encoder_outputs` and whose base model has `get_rope_index`.
Not for: decoding or resizing images (the parent does that, with the model's own
image processor), nor videos.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from neuron.worker.errors import InvalidRequest

__all__ = ["VISION_FAMILIES", "VisionModel", "VisionPrompt"]

# config.model_type of the families served with images in.
VISION_FAMILIES = frozenset({"qwen3_vl", "qwen3_5"})
_INPUTS = frozenset({"pixel_values", "image_grid_thw"})


class VisionPrompt:
    """One sequence's images: checked inputs, mrope positions, the encoder output once
    computed. Owned by the sequence until its prefill ends."""

    def __init__(self, vision: VisionModel, prompt: torch.Tensor, pixel_values, grid) -> None:
        self._vision = vision
        self._pixel_values = pixel_values
        self._grid = grid
        is_image = prompt == vision.image_token_id
        # Image tokens before each prompt index: where a chunk's slice of embeddings starts.
        self._images_before = torch.cat([torch.zeros(1, dtype=torch.long), is_image.cumsum(0)])
        self.positions, self.rope_delta = vision.positions(prompt, is_image, grid)
        self._features: tuple[torch.Tensor, list[torch.Tensor], type] | None = None

    @property
    def image_tokens(self) -> int:
        return int(self._images_before[-1])

    def chunk_inputs(self, begin: int, end: int, device: torch.device) -> dict[str, object]:
        """forward() arguments for prompt tokens [begin, end): their 4-row position ids
        (text, then mrope) and the image embeddings that land in them."""
        inputs: dict[str, object] = {"position_ids": self.positions[:, :, begin:end].to(device)}
        first, last = int(self._images_before[begin]), int(self._images_before[end])
        if last > first:
            embeds, deepstack, output_type = self._encode(device)
            fields = {"pooler_output": (embeds[first:last],)}
            if deepstack is not None:  # Qwen3-VL's; Qwen3.5 has none
                fields["deepstack_features"] = [(layer[first:last],) for layer in deepstack]
            inputs["mm_encoder_outputs"] = {"image": output_type(**fields)}
        return inputs

    def _encode(self, device: torch.device):
        if self._features is None:
            self._features = self._vision.encode(self._pixel_values, self._grid, device)
            self._pixel_values = None  # the tower's output is all that is needed now
        return self._features


class VisionModel:
    """A loaded vision-language model's image side: checks, positions, the tower."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        config = model.config
        vision = config.vision_config
        self.image_token_id = int(config.image_token_id)
        self._merge = int(vision.spatial_merge_size)
        patch = int(vision.patch_size)
        self._patch_values = int(vision.in_channels) * int(vision.temporal_patch_size) * patch**2

    @classmethod
    def of(cls, model: torch.nn.Module) -> VisionModel | None:
        """The image side of `model`, or None for a model served as text only."""
        config = model.config
        if config.model_type not in VISION_FAMILIES or not hasattr(config, "vision_config"):
            return None
        if not hasattr(getattr(model, "model", None), "get_rope_index"):
            return None  # a checkpoint loaded as its language model alone
        return cls(model)

    def prepare(self, prompt: list[int], inputs: Mapping[str, torch.Tensor]) -> VisionPrompt:
        """Check a sequence's image tensors against its prompt; raise InvalidRequest."""
        if set(inputs) != _INPUTS:
            raise InvalidRequest(
                f"image inputs must be exactly {sorted(_INPUTS)}, got {sorted(inputs)}"
            )
        grid, pixels = inputs["image_grid_thw"], inputs["pixel_values"]
        self._check_grid(grid)
        patches = int(grid.prod(-1).sum())
        if pixels.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise InvalidRequest(f"pixel_values must be floating point, got {pixels.dtype}")
        if tuple(pixels.shape) != (patches, self._patch_values):
            raise InvalidRequest(
                f"pixel_values has shape {list(pixels.shape)}; the image grids need "
                f"[{patches}, {self._patch_values}]"
            )
        ids = torch.tensor(prompt, dtype=torch.long)
        self._check_placeholders(ids, grid)
        return VisionPrompt(self, ids, pixels, grid.to(torch.long))

    def positions(self, prompt: torch.Tensor, is_image: torch.Tensor, grid: torch.Tensor):
        """The prompt's 4-row position ids `[4, 1, length]` (row 0 the plain index, as
        transformers' generate passes them) and its rope delta."""
        mrope, delta = self._model.model.get_rope_index(
            prompt[None], mm_token_type_ids=is_image[None].to(torch.int), image_grid_thw=grid
        )
        text = torch.arange(len(prompt)).view(1, 1, -1)
        return torch.cat([text, mrope]), int(delta.reshape(-1)[0])

    def encode(self, pixel_values: torch.Tensor, grid: torch.Tensor, device: torch.device):
        """Run the vision tower: (merged embeddings, deepstack features, output type)."""
        out = self._model.model.get_image_features(
            pixel_values.to(device), grid.to(device), return_dict=True
        )
        embeds = torch.cat(out.pooler_output)
        layers = getattr(out, "deepstack_features", None)
        deepstack = None if layers is None else [torch.cat(layer) for layer in layers]
        return embeds, deepstack, type(out)

    def _check_grid(self, grid: torch.Tensor) -> None:
        if grid.dtype not in (torch.int32, torch.int64) or grid.ndim != 2 or grid.shape[1] != 3:
            raise InvalidRequest("image_grid_thw must be an integer tensor of shape [images, 3]")
        if grid.shape[0] == 0 or bool((grid <= 0).any()):
            raise InvalidRequest("image_grid_thw must name at least one non-empty image")
        if bool((grid[:, 0] != 1).any()):
            raise InvalidRequest("image_grid_thw: an image has one temporal patch (t = 1)")
        if bool((grid[:, 1:] % self._merge != 0).any()):
            raise InvalidRequest(f"image_grid_thw: h and w must be multiples of {self._merge}")

    def _check_placeholders(self, ids: torch.Tensor, grid: torch.Tensor) -> None:
        """Each image's placeholder run must be exactly its token count, in order."""
        wanted = (grid.prod(-1) // self._merge**2).tolist()
        is_image = (ids == self.image_token_id).to(torch.int8)
        edges = torch.diff(
            is_image,
            prepend=torch.zeros(1, dtype=torch.int8),
            append=torch.zeros(1, dtype=torch.int8),
        )
        starts = (edges == 1).nonzero().flatten()
        ends = (edges == -1).nonzero().flatten()
        runs = (ends - starts).tolist()
        if runs != wanted:
            raise InvalidRequest(
                f"the prompt's image placeholder runs {runs} do not match the images' "
                f"token counts {wanted}"
            )
