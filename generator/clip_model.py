"""OpenAI CLIP as BigSleep uses it: a frozen judge of how well image crops match the prompts."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from generator.tokens import CONTEXT_LENGTH, encode_prompt

with warnings.catch_warnings():
    # clip-anytorch imports pkg_resources only for a version check; its deprecation warning is noise here.
    warnings.simplefilter("ignore")
    import clip
    from clip.model import CLIP

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
    if dtype != torch.float32:
        _cast_matrix_weights(model, dtype)
    return model


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
    """Images in [0, 1] to the normalised input CLIP was trained on."""
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def encode_images(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """Embeddings (n, embed_dim) in fp32 of images (n, 3, res, res) in [0, 1].

    The same computation as CLIP's own vision transformer, except that the last block runs for the class
    token alone: it is the only token read after that block, and it needs the other tokens only as keys and
    values. That skips about 1/12 of CLIP's forward and backward work without changing the result.
    """
    visual = model.visual
    patches = visual.conv1(normalize_pixels(images).to(visual.conv1.weight.dtype)).flatten(2).permute(0, 2, 1)
    class_token = visual.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
    tokens = torch.cat([class_token, patches], dim=1) + visual.positional_embedding.to(patches.dtype)
    tokens = visual.ln_pre(tokens).permute(1, 0, 2)  # CLIP's transformer takes (tokens, batch, width)
    *leading_blocks, last_block = visual.transformer.resblocks
    for block in leading_blocks:
        tokens = block(tokens)
    normed = last_block.ln_1(tokens)
    summary = tokens[:1] + last_block.attn(normed[:1], normed, normed, need_weights=False)[0]
    summary = summary + last_block.mlp(last_block.ln_2(summary))
    return (visual.ln_post(summary[0]) @ visual.proj).float()


@torch.no_grad()
def encode_texts(model: CLIP, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Embeddings (n, embed_dim) in fp32; raises SpecError for a prompt CLIP cannot read whole."""
    if not prompts:
        return torch.zeros(0, model.text_projection.shape[1], device=device)
    tokens = torch.zeros(len(prompts), CONTEXT_LENGTH, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids = encode_prompt(prompt)
        tokens[row, : len(ids)] = torch.tensor(ids)
    return model.encode_text(tokens.to(device)).float()


# ---- architectures with random weights (tiny preset, tests and benchmarks) ---------------------------------


def random_clip(width: str = "tiny", seed: int = 0) -> CLIP:
    """ViT-B/32 CLIP with random weights: 'full' is the real architecture, 'tiny' the same one at toy width."""
    shapes = {
        # embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
        # context_length, vocab_size, transformer_width, transformer_heads, transformer_layers
        "full": (512, 224, 12, 768, 32, CONTEXT_LENGTH, 49408, 512, 8, 12),
        "tiny": (64, 224, 2, 64, 32, CONTEXT_LENGTH, 49408, 64, 1, 2),
    }[width]
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
