"""BigGAN-deep as BigSleep drives it: one (z, class) row per generator block, frozen and trimmed for speed.

The module classes come from pytorch-pretrained-biggan; this file only adds the per-block conditioning that
BigSleep needs (the library feeds one condition vector to every block) and a one-off preparation that removes
work a frozen generator does not need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_pretrained_biggan import BigGAN, BigGANConfig
from pytorch_pretrained_biggan.model import BigGANBatchNorm, GenBlock

from generator import biggan_layers as layers

# BigSleep renders at truncation 1.0, which selects the last of BigGAN's pre-computed batch-norm statistics.
TRUNCATION = 1.0
Z_DIM = 128
NUM_CLASSES = 1000


def latent_rows(config: BigGANConfig) -> int:
    """Rows of (z, class) latents: one for the input linear layer and one per generator block."""
    return len(config.layers) + 1


def render(biggan: BigGAN, z: torch.Tensor, classes: torch.Tensor, library_layers: bool = False) -> torch.Tensor:
    """Images in [0, 1], shape (batch, 3, size, size), from z (batch, rows, 128) and classes (batch, rows, 1000).

    Row 0 conditions the input linear layer, row i the i-th generator block (the attention layer takes none).
    The layers run as generator.biggan_layers computes them; `library_layers` calls each layer's own forward
    instead (for hooks on the library's batch norms).
    """
    generator = biggan.generator
    class_embeddings = biggan.embeddings(classes)
    conditions = torch.cat((z, class_embeddings), dim=-1)
    features = generator.gen_z(conditions[:, 0])
    # The weights come from TensorFlow, whose feature maps are channels-last.
    features = features.view(-1, 4, 4, 16 * generator.config.channel_width).permute(0, 3, 1, 2)
    block_row = 1
    for layer in generator.layers:
        if isinstance(layer, GenBlock):
            condition = conditions[:, block_row]
            if library_layers:
                features = layer(features, condition, TRUNCATION)
            else:
                features = layers.gen_block(layer, features, condition)
            block_row += 1
        else:
            features = layer(features) if library_layers else layers.self_attention(layer, features)
    if library_layers:
        rgb = generator.conv_to_rgb(generator.relu(generator.bn(features, TRUNCATION)))[:, :3]
        return (torch.tanh(rgb) + 1) / 2
    features = torch.addcmul(generator.output_norm_offset, features, generator.output_norm_multiplier).relu_()
    # (tanh(x) + 1) / 2 is sigmoid(2x), and prepare_for_inference doubled conv_to_rgb: one operation, not three.
    return torch.sigmoid(generator.conv_to_rgb(features))


def prepare_for_inference(biggan: BigGAN) -> BigGAN:
    """Freeze the generator and drop work that frozen weights make pointless. Outputs stay the same.

    - Spectral norm divides every weight by its largest singular value on each forward; with frozen weights that
      quotient never changes, so it is computed once here (exactly as an eval-mode forward would).
    - The last convolution computes `channel_width` channels at full resolution and the model keeps 3 of them;
      keep only those 3 filters (at 512 px that alone saves about 75 GFLOP per image), doubled, so that the image
      is the sigmoid of its output.
    - Each block's batch norms at truncation 1 are affine in its condition: one matrix for all of them
      (biggan_layers.fold_batch_norms), and the last batch norm is one multiply-add.
    - An up-sampling block's nearest up-sampling and 3 x 3 convolution are one transposed convolution
      (biggan_layers.fold_upsampling).
    """
    biggan.eval()
    for module in list(biggan.modules()):
        for hook in list(module._forward_pre_hooks.values()):
            if type(hook).__name__ == "SpectralNorm":
                torch.nn.utils.remove_spectral_norm(module, name=hook.name)
    generator = biggan.generator
    generator.conv_to_rgb = _keep_output_channels(generator.conv_to_rgb, 3)
    for parameter in biggan.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        generator.conv_to_rgb.weight.mul_(2)
        generator.conv_to_rgb.bias.mul_(2)
        for layer in generator.layers:
            if isinstance(layer, GenBlock):
                layers.fold_batch_norms(layer, TRUNCATION)
                if layer.up_sample:
                    layers.fold_upsampling(layer)
        multiplier, offset = layers.fold_output_norm(generator.bn, TRUNCATION)
    # Not persistent: derived from the weights (and the truncation), never part of a checkpoint.
    generator.register_buffer("output_norm_multiplier", multiplier, persistent=False)
    generator.register_buffer("output_norm_offset", offset, persistent=False)
    return biggan


def _keep_output_channels(conv: torch.nn.Conv2d, channels: int) -> torch.nn.Conv2d:
    trimmed = torch.nn.Conv2d(
        conv.in_channels,
        channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        trimmed.weight.copy_(conv.weight[:channels])
        if conv.bias is not None:
            trimmed.bias.copy_(conv.bias[:channels])
    return trimmed


# ---- random weights with sane statistics (tiny preset, tests and benchmarks) ----------------------------


PUBLISHED_ATTENTION_RESOLUTION = 64


def config_for_size(
    size: int,
    channel_width: int = 128,
    attention_resolution: int = PUBLISHED_ATTENTION_RESOLUTION,
    two_blocks_per_resolution: bool = True,
) -> BigGANConfig:
    """The published BigGAN-deep layout for 128, 256 or 512 px: 128 channels a width unit, self-attention over the
    64 x 64 feature map, two blocks per resolution (one keeps the map's size, the next doubles it).

    A small channel_width, a coarser attention_resolution and one block per resolution give a toy model of the same
    modules: without `two_blocks_per_resolution` only the 4 x 4 map keeps its block that does not up-sample, so
    every kind of block still runs (one that keeps the size, ones that double it with and without halving the
    channels) and the image is as large."""
    blocks = [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8)]
    if size >= 256:
        blocks += [(True, 8, 8), (False, 8, 8)]
    blocks += [(True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)]
    if size >= 512:
        blocks += [(False, 1, 1), (True, 1, 1)]
    if not two_blocks_per_resolution:
        blocks = blocks[:1] + [block for block in blocks if block[0]]
    if size not in (128, 256, 512):
        raise ValueError(f"BigGAN-deep comes in 128, 256 and 512 px, not {size}")
    return BigGANConfig(
        output_dim=size,
        z_dim=Z_DIM,
        class_embed_dim=Z_DIM,
        channel_width=channel_width,
        num_classes=NUM_CLASSES,
        layers=blocks,
        attention_layer_position=_first_block_at(blocks, attention_resolution),
        eps=1e-4,
        n_stats=51,
    )


def _first_block_at(blocks: list[tuple[bool, int, int]], resolution: int) -> int:
    """The index of the first block whose input is `resolution` pixels square (the map starts 4 x 4; each block
    with up_sample doubles it)."""
    side = 4
    for index, (up_sample, _, _) in enumerate(blocks):
        if side == resolution:
            return index
        side *= 2 if up_sample else 1
    raise ValueError(f"no block of this BigGAN-deep takes a {resolution} x {resolution} map")


def random_biggan(config: BigGANConfig, seed: int = 0) -> BigGAN:
    """A BigGAN-deep with random weights that renders finite images.

    Fresh spectral-norm vectors are random, so singular values are badly estimated, and the batch-norm
    statistics are zeros and ones while the activations are nothing like that: through a dozen residual blocks
    the activations overflow into NaN. Converge the power iteration, then set every batch norm's statistics
    to what it actually sees for typical BigSleep latents, one layer after the other, and finally scale the
    output so that tanh is not saturated (a white or black square would make a poor test image).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BigGAN(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_orig"):
                _converge_spectral_norm(module)
            if hasattr(module, "gamma"):
                module.gamma.fill_(0.1)
        # The library leaves the unconditional batch norm's affine parameters uninitialised memory.
        model.generator.bn.weight.fill_(1.0)
        model.generator.bn.bias.zero_()
        samples = _typical_latents(model.config, seed)
        _calibrate_batch_norms(model, samples)
        _centre_output(model, samples)
    return model


def _converge_spectral_norm(module: torch.nn.Module, iterations: int = 30) -> None:
    weight = module.weight_orig.reshape(module.weight_orig.shape[0], -1)
    u, v = module.weight_u, module.weight_v
    for _ in range(iterations):
        v.copy_(F.normalize(weight.t() @ u, dim=0, eps=1e-12))
        u.copy_(F.normalize(weight @ v, dim=0, eps=1e-12))


def _typical_latents(config: BigGANConfig, seed: int, samples: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    rows = latent_rows(config)
    z = torch.randn(samples, rows, Z_DIM, generator=rng)
    classes = torch.sigmoid(torch.randn(samples, rows, NUM_CLASSES, generator=rng) * 0.3 - 3.9)
    return z, classes


def _calibrate_batch_norms(model: BigGAN, samples: tuple[torch.Tensor, torch.Tensor]) -> None:
    def use_observed_statistics(module: BigGANBatchNorm, inputs):
        features = inputs[0]
        module.running_means.copy_(features.mean(dim=(0, 2, 3)).expand_as(module.running_means))
        module.running_vars.copy_(features.var(dim=(0, 2, 3)).expand_as(module.running_vars))

    hooks = [m.register_forward_pre_hook(use_observed_statistics) for m in model.modules() if isinstance(m, BigGANBatchNorm)]
    try:
        render(model, *samples, library_layers=True)
    finally:
        for hook in hooks:
            hook.remove()


def _centre_output(model: BigGAN, samples: tuple[torch.Tensor, torch.Tensor], target_std: float = 0.7) -> None:
    """Scale the last batch norm and shift the RGB bias so pre-tanh colours have mean 0 and a moderate spread."""
    observed: list[torch.Tensor] = []
    conv_to_rgb = model.generator.conv_to_rgb
    hook = conv_to_rgb.register_forward_hook(lambda module, inputs, output: observed.append(output[:, :3]))
    try:
        render(model, *samples, library_layers=True)
        scale = target_std / observed[-1].std().clamp(min=1e-6)
        model.generator.bn.weight.mul_(scale)
        model.generator.bn.bias.mul_(scale)
        render(model, *samples, library_layers=True)
        conv_to_rgb.bias[:3].sub_(observed[-1].mean(dim=(0, 2, 3)))
    finally:
        hook.remove()
