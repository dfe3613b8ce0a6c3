"""Random square crops of the generated image, resized to CLIP's input, from a seeded generator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

CROP_FRACTION_MEAN = 0.8
CROP_FRACTION_STD = 0.3
CROP_FRACTION_RANGE = (0.5, 0.95)
# center_bias: offsets' standard deviation is the middle position divided by this (BigSleep's center_focus).
CENTER_FOCUS = 2.0


@dataclass(frozen=True)
class CropBoxes:
    """Squares inside an image: top-left corners and side lengths in pixels, one entry per crop."""

    top: torch.Tensor
    left: torch.Tensor
    side: torch.Tensor

    def __len__(self) -> int:
        return len(self.side)


def sample_crop_boxes(image_size: int, count: int, rng: torch.Generator, center_bias: bool = False) -> CropBoxes:
    """Sides of size x clip(N(0.8, 0.3), 0.5, 0.95) pixels at uniformly random whole-pixel offsets.

    Each offset is uniform on 0 ... size - side, both ends included (as BigSleep's randint draws it), so crops
    reach the last row and column. The uniform draws are float64: their product with the count of positions
    never rounds up to a position past the end.

    `center_bias` (BigSleep's option): each offset is drawn from a normal around the middle position instead, with
    a standard deviation of a quarter of the last position; one that falls outside the image is drawn uniformly.
    """
    fractions = (torch.randn(count, generator=rng) * CROP_FRACTION_STD + CROP_FRACTION_MEAN).clamp(*CROP_FRACTION_RANGE)
    sides = (image_size * fractions).long()
    positions = image_size - sides + 1
    if center_bias:
        return CropBoxes(_centre_biased_offsets(positions, rng), _centre_biased_offsets(positions, rng), sides)
    top = _uniform_offsets(positions, rng)
    left = _uniform_offsets(positions, rng)
    return CropBoxes(top, left, sides)


def _uniform_offsets(positions: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    return (torch.rand(len(positions), generator=rng, dtype=torch.float64) * positions).long()


def _centre_biased_offsets(positions: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    last = (positions - 1).double()
    middle = last / 2
    # Truncated toward zero as BigSleep's int() does: -0.5 becomes 0, inside the image.
    drawn = (torch.randn(len(positions), generator=rng, dtype=torch.float64) * middle / CENTER_FOCUS + middle).long()
    outside = (drawn < 0) | (drawn > last)
    return torch.where(outside, _uniform_offsets(positions, rng), drawn)


@lru_cache(maxsize=1024)
def _nearest_source_pixels(side: int, output_size: int) -> torch.Tensor:
    # Ask torch's own nearest-neighbour resize which source pixel feeds each output pixel, so a gather gives
    # bit-identical crops to resizing each one with F.interpolate(mode="nearest").
    positions = torch.arange(side, dtype=torch.float32).view(1, 1, side)
    return F.interpolate(positions, size=output_size, mode="nearest").view(output_size).long()


def cut_into_patches(images: torch.Tensor, boxes: Sequence[CropBoxes], output_size: int, patch_size: int) -> torch.Tensor:
    """Each image's crops, resized to output_size with nearest neighbours and cut into CLIP's patch_size squares:
    (3, crops, patches, patch_size^2), crops in order (all of image 0's boxes, then image 1's, ...), patches row by
    row, the pixels of a patch row by row. images: (batch, 3, H, W); boxes: one CropBoxes per image.

    One index_select over the batch's pixels, channel by channel, gathers every crop straight into the order CLIP's
    patch embedding multiplies (clip_vision.embed_patches): neither the crops nor their patches are copied into
    place afterwards, forward or backward. Its backward (index_add) is deterministic on the CPU, where advanced
    indexing's backward is not.
    """
    batch, channels, height, width = images.shape
    grid = output_size // patch_size
    flat_pixels = []
    for image_index, image_boxes in enumerate(boxes):
        source = torch.stack([_nearest_source_pixels(int(side), output_size) for side in image_boxes.side.tolist()])
        # (crops, grid, patch_size): the source row (or column) of each patch's pixel rows (or columns).
        rows = (image_boxes.top[:, None] + source).view(-1, grid, patch_size)
        columns = (image_boxes.left[:, None] + source).view(-1, grid, patch_size)
        # (crops, patch row, patch column, pixel row, pixel column)
        pixels = rows[:, :, None, :, None] * width + columns[:, None, :, None, :] + image_index * height * width
        flat_pixels.append(pixels.flatten())
    gathered = images.transpose(0, 1).reshape(channels, batch * height * width).index_select(1, torch.cat(flat_pixels).to(images.device))
    return gathered.view(channels, -1, grid * grid, patch_size * patch_size)
