"""A faithful re-implementation of the reference BigSleep step, to measure ours against.

Written from the reference notes (shared/reference/bigsleep.md), not from its code: fp32 everywhere, model
weights left trainable (so autograd also computes weight gradients nobody uses), spectral norm recomputed on
every forward, BigGAN-deep's last convolution at full width, one slice-and-resize per cutout, and the loss
terms written the way the notes describe them. It draws its own crop positions, the reference's way, from a
generator seeded like the engine's: the two steps see the same crops only if both draw them the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_pretrained_biggan.model import GenBlock

from generator.clip_model import CLIP_MEAN, CLIP_STD


def reference_render(biggan, z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """One image (1, 3, H, W) in [0, 1]: row 0 feeds the input linear, row i block i; truncation 1."""
    generator = biggan.generator
    conditions = torch.cat((z, biggan.embeddings(classes)), dim=1)
    x = generator.gen_z(conditions[0].unsqueeze(0))
    x = x.view(-1, 4, 4, 16 * generator.config.channel_width).permute(0, 3, 1, 2).contiguous()
    row = 1
    for layer in generator.layers:
        if isinstance(layer, GenBlock):
            x = layer(x, conditions[row].unsqueeze(0), 1.0)
            row += 1
        else:
            x = layer(x)
    x = generator.relu(generator.bn(x, 1.0))
    x = generator.conv_to_rgb(x)[:, :3]
    return (torch.tanh(x) + 1) / 2


def reference_crop_boxes(width: int, cutouts: int, rng: torch.Generator) -> list[tuple[int, int, int]]:
    """(top, left, side) per cutout as BigSleep picks them: side = int(width * clip(N(0.8, 0.3), 0.5, 0.95)),
    then a row and a column offset each uniform on the whole numbers 0 ... width - side, both ends included
    (the reference's randint).

    The reference takes its numbers from torch's and Python's global generators; these come from `rng`, in the
    order the engine takes its own (every cutout's normal draw, then every row's uniform draw, then every
    column's; uniforms in float64). That order is all the two share: turning the numbers into boxes is written
    here on its own, so that a difference in how the engine does it shows up as different crops.
    """
    normal_draws = torch.randn(cutouts, generator=rng)
    row_draws = torch.rand(cutouts, generator=rng, dtype=torch.float64).tolist()
    column_draws = torch.rand(cutouts, generator=rng, dtype=torch.float64).tolist()
    boxes = []
    for normal_draw, row_draw, column_draw in zip(normal_draws, row_draws, column_draws):
        side = int(width * (normal_draw * 0.3 + 0.8).clip(0.5, 0.95))  # float32, as the reference computes it
        offsets = width - side + 1  # how many whole-pixel positions a side-long crop has
        boxes.append((int(row_draw * offsets), int(column_draw * offsets), side))
    return boxes


def reference_losses(biggan, clip, z, class_logits, crop_rng: torch.Generator, cutouts: int, positive, negative):
    """(similarity, latent, class) losses of the reference formulation for one image; crops drawn from `crop_rng`."""
    classes = torch.sigmoid(class_logits)
    image = reference_render(biggan, z, classes)
    input_size = clip.visual.input_resolution  # 224 for ViT-B/32
    pieces = []
    for top, left, side in reference_crop_boxes(image.shape[-1], cutouts, crop_rng):
        piece = image[:, :, top : top + side, left : left + side]
        pieces.append(F.interpolate(piece, (input_size, input_size), mode="nearest"))
    crops = torch.cat(pieces)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1).to(crops)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1).to(crops)
    image_embeddings = clip.encode_image((crops - mean) / std)

    rows = z.shape[0]
    latent = (1 - torch.std(z, dim=1)).abs().mean() + torch.mean(z, dim=1).abs().mean()
    latent = latent + 4 * torch.max(torch.square(z).mean(), torch.tensor(1.0))
    for row in z:
        deviations = row - row.mean()
        zscores = deviations / deviations.pow(2).mean().pow(0.5)
        latent = latent + zscores.pow(4).mean().sub(3.0).abs() / rows + zscores.pow(3).mean().abs() / rows
    class_term = ((50 * torch.topk(classes, largest=False, dim=1, k=999)[0]) ** 2).mean()
    similarities = [-100 * torch.cosine_similarity(text, image_embeddings, dim=-1).mean() for text in positive]
    similarities += [100 * torch.cosine_similarity(text, image_embeddings, dim=-1).mean() for text in negative]
    return sum(similarities), latent, class_term
