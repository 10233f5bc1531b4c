"""Images through libmtmd: a model's vision projector, prompts with pictures in them, their decoding.

A model with a projector (Ollama's ``application/vnd.ollama.image.projector`` layer, an "mmproj"
GGUF) gets one :class:`Vision` next to its text model. The prompt layer marks each image in the
prompt text as ``[img-N]`` (N indexes the job's images, as in Ollama); :meth:`Vision.tokenize`
swaps those tags for libmtmd's media marker and lets libmtmd split the prompt into text tokens
and image chunks, adding whatever tokens the model wants around an image.

The marker is random per process, so text a user types can never be taken for an image.

In the engine an image occupies ``n_pos`` positions of its slot. Those positions hold a
*placeholder* in the slot's token list: a negative number derived from the image's bytes, equal
for equal images. Prefix reuse therefore works across a conversation's turns with the same
picture, and a different picture at the same place never matches. Placeholders never reach
``llama_decode`` as tokens and are left out of the ``context`` a job returns.

Encoding runs on the decode thread (:meth:`Vision.eval_image`) as a decode of its own, between
batching steps: the other slots pause for as long as one image takes to encode. libmtmd's helper
never asks for logits, which is right for an image with text after it; a prompt that *ends* with
an image (a raw prompt can) needs the last position's logits, so that one image is decoded here
with our own embeddings batch.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import secrets
from pathlib import Path

import attrs
import llama_cpp as L
import llama_cpp.mtmd_cpp as M

from trillama.actors.runner.native import LoadError, Model, route_library_logs
from trillama.logs import get_logger

__all__ = ["Vision", "ImageSpan", "MediaPrompt", "MediaError", "IMAGE_TAG", "placeholder_for"]

log = get_logger("trillama.runner.media")

#: How the prompt layer marks image N of a job (Ollama's convention).
IMAGE_TAG = re.compile(r"\[img-(\d+)\]")


class MediaError(ValueError):
    """An image or a prompt with images could not be turned into model input."""


def placeholder_for(image_id: str, part: int = 0) -> int:
    """The negative stand-in token for one image chunk's positions.

    ``image_id`` is the hex SHA-256 of the image's bytes; ``part`` counts the chunks one image
    became (some projectors cut a large picture into an overview and slices).
    """
    digest = hashlib.sha256(f"{image_id}:{part}".encode()).digest()
    return -1 - int.from_bytes(digest[:7], "big")


@attrs.frozen
class ImageSpan:
    """One image inside a prompt: where it starts, how many positions it takes, its chunk."""

    start: int
    n_pos: int
    chunk: int  # mtmd_input_chunk pointer, owned by the MediaPrompt's chunk list


@attrs.define(eq=False)
class MediaPrompt:
    """A prompt that contains images: the token list (placeholders for images) and the spans.

    Owns libmtmd's chunk list; :meth:`free` must be called once the job is over.
    """

    tokens: list[int]
    spans: list[ImageSpan]
    _chunks: int | None

    def free(self) -> None:
        if self._chunks:
            M.mtmd_input_chunks_free(self._chunks)
            self._chunks = None


class Vision:
    """The projector of one loaded model (a libmtmd context bound to the text model)."""

    def __init__(self, ptr: int, model: Model, path: Path) -> None:
        self.ptr = ptr
        self.path = path
        self.marker = f"<__media_{secrets.token_hex(8)}__>"
        self.n_embd = int(L.llama_model_n_embd_inp(model.ptr))
        self.mrope = False

    @classmethod
    def load(cls, path: Path, model: Model, *, n_threads: int, use_gpu: bool, flash_attn: bool | None) -> "Vision":
        if not path.is_file():
            raise LoadError(f"projector file not found: {path}")
        route_library_logs(M.mtmd_helper_log_set)  # libmtmd logs every image at INFO otherwise
        params = M.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        if flash_attn is not None:
            params.flash_attn_type = (
                L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        vision = cls(0, model, path)
        params.media_marker = vision.marker.encode()
        ptr = M.mtmd_init_from_file(str(path).encode(), model.ptr, params)
        if not ptr:
            raise LoadError(f"unable to load the vision projector {path.name} for this model")
        vision.ptr = ptr
        vision.mrope = bool(M.mtmd_decode_use_mrope(ptr))
        if not M.mtmd_support_vision(ptr):
            M.mtmd_free(ptr)
            raise LoadError(f"the projector {path.name} has no vision encoder")
        return vision

    # ------------------------------------------------------------------ reader thread
    def tokenize(self, text: str, images: list[bytes]) -> MediaPrompt | None:
        """Split ``text`` (with ``[img-N]`` tags) into tokens and image chunks.

        Returns ``None`` when no tag refers to one of ``images``: the prompt is then plain text
        and the caller tokenizes it as usual. A tag whose N is out of range stays text, as in
        Ollama. BOS is not added here; the engine decides about it for every prompt alike.
        """
        order: list[int] = []

        def swap(match: re.Match) -> str:
            index = int(match.group(1))
            if index >= len(images):
                return match.group(0)
            order.append(index)
            return self.marker

        marked = IMAGE_TAG.sub(swap, text)
        if not order:
            return None
        bitmaps = []
        chunks = None
        try:
            for index in order:
                bitmaps.append(self._bitmap(images[index], index))
            data = marked.encode("utf-8")
            text_in = M.mtmd_input_text(text=data, text_len=len(data), add_special=False, parse_special=True)
            chunks = M.mtmd_input_chunks_init()
            array = (M.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            rc = M.mtmd_tokenize(self.ptr, chunks, ctypes.byref(text_in), array, len(bitmaps))
            if rc != 0:
                raise MediaError(f"unable to prepare the images for this model (mtmd_tokenize returned {rc})")
            prompt = self._flatten(chunks)
            chunks = None  # owned by the prompt now
            return prompt
        finally:
            for bitmap in bitmaps:
                M.mtmd_bitmap_free(bitmap)
            if chunks:
                M.mtmd_input_chunks_free(chunks)

    def _bitmap(self, data: bytes, index: int) -> int:
        if not data:
            raise MediaError(f"image {index} is empty")
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = M.mtmd_helper_bitmap_init_from_buf(self.ptr, buf, len(data), False)
        if not bitmap:
            raise MediaError(f"image {index} could not be decoded (not a JPEG, PNG, GIF, BMP or WebP image?)")
        M.mtmd_bitmap_set_id(bitmap, hashlib.sha256(data).hexdigest().encode())
        return bitmap

    def _flatten(self, chunks: int) -> MediaPrompt:
        tokens: list[int] = []
        spans: list[ImageSpan] = []
        n_tokens = ctypes.c_size_t()
        parts: dict[str, int] = {}
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            kind = M.mtmd_input_chunk_get_type(chunk)
            if kind == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                ptr = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n_tokens))
                tokens.extend(ptr[: n_tokens.value])
            elif kind == M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                n_pos = int(M.mtmd_input_chunk_get_n_pos(chunk))
                image_id = (M.mtmd_input_chunk_get_id(chunk) or b"").decode()
                part = parts.get(image_id, 0)
                parts[image_id] = part + 1
                spans.append(ImageSpan(start=len(tokens), n_pos=n_pos, chunk=chunk))
                tokens.extend([placeholder_for(image_id, part)] * n_pos)
            else:
                raise MediaError("this model's projector produced input that is not an image")
        if self.mrope and spans and spans[-1].start + spans[-1].n_pos == len(tokens):
            raise MediaError("this model needs some text after the last image")
        return MediaPrompt(tokens=tokens, spans=spans, chunks=chunks)

    # ------------------------------------------------------------------ decode thread
    def eval_image(self, ctx: int, span: ImageSpan, *, n_past: int, seq: int, n_batch: int,
                   logits_last: bool) -> int:
        """Encode one image and decode its embeddings into ``seq`` at ``n_past``; returns the new
        position. Raises :class:`MediaError` when libmtmd fails."""
        if logits_last:
            return self._eval_final_image(ctx, span, n_past=n_past, seq=seq, n_batch=n_batch)
        new_n_past = L.llama_pos(0)
        rc = M.mtmd_helper_eval_chunk_single(
            self.ptr, ctx, span.chunk, n_past, seq, n_batch, logits_last, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise MediaError(f"encoding the image failed ({rc})")
        return int(new_n_past.value)

    def _eval_final_image(self, ctx: int, span: ImageSpan, *, n_past: int, seq: int, n_batch: int) -> int:
        rc = M.mtmd_encode_chunk(self.ptr, span.chunk)
        if rc != 0:
            raise MediaError(f"encoding the image failed ({rc})")
        embd = M.mtmd_get_output_embd(self.ptr)
        n_tokens = int(M.mtmd_input_chunk_get_n_tokens(span.chunk))
        width = self.n_embd
        row_bytes = width * ctypes.sizeof(ctypes.c_float)
        src = ctypes.cast(embd, ctypes.c_void_p).value
        non_causal = bool(M.mtmd_decode_use_non_causal(self.ptr, span.chunk))
        n_batch = n_tokens if non_causal else min(n_batch, n_tokens)  # non-causal: one batch
        batch = L.llama_batch_init(n_batch, width, 1)
        if non_causal:
            L.llama_set_causal_attn(ctx, False)
        try:
            dst = ctypes.cast(batch.embd, ctypes.c_void_p).value
            for first in range(0, n_tokens, n_batch):
                k = min(n_batch, n_tokens - first)
                ctypes.memmove(dst, src + first * row_bytes, k * row_bytes)
                for i in range(k):
                    batch.pos[i] = n_past + first + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = first + i == n_tokens - 1
                batch.n_tokens = k
                rc = L.llama_decode(ctx, batch)
                if rc != 0:
                    raise MediaError(f"decoding the image failed ({rc})")
        finally:
            if non_causal:
                L.llama_set_causal_attn(ctx, True)
            L.llama_batch_free(batch)
        return n_past + n_tokens

    def close(self) -> None:
        if self.ptr:
            M.mtmd_free(self.ptr)
            self.ptr = 0
