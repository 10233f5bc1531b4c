"""A tiny, randomly initialised vision projector (an "mmproj" GGUF) for tests.

No vision model can be downloaded on the machines this project is tested on, so the tests write
their own: a LLaVA-style CLIP encoder (one 28×28 image → 2×2 patches of 14 pixels → 4 image
embeddings) with an MLP projector into the text model's embedding width. Its weights are random,
so what the model "sees" is noise — but deterministic noise that depends on the pixels: the same
image gives the same embeddings, a different image different ones. That is exactly what a test
needs to show that images reach the model: with greedy sampling the answer changes with the
image and repeats for the same image.

The file follows llama.cpp's clip loader conventions (``clip.*`` keys, ``v.*`` / ``mm.*`` tensor
names); numpy shapes are the reverse of ggml's ``ne`` order.
"""

from __future__ import annotations

import io
from pathlib import Path

import gguf
import numpy as np

__all__ = ["write_tiny_projector", "png_bytes", "IMAGE_TOKENS"]

IMAGE_SIZE = 28
PATCH_SIZE = 14
#: embeddings one image becomes (and so the prompt tokens it costs)
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
_WIDTH = 32  # vision embedding width
_HEADS = 2
_FFN = 64
_LAYERS = 2  # a LLaVA projector reads the second-to-last layer, so two layers run one


def write_tiny_projector(path: Path, *, text_embd: int, seed: int = 0) -> Path:
    """Write the projector GGUF for a text model whose embedding width is ``text_embd``."""
    rng = np.random.default_rng(seed)

    def weight(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_type("mmproj")
    writer.add_name("trillama tiny test projector")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("mlp")
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH_SIZE)
    writer.add_vision_embedding_length(_WIDTH)
    writer.add_vision_feed_forward_length(_FFN)
    writer.add_vision_block_count(_LAYERS)
    writer.add_vision_head_count(_HEADS)
    writer.add_vision_attention_layernorm_eps(1e-5)
    writer.add_vision_projection_dim(text_embd)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)

    n_pos = IMAGE_TOKENS
    tensors = {
        "v.patch_embd.weight": weight(_WIDTH, 3, PATCH_SIZE, PATCH_SIZE, scale=0.05),
        "v.patch_embd.bias": zeros(_WIDTH),
        "v.position_embd.weight": weight(n_pos, _WIDTH),
        "v.pre_ln.weight": ones(_WIDTH),
        "v.pre_ln.bias": zeros(_WIDTH),
    }
    for i in range(_LAYERS):
        blk = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{blk}.{name}.weight"] = weight(_WIDTH, _WIDTH)
            tensors[f"{blk}.{name}.bias"] = zeros(_WIDTH)
        for name in ("ln1", "ln2"):
            tensors[f"{blk}.{name}.weight"] = ones(_WIDTH)
            tensors[f"{blk}.{name}.bias"] = zeros(_WIDTH)
        tensors[f"{blk}.ffn_up.weight"] = weight(_FFN, _WIDTH)
        tensors[f"{blk}.ffn_up.bias"] = zeros(_FFN)
        tensors[f"{blk}.ffn_down.weight"] = weight(_WIDTH, _FFN)
        tensors[f"{blk}.ffn_down.bias"] = zeros(_WIDTH)
    hidden = 4 * _WIDTH
    tensors["mm.0.weight"] = weight(hidden, _WIDTH)
    tensors["mm.0.bias"] = zeros(hidden)
    tensors["mm.2.weight"] = weight(text_embd, hidden, scale=0.1)
    tensors["mm.2.bias"] = zeros(text_embd)
    for name, data in tensors.items():
        writer.add_tensor(name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def png_bytes(color: tuple[int, int, int], size: int = IMAGE_SIZE, *, stripe: tuple[int, int, int] | None = None) -> bytes:
    """A small PNG: one colour, optionally with a stripe of another across the middle."""
    from PIL import Image

    image = Image.new("RGB", (size, size), color)
    if stripe is not None:
        for x in range(size):
            for y in range(size // 3, 2 * size // 3):
                image.putpixel((x, y), stripe)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
