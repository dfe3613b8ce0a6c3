"""BigGAN-deep's layers as BigSleep runs them: pytorch-pretrained-biggan's modules and weights, fewer passes.

The same arithmetic as the library's forward methods, up to the order of float operations:

- Each conditional batch norm, (x - mean) / sqrt(var + eps) * (1 + scale(c)) + offset(c), is one multiply-add per
  pixel, x * a + b, and the ReLU after it works in place. a and b are affine in the block's condition c, so with
  frozen weights and a fixed truncation one matrix product gives a block all eight of them (`fold_batch_norms`,
  once per block when the model is prepared): the library computes them with eight products and a dozen small
  operations per block, forward and backward, whose fixed costs dominate at toy width.
- An up-sampling block doubles its map with nearest neighbours and then convolves it 3 x 3. Each output pixel of
  that pair sees only a 2 x 2 neighbourhood of the small map, with sums of the 3 x 3 weights, so one transposed
  convolution (stride 2, 4 x 4 kernel, `fold_upsampling`) computes it from the small map: 16 products per small
  pixel instead of 36, and no 4x larger copy to build and differentiate (measured on 2 AVX2 cores, forward and
  backward: 128 channels at 64 x 64, 124 to 66 ms; 2 channels at 128 x 128, 4.0 to 1.8 ms).
- Self-attention multiplies its (64 x 64) x (32 x 32) weights per image by the values in the order that leaves
  every product contiguous; the library's order makes autograd copy the transposed weights before the softmax's
  backward (measured: 46 ms to 27 ms forward and backward at toy width on 2 AVX2 cores, 147 to 132 ms at real
  width, same results).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_pretrained_biggan.model import BigGANBatchNorm, GenBlock, SelfAttn


def batch_norm_statistics(norm: BigGANBatchNorm, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-computed (mean, variance) for `truncation`, picked or interpolated as the library does."""
    coef, start = math.modf(truncation / norm.step_size)
    start = int(start)
    if coef == 0.0:
        return norm.running_means[start], norm.running_vars[start]
    mean = norm.running_means[start] * coef + norm.running_means[start + 1] * (1 - coef)
    var = norm.running_vars[start] * coef + norm.running_vars[start + 1] * (1 - coef)
    return mean, var


def fold_batch_norms(block: GenBlock, truncation: float) -> None:
    """Give a frozen block `norm_weight` and `norm_bias`: c @ norm_weight.T + norm_bias is (a0, b0, ..., a3, b3),
    the multiplier and offset of each of its four batch norms for condition c.

    With s = 1 / sqrt(var + eps): a = s * (1 + W_scale c) = (s W_scale) c + s, b = W_offset c - mean * a.
    Computed in float64, stored in the block's dtype.
    """
    weights, biases = [], []
    for norm in (block.bn_0, block.bn_1, block.bn_2, block.bn_3):
        mean, var = (statistic.double() for statistic in batch_norm_statistics(norm, truncation))
        inverse_std = torch.rsqrt(var + norm.eps)
        scale_weight = norm.scale.weight.double() * inverse_std[:, None]
        weights += [scale_weight, norm.offset.weight.double() - mean[:, None] * scale_weight]
        biases += [inverse_std, -mean * inverse_std]
    dtype = block.bn_0.scale.weight.dtype
    # Not persistent: derived from the weights (and the truncation), never part of a checkpoint.
    block.register_buffer("norm_weight", torch.cat(weights).to(dtype), persistent=False)
    block.register_buffer("norm_bias", torch.cat(biases).to(dtype), persistent=False)


def fold_output_norm(norm: BigGANBatchNorm, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's last, unconditional batch norm as (multiplier, offset), each (C, 1, 1): x * a + b. torch's
    batch norm backward also computes gradients for its affine parameters and costs more than the multiply-add."""
    mean, var = (statistic.double() for statistic in batch_norm_statistics(norm, truncation))
    multiplier = norm.weight.double() * torch.rsqrt(var + norm.eps)
    offset = norm.bias.double() - mean * multiplier
    return tuple(value.to(norm.weight.dtype)[:, None, None] for value in (multiplier, offset))


# Which of the 3 x 3 kernel's rows (and columns) feed each row of the 4 x 4 transposed kernel. Output row 2i reads
# small-map rows i - 1 (kernel row 0) and i (rows 1 and 2); output row 2i + 1 reads i (rows 0 and 1) and i + 1
# (row 2). A stride-2 transposed convolution with padding 1 gives output row 2i + k - 1 the weights of its
# kernel row k for input row i, hence this order.
_UPSAMPLED_ROWS = ((0, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 0))


def fold_upsampling(block: GenBlock) -> None:
    """Give a frozen up-sampling block `upsampling_kernel`: conv_1 after a 2x nearest up-sampling, as the kernel of
    one transposed convolution (in, out, 4, 4). Computed in float64, stored in the block's dtype."""
    weight = block.conv_1.weight
    rows = torch.tensor(_UPSAMPLED_ROWS, dtype=torch.float64, device=weight.device)
    kernel = torch.einsum("ka,oiab,lb->iokl", rows, weight.double(), rows)
    block.register_buffer("upsampling_kernel", kernel.to(weight.dtype).contiguous(), persistent=False)


def gen_block(block: GenBlock, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """GenBlock.forward for a block prepared by `fold_batch_norms` (and `fold_upsampling` if it up-samples): a
    bottleneck of four convolutions, each after a conditional batch norm and a ReLU. features (batch, C, H, W),
    condition (batch, dim)."""
    coefficients = torch.addmm(block.norm_bias, condition, block.norm_weight.t())[:, :, None, None]
    sizes = [norm.num_features for norm in (block.bn_0, block.bn_1, block.bn_2, block.bn_3) for _ in "ab"]
    a0, b0, a1, b1, a2, b2, a3, b3 = coefficients.split(sizes, dim=1)
    hidden = block.conv_0(torch.addcmul(b0, features, a0).relu_())
    hidden = torch.addcmul(b1, hidden, a1).relu_()
    if block.up_sample:
        hidden = F.conv_transpose2d(hidden, block.upsampling_kernel, block.conv_1.bias, stride=2, padding=1)
    else:
        hidden = block.conv_1(hidden)
    hidden = block.conv_2(torch.addcmul(b2, hidden, a2).relu_())
    hidden = block.conv_3(torch.addcmul(b3, hidden, a3).relu_())
    if block.drop_channels:
        features = features[:, : features.shape[1] // 2]
    if block.up_sample:
        features = F.interpolate(features, scale_factor=2, mode="nearest")
    return hidden + features


def self_attention(layer: SelfAttn, features: torch.Tensor) -> torch.Tensor:
    """SelfAttn.forward: every pixel attends to the 2x2-max-pooled map (no scaling of the scores)."""
    batch, channels, height, width = features.shape
    queries = layer.snconv1x1_theta(features).flatten(2).transpose(1, 2)  # (batch, pixels, C / 8)
    keys = layer.maxpool(layer.snconv1x1_phi(features)).flatten(2)  # (batch, C / 8, pixels / 4)
    values = layer.maxpool(layer.snconv1x1_g(features)).flatten(2).transpose(1, 2)  # (batch, pixels / 4, C / 2)
    weights = torch.bmm(queries, keys).softmax(dim=-1)  # (batch, pixels, pixels / 4)
    attended = torch.bmm(weights, values).transpose(1, 2).reshape(batch, channels // 2, height, width)
    return features + layer.gamma * layer.snconv1x1_o_conv(attended)
