"""Our loaders against the libraries' own, on files written the way the published weights are.

BigGAN-deep's `pytorch_model.bin` as pytorch-pretrained-biggan's converter saved it (torch 1.x: the legacy pickle
format, a state dict with each spectral norm's weight_orig, weight_u and weight_v); CLIP's `ViT-B-32.pt` as OpenAI
published it (a traced TorchScript archive, fp16 matrix weights, integer buffers beside them). On the same files,
our prepared networks must compute what `BigGAN.from_pretrained(folder)` and `clip.load(path)` compute.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from pytorch_pretrained_biggan import BigGAN, BigGANConfig

from generator import biggan as biggan_ops
from generator import clip_model
from generator.models import load_biggan, write_random_weights

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip
    from clip.model import CLIP

CPU = torch.device("cpu")
ARCHIVE_BUFFERS = {"input_resolution", "context_length", "vocab_size"}
PROMPTS = ["a bowl of cherries", "Crème brûlée on a café table, 1920s photo", "a|b", "ünïcödé 🌋 volcano at night"]


@pytest.fixture(scope="module", params=["tiny", pytest.param("full", marks=pytest.mark.slow)])
def published_format(request, tmp_path_factory) -> tuple[str, Path]:
    """(width, folder) with BigGAN-deep-128 and CLIP written in the published formats."""
    folder = tmp_path_factory.mktemp(f"published-{request.param}")
    write_random_weights(folder, [128], request.param)
    return request.param, folder


def test_biggan_file_is_a_legacy_pickle_with_the_converters_spectral_norm_buffers(published_format):
    _, folder = published_format
    path = folder / "biggan-deep-128/pytorch_model.bin"
    assert not zipfile.is_zipfile(path), "torch 1.x wrote the legacy format, not a zip archive"
    with path.open("rb") as file:
        assert pickle.load(file) == 0x1950A86A20F9469CFC6C  # the legacy format's magic number comes first
    state = torch.load(path, map_location="cpu", weights_only=True)
    normed = [key.removesuffix(".weight_orig") for key in state if key.endswith(".weight_orig")]
    # Every linear, convolution and batch-norm projection of the generator.
    library_model = BigGAN(BigGANConfig.from_json_file(str(path.parent / "config.json")))
    assert sorted(normed) == sorted(name for name, module in library_model.named_modules() if hasattr(module, "weight_orig"))
    assert len(normed) > 70
    for module in normed:
        weight = state[f"{module}.weight_orig"]
        # The converter's shapes: u has one entry per output, v one per input (times the kernel's area).
        assert state[f"{module}.weight_u"].shape == (weight.shape[0],)
        assert state[f"{module}.weight_v"].shape == (weight[0].numel(),)
        assert f"{module}.weight" not in state
        assert state._metadata[module]["spectral_norm"] == {"weight.version": 1}


def test_our_biggan_renders_what_the_packages_own_loader_renders(published_format):
    _, folder = published_format
    theirs = BigGAN.from_pretrained(str(folder / "biggan-deep-128")).eval()  # BigSleep runs it in eval mode
    ours = biggan_ops.prepare_for_inference(load_biggan(folder / "biggan-deep-128"))
    rng = torch.Generator().manual_seed(4)
    z = torch.randn(2, 128, generator=rng)
    classes = torch.sigmoid(torch.randn(2, 1000, generator=rng) * 0.3 - 3.9)
    rows = biggan_ops.latent_rows(ours.config)
    with torch.no_grad():
        expected = (theirs(z, classes, 1.0) + 1) / 2
        # The package feeds one condition vector to every block; ours takes one per block: give each the same.
        rendered = biggan_ops.render(ours, z[:, None].expand(-1, rows, -1), classes[:, None].expand(-1, rows, -1))
    assert expected.shape == rendered.shape == (2, 3, 128, 128)
    # Both fp32 from the same tensors, the weights divided by the same sigma (once for ours, on every forward for
    # theirs); only some kernels' summation order differs (ours keeps 3 filters of the last convolution, and
    # conditions each block from its own row). That is rounding: at real width each of the two is about 4e-5
    # from the float64 answer (measured), and 1e-4 is a fortieth of one level of an 8-bit pixel. Any wrong
    # weight, vector or statistic moves pixels by far more.
    torch.testing.assert_close(rendered, expected, rtol=0, atol=1e-4)


def test_clip_file_is_a_torchscript_archive_with_openais_names(published_format):
    width, folder = published_format
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of TorchScript; OpenAI's file is one all the same
        archive = torch.jit.load(str(folder / "clip/ViT-B-32.pt"), map_location="cpu")
    state = archive.state_dict()
    architecture = clip_model.random_clip(width)
    assert set(state) == set(architecture.state_dict()) | ARCHIVE_BUFFERS
    assert int(state["input_resolution"]) == clip_model.input_resolution(architecture) == {"tiny": 64, "full": 224}[width]
    assert int(state["context_length"]) == 77 and int(state["vocab_size"]) == 49408
    assert state["visual.conv1.weight"].dtype == state["text_projection"].dtype == torch.float16
    assert state["visual.transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
    assert hasattr(archive, "encode_image") and hasattr(archive, "encode_text")


def test_our_clip_computes_what_clip_load_computes(published_format):
    _, folder = published_format
    path = folder / "clip/ViT-B-32.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, preprocess = clip.load(str(path), device="cpu", jit=False)
        archived, _ = clip.load(str(path), device="cpu", jit=True)  # the archive's own traced code
    assert isinstance(theirs, CLIP)
    ours = clip_model.prepare_for_inference(clip_model.load_clip(path), CPU, torch.float32)
    normalize = preprocess.transforms[-1]  # clip's own Normalize, the last step of its preprocessing
    size = clip_model.input_resolution(ours)
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    tokens = clip.tokenize(PROMPTS)
    with torch.no_grad():
        expected_images = theirs.encode_image(normalize(images)).float()
        expected_texts = theirs.encode_text(tokens).float()
        traced_images = archived.encode_image(normalize(images)).float()
        ours_images = clip_model.encode_images(ours, images)
    ours_texts = clip_model.encode_texts(ours, PROMPTS, CPU)
    # All fp32 on the same weights. Ours computes QuickGELU as SiLU with the factor 1.702 moved into the weights
    # around it, and the image tower arranged for speed (generator.clip_vision): that changes only the rounding
    # (measured 1.2e-6 at toy width, 2.4e-6 through the real ViT-B/32, on image and text features up to 3.5).
    # Text runs clip's own code otherwise, on our tokenizer's ids; a token told apart differently would move the
    # features by far more than the tolerance.
    torch.testing.assert_close(ours_images, expected_images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_texts, expected_texts, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(traced_images, expected_images, rtol=1e-4, atol=1e-5)
