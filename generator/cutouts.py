"""Random square crops of the generated image, resized to CLIP's input, from a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

CROP_FRACTION_MEAN = 0.8
CROP_FRACTION_STD = 0.3
CROP_FRACTION_RANGE = (0.5, 0.95)


@dataclass(frozen=True)
class CropBoxes:
    """Squares inside an image: top-left corners and side lengths in pixels, one entry per crop."""

    top: torch.Tensor
    left: torch.Tensor
    side: torch.Tensor

    def __len__(self) -> int:
        return len(self.side)


def sample_crop_boxes(image_size: int, count: int, rng: torch.Generator) -> CropBoxes:
    """Sides of size x clip(N(0.8, 0.3), 0.5, 0.95) pixels at uniformly random whole-pixel offsets.

    Each offset is uniform on 0 ... size - side, both ends included (as BigSleep's randint draws it), so crops
    reach the last row and column. The uniform draws are float64: their product with the count of positions
    never rounds up to a position past the end.
    """
    fractions = (torch.randn(count, generator=rng) * CROP_FRACTION_STD + CROP_FRACTION_MEAN).clamp(*CROP_FRACTION_RANGE)
    sides = (image_size * fractions).long()
    positions = image_size - sides + 1
    top = (torch.rand(count, generator=rng, dtype=torch.float64) * positions).long()
    left = (torch.rand(count, generator=rng, dtype=torch.float64) * positions).long()
    return CropBoxes(top, left, sides)


@lru_cache(maxsize=1024)
def _nearest_source_pixels(side: int, output_size: int) -> torch.Tensor:
    # Ask torch's own nearest-neighbour resize which source pixel feeds each output pixel, so a gather gives
    # bit-identical crops to resizing each one with F.interpolate(mode="nearest").
    positions = torch.arange(side, dtype=torch.float32).view(1, 1, side)
    return F.interpolate(positions, size=output_size, mode="nearest").view(output_size).long()


def cut_and_resize(image: torch.Tensor, boxes: CropBoxes, output_size: int) -> torch.Tensor:
    """Crops (n, 3, output_size, output_size) of one image (3, H, W), resized with nearest neighbours.

    One index_select over the flattened image for all crops, instead of a slice and a resize per crop. Its
    backward (index_add) is deterministic on the CPU, where advanced indexing's backward is not.
    """
    channels, height, width = image.shape
    source = torch.stack([_nearest_source_pixels(int(side), output_size) for side in boxes.side.tolist()])
    rows = boxes.top[:, None] + source
    columns = boxes.left[:, None] + source
    flat_pixels = (rows[:, :, None] * width + columns[:, None, :]).flatten().to(image.device)
    crops = image.reshape(channels, height * width).index_select(1, flat_pixels)
    return crops.view(channels, len(boxes), output_size, output_size).permute(1, 0, 2, 3)
