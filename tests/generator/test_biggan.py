"""Our BigGAN-deep preparation changes no output: it only removes work."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pytorch_pretrained_biggan.model import SelfAttn

from benchmarks.reference_step import reference_render
from generator import biggan as biggan_ops
from generator import biggan_layers
from generator.models import random_biggan_config


def test_prepared_generator_renders_what_the_library_model_renders():
    library_model = biggan_ops.random_biggan(biggan_ops.config_for_size(128, channel_width=8))
    prepared = biggan_ops.prepare_for_inference(copy.deepcopy(library_model))
    rows = biggan_ops.latent_rows(library_model.config)
    z = torch.randn(rows, 128, generator=torch.Generator().manual_seed(0))
    classes = torch.sigmoid(torch.randn(rows, 1000, generator=torch.Generator().manual_seed(1)) * 0.3 - 3.9)
    with torch.no_grad():
        expected = reference_render(library_model, z, classes)
        ours = biggan_ops.render(prepared, z[None], classes[None])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert prepared.generator.conv_to_rgb.out_channels == 3
    assert not any(p.requires_grad for p in prepared.parameters())


def test_random_generator_renders_finite_varied_images_at_every_size():
    for size, rows in ((128, 11), (256, 13), (512, 15)):
        model = biggan_ops.prepare_for_inference(biggan_ops.random_biggan(biggan_ops.config_for_size(size, channel_width=8)))
        assert biggan_ops.latent_rows(model.config) == rows
        z = torch.randn(2, rows, 128)
        classes = torch.sigmoid(torch.randn(2, rows, 1000) * 0.3 - 3.9)
        with torch.no_grad():
            images = biggan_ops.render(model, z, classes)
        assert images.shape == (2, 3, size, size)
        assert torch.isfinite(images).all()
        # neither saturated to one colour nor flat: a usable test picture
        assert 0.05 < images.std().item() and 0.1 < images.mean().item() < 0.9


def test_an_upsampling_block_convolves_the_small_map_as_it_would_the_upsampled_one():
    """biggan_layers.fold_upsampling: one transposed convolution gives conv_1 of the 2x nearest-upsampled map, and the
    same gradient for the small map, edges included (float64, so only the order of sums differs)."""
    model = biggan_ops.prepare_for_inference(biggan_ops.random_biggan(biggan_ops.config_for_size(128, channel_width=8))).double()
    block = next(layer for layer in model.generator.layers if getattr(layer, "up_sample", False))
    biggan_layers.fold_upsampling(block)  # again, from the float64 weights
    small_map = torch.randn(2, block.conv_1.in_channels, 5, 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, block.conv_1.out_channels, 10, 14, dtype=torch.float64)

    expected = block.conv_1(F.interpolate(small_map, scale_factor=2, mode="nearest"))
    (expected_grad,) = torch.autograd.grad(expected, small_map, upstream)
    ours = F.conv_transpose2d(small_map, block.upsampling_kernel, block.conv_1.bias, stride=2, padding=1)
    (our_grad,) = torch.autograd.grad(ours, small_map, upstream)

    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(our_grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_the_tiny_preset_keeps_every_kind_of_block_with_one_per_resolution():
    """The toy layout drops only the second block of each resolution: a block that keeps the map's size, blocks that
    double it with and without halving the channels, and self-attention all still run, and images keep their size."""
    for size in (128, 256, 512):
        published = biggan_ops.config_for_size(size)
        tiny = random_biggan_config(size, "tiny")
        up_samplings = sum(up_sample for up_sample, _, _ in published.layers)
        assert sum(up_sample for up_sample, _, _ in tiny.layers) == up_samplings
        assert len(tiny.layers) == up_samplings + 1 < len(published.layers)
        assert any(not up_sample for up_sample, _, _ in tiny.layers)
        assert any(up_sample and into != out for up_sample, into, out in tiny.layers)
        assert any(up_sample and into == out for up_sample, into, out in tiny.layers)

        model = biggan_ops.prepare_for_inference(biggan_ops.random_biggan(tiny))
        assert any(isinstance(layer, SelfAttn) for layer in model.generator.layers)
        rows = biggan_ops.latent_rows(tiny)
        with torch.no_grad():
            images = biggan_ops.render(model, torch.randn(1, rows, 128), torch.sigmoid(torch.randn(1, rows, 1000) * 0.3 - 3.9))
        assert images.shape == (1, 3, size, size)
        assert torch.isfinite(images).all() and images.std().item() > 0.05
