"""OpenAI CLIP as BigSleep uses it: a frozen judge of how well image crops match the prompts."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from generator import clip_vision
from generator.protocol import DEFAULT_CLIP_MODEL
from generator.tokens import CONTEXT_LENGTH, encode_prompt

with warnings.catch_warnings():
    # clip-anytorch imports pkg_resources only for a version check; its deprecation warning is noise here.
    warnings.simplefilter("ignore")
    import clip
    from clip.model import CLIP, QuickGELU

# CLIP's QuickGELU activation: x * sigmoid(1.702 x).
QUICK_GELU_SCALE = 1.702
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(checkpoint: Path) -> CLIP:
    """Load a CLIP checkpoint (OpenAI's TorchScript archive or a plain state dict) as an fp32 CPU module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _preprocess = clip.load(str(checkpoint), device="cpu", jit=False)
    return model


def prepare_for_inference(model: CLIP, device: torch.device, dtype: torch.dtype) -> CLIP:
    """Freeze CLIP, move it, and store its matrix weights in `dtype`.

    Only the weights of matrix products change precision, as OpenAI's own fp16 conversion does; layer norms
    keep fp32 weights and CLIP's LayerNorm computes in fp32 whatever its input. Frozen weights mean autograd
    computes no weight gradients: only the gradients that flow back to the image.
    """
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    _quick_gelu_as_silu(model)
    if dtype != torch.float32:
        _cast_matrix_weights(model, dtype)
    return model


def _quick_gelu_as_silu(model: CLIP) -> None:
    """Rewrite every c_proj(QuickGELU(c_fc(x))) as c_proj'(SiLU(c_fc'(x))), the same function.

    QuickGELU(h) = h * sigmoid(1.702 h) = SiLU(1.702 h) / 1.702, so c_fc's weights and bias take the factor 1.702
    and c_proj's weights its inverse (float rounding of the weights aside: 6e-8 relative in fp32; done in fp32,
    before any cast to half precision). SiLU is one fused kernel each way; QuickGELU is four passes over the
    largest tensor of each block, forward and backward about a fifth of a step on the CPU.
    """
    for module in model.modules():
        mlp = getattr(module, "mlp", None)
        if isinstance(mlp, nn.Sequential) and isinstance(getattr(mlp, "gelu", None), QuickGELU):
            with torch.no_grad():
                mlp.c_fc.weight.mul_(QUICK_GELU_SCALE)
                mlp.c_fc.bias.mul_(QUICK_GELU_SCALE)
                mlp.c_proj.weight.div_(QUICK_GELU_SCALE)
            mlp.gelu = nn.SiLU()


def _cast_matrix_weights(model: nn.Module, dtype: torch.dtype) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
        if isinstance(module, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k", "bias_v"):
                tensor = getattr(module, name)
                if tensor is not None:
                    tensor.data = tensor.data.to(dtype)
        for name in ("text_projection", "proj"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, torch.Tensor):
                tensor.data = tensor.data.to(dtype)


def input_resolution(model: CLIP) -> int:
    return model.visual.input_resolution


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images (..., 3, H, W) in [0, 1] to the normalised input CLIP was trained on."""
    # (x - mean) / std as one multiply-add: x * (1 / std) + (-mean / std).
    scale = torch.tensor([1 / std for std in CLIP_STD], device=images.device, dtype=images.dtype).view(3, 1, 1)
    offset = torch.tensor([-mean / std for mean, std in zip(CLIP_MEAN, CLIP_STD)], device=images.device, dtype=images.dtype)
    return torch.addcmul(offset.view(3, 1, 1), images, scale)


def encode_images(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """Embeddings (n, embed_dim) in fp32 of images (n, 3, res, res) in [0, 1] (clip_vision.encode on them)."""
    return clip_vision.encode(model.visual, normalize_pixels(images))


def preprocess_picture(picture: Image.Image, resolution: int) -> torch.Tensor:
    """A picture (3, resolution, resolution) in [0, 1] as CLIP's own preprocessing (clip.clip._transform) prepares it
    before normalising: the short side resized to `resolution` with PIL's bicubic filter (the long side rounded
    down, as torchvision rounds it), then the centre square, its offset rounded to the nearest pixel."""
    picture = picture.convert("RGB")
    width, height = picture.size
    short, long = min(width, height), max(width, height)
    long_side = int(resolution * long / short)
    resized_size = (resolution, long_side) if width <= height else (long_side, resolution)
    if resized_size != picture.size:
        picture = picture.resize(resized_size, Image.Resampling.BICUBIC)
    left = int(round((resized_size[0] - resolution) / 2.0))
    top = int(round((resized_size[1] - resolution) / 2.0))
    square = picture.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels.float() / 255


@torch.no_grad()
def encode_pictures(model: CLIP, pictures: list[Image.Image], device: torch.device) -> torch.Tensor:
    """Embeddings (n, embed_dim) in fp32 of whole pictures, prepared as CLIP's preprocessing prepares them."""
    if not pictures:
        return _no_embeddings(model, device)
    resolution = input_resolution(model)
    images = torch.stack([preprocess_picture(picture, resolution) for picture in pictures]).to(device)
    return encode_images(model, images)


@torch.no_grad()
def encode_texts(model: CLIP, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Embeddings (n, embed_dim) in fp32; raises SpecError for a prompt CLIP cannot read whole."""
    if not prompts:
        return _no_embeddings(model, device)
    tokens = torch.zeros(len(prompts), CONTEXT_LENGTH, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids = encode_prompt(prompt)
        tokens[row, : len(ids)] = torch.tensor(ids)
    return model.encode_text(tokens.to(device)).float()


def _no_embeddings(model: CLIP, device: torch.device) -> torch.Tensor:
    return torch.zeros(0, model.text_projection.shape[1], device=device)


# ---- architectures with random weights (tiny preset, tests and benchmarks) ---------------------------------


# The shapes of each CLIP (clip.model.CLIP's arguments, as clip.model.build_model reads them from a checkpoint):
# embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
# context_length, vocab_size, transformer_width, transformer_heads, transformer_layers.
# 'tiny' is the same architecture at toy width, reading 2 x 2 (B/32) or 4 x 4 (B/16, L/14) patches.
_ARCHITECTURES = {
    ("ViT-B/32", "full"): (512, 224, 12, 768, 32, CONTEXT_LENGTH, 49408, 512, 8, 12),
    ("ViT-B/32", "tiny"): (64, 64, 2, 64, 32, CONTEXT_LENGTH, 49408, 64, 1, 2),
    ("ViT-B/16", "full"): (512, 224, 12, 768, 16, CONTEXT_LENGTH, 49408, 512, 8, 12),
    ("ViT-B/16", "tiny"): (64, 64, 2, 64, 16, CONTEXT_LENGTH, 49408, 64, 1, 2),
    ("ViT-L/14", "full"): (768, 224, 24, 1024, 14, CONTEXT_LENGTH, 49408, 768, 12, 12),
    ("ViT-L/14", "tiny"): (64, 56, 2, 64, 14, CONTEXT_LENGTH, 49408, 64, 1, 2),
}


def random_clip(width: str = "tiny", seed: int = 0, architecture: str = DEFAULT_CLIP_MODEL) -> CLIP:
    """A CLIP `architecture` (one of CLIP_MODELS) with random weights: 'full' is the real architecture, 'tiny' the
    same one at toy width (ViT-B/32's reads 64 px images, 2 x 2 patches: crops then cost BigSleep 1/12 of what
    224 px would)."""
    shapes = _ARCHITECTURES[architecture, width]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(*shapes).eval()
    # OpenAI's checkpoints hold these weights in fp16 and clip.load rounds to fp16 whatever it reads; do the
    # same here, so that a random model behaves identically in memory and after a trip through a file.
    _cast_matrix_weights(model, torch.float16)
    return model.float()


def save_torchscript_archive(model: CLIP, path: Path) -> None:
    """Write `model` as OpenAI publishes CLIP (ViT-B-32.pt): a traced TorchScript archive with fp16 matrix weights
    and the integer buffers input_resolution, context_length and vocab_size beside the weights."""
    archived = copy.deepcopy(model).float().eval()
    _cast_matrix_weights(archived, torch.float16)
    input_size = input_resolution(archived)
    del archived.context_length, archived.vocab_size  # plain ints on clip's class; tensors in OpenAI's archives
    archived.register_buffer("input_resolution", torch.tensor(input_size))
    archived.register_buffer("context_length", torch.tensor(archived.positional_embedding.shape[0]))
    archived.register_buffer("vocab_size", torch.tensor(archived.token_embedding.num_embeddings))
    image = torch.zeros(1, 3, input_size, input_size, dtype=torch.float16)
    ids = encode_prompt("a photo")
    text = torch.zeros(1, CONTEXT_LENGTH, dtype=torch.long)
    text[0, : len(ids)] = torch.tensor(ids)
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer's notes on Python values it freezes (as OpenAI's trace froze them), and torch's deprecation
        # of TorchScript: the format is what OpenAI published, so it is the one to test loading with.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(archived, {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)})
        torch.jit.save(traced, str(path))
