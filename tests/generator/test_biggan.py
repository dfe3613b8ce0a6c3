"""Our BigGAN-deep preparation changes no output: it only removes work."""

from __future__ import annotations

import copy

import torch

from benchmarks.reference_step import reference_render
from generator import biggan as biggan_ops


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
