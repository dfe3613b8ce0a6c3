"""CLIP's image tower as BigSleep runs it: clip.model.VisionTransformer's computation, arranged for speed.

The same weights and the same arithmetic as CLIP's own forward; only the order of some sums differs (float
rounding). What is arranged differently, and why:

- The patch embedding (a convolution whose stride is its kernel) is one matrix product on the image cut into
  patches. torch's convolution backward for that shape ran 8x slower than the same product (mkldnn, 2-core AVX2).
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
    tokens = visual.ln_pre(embed_patches(visual, images.to(visual.conv1.weight.dtype)))
    *leading_blocks, last_block = visual.transformer.resblocks
    for block in leading_blocks:
        tokens = tokens + attention(block.attn, block.ln_1(tokens))
        tokens = tokens + block.mlp(block.ln_2(tokens))
    summary = tokens[:, :1] + attention(last_block.attn, last_block.ln_1(tokens), class_token_only=True)
    summary = summary + last_block.mlp(last_block.ln_2(summary))
    return (visual.ln_post(summary[:, 0]) @ visual.proj).float()


def embed_patches(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Tokens (n, 1 + grid^2, width): the class token, then each patch's embedding, plus positions."""
    count, channels, height, width = images.shape
    patch = visual.conv1.kernel_size[0]
    grid = height // patch
    if height != width or grid * patch != height:
        raise ValueError(f"CLIP takes square images of a multiple of {patch} pixels, not {height}x{width}")
    # (n, c, gy, py, gx, px) -> (n, gy, gx, c, py, px): each row is one patch in the convolution weight's order.
    patches = images.reshape(count, channels, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    filters = visual.conv1.weight.reshape(visual.conv1.out_channels, -1)
    embedded = (patches.reshape(count * grid * grid, -1) @ filters.t()).view(count, grid * grid, -1)
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
