"""CLIP's image tower as BigSleep runs it: clip.model.VisionTransformer's computation, arranged for speed.

The same weights and the same arithmetic as CLIP's own forward; only the order of some sums differs (float
rounding). What is arranged differently, and why:

- The patch embedding (a convolution whose stride is its kernel) is a matrix product per colour channel on the
  image cut into patches, summed. torch's convolution backward for that shape ran 8x slower than the same product
  (mkldnn, 2-core AVX2); and per channel, the crops a step takes come gathered straight into that order
  (cutouts.cut_into_patches), never copied into place.
- Tokens stay batch-first, and attention takes its queries, keys and values as views of one projection. CLIP's
  nn.MultiheadAttention transposes and copies them, and its backward zero-fills a buffer three times the
  projection's size for each of the three.
- The last block runs for the class token alone: it is the only token read after it, and it needs the others only
  as keys and values. That skips about 1/12 of the tower's work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def encode(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Embeddings (n, embed_dim) in fp32 of images (n, 3, res, res) at CLIP's input resolution, normalised as CLIP
    was trained (clip_model.normalize_pixels)."""
    return encode_patches(visual, image_patches(images, patch_size(visual)))


def patch_size(visual: nn.Module) -> int:
    """The side of the squares the tower reads an image in (its patch embedding's stride and kernel)."""
    return visual.conv1.kernel_size[0]


def encode_patches(visual: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """Embeddings (n, embed_dim) in fp32 of n images cut into patches as `image_patches` cuts them."""
    tokens = visual.ln_pre(embed_patches(visual, patches.to(visual.conv1.weight.dtype)))
    *leading_blocks, last_block = visual.transformer.resblocks
    for block in leading_blocks:
        tokens = tokens + attention(block.attn, block.ln_1(tokens))
        tokens = tokens + block.mlp(block.ln_2(tokens))
    summary = tokens[:, :1] + attention(last_block.attn, last_block.ln_1(tokens), class_token_only=True)
    summary = summary + last_block.mlp(last_block.ln_2(summary))
    return (visual.ln_post(summary[:, 0]) @ visual.proj).float()


def image_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images (n, 3, res, res) as (3, n, patches, patch_size^2): for each colour channel, each image's patches row by
    row, the pixels of a patch row by row."""
    count, channels, height, width = images.shape
    grid = height // patch_size
    if height != width or grid * patch_size != height:
        raise ValueError(f"CLIP takes square images of a multiple of {patch_size} pixels, not {height}x{width}")
    # (n, c, gy, py, gx, px) -> (c, n, gy, gx, py, px)
    patches = images.reshape(count, channels, grid, patch_size, grid, patch_size).permute(1, 0, 2, 4, 3, 5)
    return patches.reshape(channels, count, grid * grid, patch_size * patch_size)


def embed_patches(visual: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """Tokens (n, 1 + patches, width): the class token, then each patch's embedding, plus positions."""
    channels, count, patch_count, _ = patches.shape
    # The convolution's filters (width, c, py, px) as one (py px, width) matrix per channel.
    filters = visual.conv1.weight.reshape(visual.conv1.out_channels, channels, -1).permute(1, 2, 0)
    embedded = torch.bmm(patches.reshape(channels, count * patch_count, -1), filters).sum(dim=0).view(count, patch_count, -1)
    class_token = visual.class_embedding.to(embedded.dtype).expand(count, 1, -1)
    return torch.cat([class_token, embedded], dim=1) + visual.positional_embedding.to(embedded.dtype)


def attention(module: nn.MultiheadAttention, tokens: torch.Tensor, class_token_only: bool = False) -> torch.Tensor:
    """nn.MultiheadAttention(tokens, tokens, tokens) on batch-first tokens (n, length, width); with
    `class_token_only`, for the first token's query alone (n, 1, width)."""
    count, _, width = tokens.shape
    weight, bias = module.in_proj_weight, module.in_proj_bias
    if class_token_only:
        (queries,) = _split_heads(F.linear(tokens[:, :1], weight[:width], bias[:width]), 1, module.num_heads)
        keys, values = _split_heads(F.linear(tokens, weight[width:], bias[width:]), 2, module.num_heads)
    else:
        queries, keys, values = _split_heads(F.linear(tokens, weight, bias), 3, module.num_heads)
    attended = F.scaled_dot_product_attention(queries, keys, values)  # (n, heads, queries, head width)
    merged = attended.transpose(1, 2).reshape(count, -1, width)
    return F.linear(merged, module.out_proj.weight, module.out_proj.bias)


def _split_heads(projected: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """(n, length, parts * width) -> `parts` views of shape (n, heads, length, width / heads)."""
    count, length, total = projected.shape
    return projected.view(count, length, parts, heads, total // (parts * heads)).permute(2, 0, 3, 1, 4).unbind(0)
