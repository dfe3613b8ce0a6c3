"""BigSleep's loss, per image: CLIP similarity + latent regulariser + class sharpness.

Every function takes a leading batch dimension and returns one loss per image, so that images optimised
together in one batch each get exactly the gradient they would get alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIMILARITY_WEIGHT = 100.0
CLASS_SHARPNESS_WEIGHT = 50.0


def similarity_loss(
    image_embeddings: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, positive_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """-100 x mean cosine to each positive target, +100 x mean cosine to each negative one, summed over targets.

    image_embeddings: (crops, d) of one image; positive (p, d), negative (q, d). Returns a scalar. Each mean is over
    the image's crops. `positive_weights` (p,) scales each positive target's term: 1 for a text prompt, an image
    prompt's weight for a picture's embedding (so a picture of weight 1 pulls exactly as one text prompt does);
    None: all 1. (BigSleep averages a picture's embedding with the text's into one target; a weighted sum of
    cosines keeps each target's pull separate and lets a picture stand alone.)
    """
    def pull(targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        if targets.shape[0] == 0:
            return image_embeddings.new_zeros(())
        cosines = F.cosine_similarity(targets[:, None, :], image_embeddings[None, :, :], dim=-1).mean(dim=1)
        return (cosines if weights is None else cosines * weights).sum()

    return SIMILARITY_WEIGHT * (pull(negative, None) - pull(positive, positive_weights))


def latent_loss(z: torch.Tensor) -> torch.Tensor:
    """Keep each z row looking like a standard normal sample. z: (batch, rows, 128) -> (batch,)."""
    row_means = z.mean(dim=-1)
    loss = (1 - z.std(dim=-1)).abs().mean(dim=-1) + row_means.abs().mean(dim=-1)
    loss = loss + 4 * torch.clamp(z.square().mean(dim=(-2, -1)), min=1.0)
    deviations = z - row_means[..., None]
    zscores = deviations / deviations.square().mean(dim=-1, keepdim=True).sqrt()
    skew = zscores.pow(3).mean(dim=-1)
    excess_kurtosis = zscores.pow(4).mean(dim=-1) - 3.0
    return loss + (skew.abs() + excess_kurtosis.abs()).mean(dim=-1)


def class_loss(classes: torch.Tensor) -> torch.Tensor:
    """Push each row toward one class: all activations but the largest should be near zero. (batch, rows, C) -> (batch,).

    Activations are non-negative, so "all but the largest" are the C - 1 smallest squares: the sum of all squares less
    the largest. The same value and gradient as squaring the C - 1 smallest picked by a top-k (as the reference
    does), without sorting 1,000 values per row; the largest's gradient cancels to exactly zero.
    """
    squares = (CLASS_SHARPNESS_WEIGHT * classes).square()
    all_but_largest = squares.sum(dim=-1) - squares.amax(dim=-1)
    return all_but_largest.mean(dim=-1) / (classes.shape[-1] - 1)
