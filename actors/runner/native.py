"""llama.cpp through llama-cpp-python's low-level bindings: the model, its contexts, and the batch.

Only the runner process imports this module. It wraps exactly what the decode loop needs and
nothing of the high-level ``Llama`` class, which is single-sequence (see the reference notes §1):

* :func:`load_model` and :class:`Model` — weights, vocabulary, a per-token piece cache;
* :func:`create_generation_context` — ONE context for all slots (``n_seq_max = n_parallel``);
* :class:`Batch` — a ``llama_batch`` whose arrays we allocate ourselves, so that the hot loop
  writes plain ctypes arrays and long prefills are copied in with numpy slices.

Why ``kv_unified = False``: every slot must be able to hold ``n_ctx`` tokens whatever the others
do. With split KV streams the context holds ``n_ctx × n_parallel`` cells and llama.cpp gives each
sequence its own stream of ``n_ctx`` cells, so a long conversation can never starve another slot
of cells mid-generation (``llama_decode`` returning 1), and attention for a token only reads its
own stream instead of the whole pool. The price is that copying a prefix *between* slots would
copy whole streams; we never do that — prefix reuse picks the slot that already holds the prefix.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp as L
import numpy as np

from trillama.actors.runner.tokenizing import MIN_FAST_BYTES, FastTokenizer, NotFast
from trillama.logs import get_logger

__all__ = [
    "LoadError",
    "Model",
    "Batch",
    "load_model",
    "create_generation_context",
    "create_embedding_context",
    "install_log_callback",
    "gpu_free_bytes",
    "rss_bytes",
]

log = get_logger("trillama.runner.native")

_KV_TYPES = {"f16": L.GGML_TYPE_F16, "q8_0": L.GGML_TYPE_Q8_0, "q4_0": L.GGML_TYPE_Q4_0}


class LoadError(Exception):
    """The model or a context could not be created; the message is meant for the user."""


# --------------------------------------------------------------------------------------- logging
# ggml_log_level (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues a line)
_WARN, _INFO, _CONT = 3, 2, 5
_log_state: dict = {"last": _INFO}


def install_log_callback(verbose: bool, *, as_events: bool = False) -> None:
    """Send llama.cpp's own log lines to stderr: warnings and errors, or also INFO if ``verbose``.

    llama.cpp's error lines ("error loading model: …") are the best explanation of a failed load,
    so the server keeps the tail of the runner's stderr; hundreds of INFO lines per load would
    push them out. The callback runs with the GIL re-acquired, which is acceptable because
    llama.cpp logs at load time and is silent in the decode loop.
    """
    threshold = _INFO if verbose else _WARN
    pending: list[bytes] = []  # with ``as_events``: the current line, until its newline arrives

    def _emit(level: int, text: bytes) -> None:
        if not as_events:
            try:
                os.write(2, text)
            except OSError:
                pass
            return
        # One structlog event per whole line (llama.cpp sends lines in pieces), so that a JSON
        # log stays one JSON object per line.
        pending.append(text)
        joined = b"".join(pending)
        if b"\n" not in joined:
            return
        *lines, rest = joined.split(b"\n")
        pending[:] = [rest] if rest else []
        for line in lines:
            if line.strip():
                event = log.warning if level >= _WARN else log.info
                event("llama_cpp", text=line.decode("utf-8", errors="replace"))

    @L.llama_log_callback
    def _callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level == _CONT:
            level = _log_state["last"]
        else:
            _log_state["last"] = level
        if level >= threshold or level == 0:
            _emit(level, text)

    _log_state["callback"] = _callback  # keep the ctypes thunk alive for the process lifetime
    L.llama_log_set(_callback, ctypes.c_void_p(0))


def route_library_logs(set_callback) -> None:
    """Point another llama.cpp library's logger (libmtmd's) at the callback installed above."""
    callback = _log_state.get("callback")
    if callback is not None:
        set_callback(callback, ctypes.c_void_p(0))


# --------------------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident set size of this process (Linux), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            resident_pages = int(fh.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def gpu_free_bytes() -> dict[str, int]:
    """Free memory per GPU-like ggml device, to measure what the load took (0 devices on CPU).

    llama.h has no per-model memory breakdown; the free-memory delta around the load is the
    honest number for /api/ps ``size_vram``. The device API lives in libggml; not every build
    exports it, hence the broad guard.
    """
    try:
        lib_dir = Path(L.__file__).parent / "lib"
        ggml = ctypes.CDLL(str(lib_dir / "libggml.so"))
        base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        base.ggml_backend_dev_memory.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_size_t),
        ]
        base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        base.ggml_backend_dev_type.restype = ctypes.c_int
        base.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
        base.ggml_backend_dev_name.restype = ctypes.c_char_p
        out: dict[str, int] = {}
        for i in range(ggml.ggml_backend_dev_count()):
            dev = ggml.ggml_backend_dev_get(i)
            if base.ggml_backend_dev_type(dev) not in (1, 2):  # GPU, integrated GPU
                continue
            free, total = ctypes.c_size_t(), ctypes.c_size_t()
            base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            out[(base.ggml_backend_dev_name(dev) or b"?").decode()] = free.value
        return out
    except Exception:
        return {}


# --------------------------------------------------------------------------------------- model
class Model:
    """A loaded model and its vocabulary; safe to tokenize from any thread (llama.h says so)."""

    def __init__(self, ptr: int, path: Path) -> None:
        self.ptr = ptr
        self.path = path
        self.vocab = L.llama_model_get_vocab(ptr)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(L.llama_model_n_embd(ptr))
        #: width of a pooled embedding (differs from n_embd only for a few multimodal archs)
        self.n_embd_out = int(L.llama_model_n_embd_out(ptr))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(ptr))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(L.llama_vocab_bos(self.vocab))
        self.size_bytes = int(L.llama_model_size(ptr))
        # token id → bytes of its text (special tokens rendered). Filled lazily: a dict lookup is
        # an order of magnitude cheaper than a ctypes call per generated token.
        self.pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        # token id → is end-of-generation; lazily filled for the same reason.
        self._eog: dict[int, bool] = {}

    def is_eog(self, token: int) -> bool:
        hit = self._eog.get(token)
        if hit is None:
            hit = self._eog[token] = bool(L.llama_vocab_is_eog(self.vocab, token))
        return hit

    def piece(self, token: int) -> bytes:
        cached = self.pieces.get(token)
        if cached is not None:
            return cached
        buf = self._piece_buf
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:  # longer than the buffer: retry with the size llama.cpp asked for
            big = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, big, len(big), 0, True)
            data = big.raw[:n]
        else:
            data = buf.raw[:n]
        self.pieces[token] = data
        return data

    def max_token_bytes(self) -> int:
        """The most bytes of text one token of this vocabulary stands for (special tokens too).

        A text of ``n`` bytes has at least ``n / max_token_bytes`` tokens, so a prompt can be
        proven too long for a context from its length alone, before the tokenizer (whose memory
        grows with the input, ~100x for llama.cpp's BPE pre-tokenizer) ever sees it. Computed once.
        """
        cached = getattr(self, "_max_token_bytes", None)
        if cached is not None:
            return cached
        longest = 0
        try:  # the GGUF vocabulary's longest raw token: a scan of lengths, ~0.1 s for 262k tokens
            from trillama.store.gguf_info import GGUFArray, read_gguf_info

            tokens = read_gguf_info(self.path).kv.get("tokenizer.ggml.tokens")
            if isinstance(tokens, GGUFArray) and len(tokens) >= self.n_vocab:
                longest = tokens.longest_string()
        except Exception:  # an unusual file: ask llama.cpp token by token (seconds for big vocabularies)
            longest = 0
        if longest <= 0:
            buf = ctypes.create_string_buffer(256)
            for token in range(self.n_vocab):
                n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
                longest = max(longest, abs(int(n)))
        self._max_token_bytes = max(1, longest)
        return self._max_token_bytes

    def text_bound(self, max_tokens: int) -> int:
        """Bytes beyond which a text certainly has more than ``max_tokens`` tokens.

        Twice the strict bound, for what the tokenizer may add or normalise (a leading space,
        special tokens rendered differently): generous, and still bounded by the context.
        """
        return max(1, max_tokens) * self.max_token_bytes() * 2 + 64

    def proven_too_long(self, text: str, max_tokens: int) -> bool:
        """Does the length of ``text`` alone prove more than ``max_tokens`` tokens?

        Short texts are never checked (tokenizing ``8 × max_tokens`` bytes costs little), so the
        vocabulary scan behind :meth:`max_token_bytes` runs only once a long text arrives.
        """
        if len(text) <= 8 * max(1, max_tokens):
            return False
        bound = self.text_bound(max_tokens)
        # Characters never outnumber UTF-8 bytes: the cheap test first, then the exact one.
        return len(text) > bound or len(text.encode("utf-8", errors="replace")) > bound

    def tokenize_bounded(self, text: str, max_tokens: int, *, add_special: bool,
                         parse_special: bool = True) -> list[int] | None:
        """The tokens of ``text``, or ``None`` when it has more than ``max_tokens`` of them.

        Texts whose length alone proves it are refused without tokenizing, so memory stays
        bounded by the context whatever the input size.
        """
        if self.proven_too_long(text, max_tokens):
            return None
        tokens, whole = self.leading_tokens(text, max_tokens, add_special=add_special, parse_special=parse_special)
        return tokens if whole and len(tokens) <= max_tokens else None

    def leading_tokens(self, text: str, want: int, *, add_special: bool,
                       parse_special: bool = True) -> tuple[list[int], bool]:
        """The tokens of ``text`` at least as far as its first ``want``, and whether they are all.

        Only as much of the text is tokenized as holds them: a prefix of ``8 × want`` characters,
        four times longer while it holds fewer, so the tokenizer's memory (~100× its input for a
        long word) and time follow the context, not the text (issue 24: a 60 MB embedding input
        cut to the vocabulary's bound of 1.3 MB took 70 s and grew the runner by 1.6 GB). The
        tokens past the first ``want`` (a few more, so that a word cut at the end of the prefix
        cannot change them) are dropped when the text goes on.
        """
        size = max(MIN_FAST_BYTES, 8 * want)
        while size < len(text):
            tokens = self._tokenize(text[:size], add_special, parse_special, None)
            assert tokens is not None
            if len(tokens) > want + _PREFIX_SLACK:
                return tokens[: want + 1], False
            size *= 4
        tokens = self._tokenize(text, add_special, parse_special, None)
        assert tokens is not None
        return tokens, True

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        tokens = self._tokenize(text, add_special, parse_special, None)
        assert tokens is not None
        return tokens

    def _tokenize(self, text: str, add_special: bool, parse_special: bool, limit: int | None) -> list[int] | None:
        """Long texts take the linear path of :mod:`.tokenizing` (llama.cpp's own special-token
        split is super-linear, issue 24), with the same tokens; short ones llama.cpp's."""
        data = text.encode("utf-8", errors="replace")
        if parse_special and len(data) >= MIN_FAST_BYTES:
            fast = self._fast_tokenizer()
            try:
                return fast.tokenize(data, add_special=add_special, limit=limit, llama_tokenize=self._llama_tokenize)
            except NotFast:
                pass
        return self._llama_tokenize(data, add_special, parse_special)

    def _fast_tokenizer(self) -> FastTokenizer:
        fast = getattr(self, "_fast", None)
        if fast is None:  # built once, when the first long text arrives (two threads may race: harmless)
            fast = self._fast = FastTokenizer(self.vocab, self.n_vocab)
        return fast

    def _llama_tokenize(self, data: bytes, add_special: bool, parse_special: bool = True) -> list[int]:
        cap = len(data) + 8
        while True:
            arr = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
            if n >= 0:
                return arr[:n]
            cap = -n

    def detokenize(self, tokens: list[int], *, render_special: bool = True) -> str:
        if not tokens:
            return ""
        arr = (L.llama_token * len(tokens))(*tokens)
        cap = max(64, len(tokens) * 8)
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = L.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, False, render_special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            cap = -n

    def close(self) -> None:
        if self.ptr:
            L.llama_model_free(self.ptr)
            self.ptr = None


#: Tokens beyond the wanted ones that a prefix must hold before its first ones are trusted: the
#: end of a prefix may cut a word (or a special token) and change the last few tokens.
_PREFIX_SLACK = 64


def _cpu_has_amx() -> bool:
    """Does this CPU advertise AMX tiles (Linux ``/proc/cpuinfo``)?"""
    try:
        with open("/proc/cpuinfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"flags"):
                    return b"amx_tile" in line.split()
    except OSError:
        pass
    return False


def load_model(
    path: Path,
    *,
    n_gpu_layers: int,
    use_mmap: bool,
) -> Model:
    if not path.is_file():
        raise LoadError(f"model file not found: {path}")
    params = L.llama_model_default_params()
    params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers < 0 else n_gpu_layers
    params.load_mode = L.LLAMA_LOAD_MODE_MMAP if use_mmap else L.LLAMA_LOAD_MODE_NONE
    if _cpu_has_amx():
        # The engine's AMX weight buffers fault on the first matrix product (a general protection
        # fault at ``ldtilecfg`` in ggml_backend_amx_mul_mat, every process, every model) on the
        # AMX hosts this project runs on; without the extra buffer types the weights stay in
        # plain CPU buffers and every decode works.
        params.use_extra_bufts = False
    ptr = L.llama_model_load_from_file(str(path).encode(), params)
    if not ptr:
        raise LoadError(f"unable to load model: {path}")
    return Model(ptr, path)


def _base_context_params(n_threads: int, flash_attn: bool | None, kv_cache_type: str):
    cp = L.llama_context_default_params()
    cp.n_threads = n_threads
    cp.n_threads_batch = n_threads
    cp.flash_attn_type = (
        L.LLAMA_FLASH_ATTN_TYPE_AUTO
        if flash_attn is None
        else (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    )
    cp.type_k = cp.type_v = _KV_TYPES[kv_cache_type]
    cp.no_perf = True
    return cp


def create_generation_context(
    model: Model,
    *,
    n_ctx: int,
    n_parallel: int,
    n_batch: int,
    n_threads: int,
    flash_attn: bool | None,
    kv_cache_type: str,
    n_park: int = 0,
) -> int:
    """One context whose KV cache gives each of ``n_parallel`` sequences ``n_ctx`` cells, and
    ``n_park`` more streams of the same size where the engine parks sequences (prompt cache)."""
    per_slot = -(-n_ctx // 256) * 256  # llama.cpp pads each stream to 256 cells anyway
    cp = _base_context_params(n_threads, flash_attn, kv_cache_type)
    cp.n_ctx = per_slot * (n_parallel + n_park)
    cp.n_batch = n_batch
    cp.n_ubatch = min(n_batch, 512)
    cp.n_seq_max = n_parallel + n_park
    cp.kv_unified = False
    cp.embeddings = False
    ctx = L.llama_init_from_model(model.ptr, cp)
    if not ctx:
        raise LoadError(
            "unable to create the model context (out of memory, or the KV cache type needs flash "
            "attention)"
        )
    got = int(L.llama_n_ctx_seq(ctx))
    if got < n_ctx:
        L.llama_free(ctx)
        raise LoadError(f"context per slot is {got} tokens, {n_ctx} were asked")
    return ctx


def create_embedding_context(model: Model, *, n_ctx: int, n_seq: int, n_threads: int,
                             chunk: int | None = None) -> int:
    """A second context on the same weights, for embeddings.

    With ``chunk``, each decode takes at most ``chunk`` tokens and returns every token's state
    (no pooling): the caller averages them, and the KV cache carries a long input from one chunk
    to the next. Without, ``n_batch = n_ubatch = n_ctx`` and llama.cpp pools a whole input, which
    must then fit in one micro-batch — the only way for a model without a KV cache. Unified KV
    because each decode is a fresh set of short, unrelated sequences.
    """
    cp = _base_context_params(n_threads, None, "f16")
    cp.n_ctx = n_ctx
    cp.n_batch = cp.n_ubatch = min(chunk, n_ctx) if chunk else n_ctx
    cp.n_seq_max = n_seq
    cp.kv_unified = True
    cp.embeddings = True
    cp.pooling_type = L.LLAMA_POOLING_TYPE_NONE if chunk else L.LLAMA_POOLING_TYPE_MEAN
    ctx = L.llama_init_from_model(model.ptr, cp)
    if not ctx:
        raise LoadError("unable to create the embedding context")
    return ctx


def apply_adapters(model: Model, ctx: int, paths: tuple[Path, ...]) -> list[int]:
    """Load LoRA adapters and attach them (scale 1.0) to ``ctx``; returns the adapter handles."""
    handles = []
    for path in paths:
        handle = L.llama_adapter_lora_init(model.ptr, str(path).encode())
        if not handle:
            raise LoadError(f"unable to load adapter: {path}")
        handles.append(handle)
    if handles:
        arr = (L.llama_adapter_lora_p_ctypes * len(handles))(*handles)
        scales = (ctypes.c_float * len(handles))(*([1.0] * len(handles)))
        if L.llama_set_adapters_lora(ctx, arr, len(handles), scales) != 0:
            raise LoadError("unable to apply adapters")
    return handles


# --------------------------------------------------------------------------------------- batch
class Batch:
    """A ``llama_batch`` over arrays we own.

    ``llama_batch_init`` would allocate one seq-id array per token; we point every token's seq-id
    pointer into one contiguous int32 array instead, so writing a token is four array stores and
    a prefill chunk is four numpy slice assignments. ``n_seq_id`` is 1 for every token, forever.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = (ctypes.c_int32 * capacity)()
        self.pos = (ctypes.c_int32 * capacity)()
        self.seq = (ctypes.c_int32 * capacity)()
        self.logits = (ctypes.c_int8 * capacity)()
        self.n_seq_id = (ctypes.c_int32 * capacity)(*([1] * capacity))
        base = ctypes.addressof(self.seq)
        int_p = ctypes.POINTER(ctypes.c_int32)
        self.seq_ptrs = (int_p * capacity)(
            *[ctypes.cast(base + 4 * i, int_p) for i in range(capacity)]
        )
        self.np_token = np.ctypeslib.as_array(self.token)
        self.np_pos = np.ctypeslib.as_array(self.pos)
        self.np_seq = np.ctypeslib.as_array(self.seq)
        self.np_logits = np.ctypeslib.as_array(self.logits)
        self.struct = L.llama_batch(
            n_tokens=0,
            token=ctypes.cast(self.token, ctypes.POINTER(ctypes.c_int32)),
            embd=None,
            pos=ctypes.cast(self.pos, ctypes.POINTER(ctypes.c_int32)),
            n_seq_id=ctypes.cast(self.n_seq_id, ctypes.POINTER(ctypes.c_int32)),
            seq_id=ctypes.cast(self.seq_ptrs, ctypes.POINTER(int_p)),
            logits=ctypes.cast(self.logits, ctypes.POINTER(ctypes.c_int8)),
        )

    def add_run(self, n: int, tokens: list[int], start_pos: int, seq: int, logits_last: bool) -> int:
        """Append ``tokens`` of one sequence at ``start_pos``; returns the new token count."""
        k = len(tokens)
        end = n + k
        self.np_token[n:end] = tokens
        self.np_pos[n:end] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self.np_seq[n:end] = seq
        self.np_logits[n:end] = 0
        if logits_last:
            self.logits[end - 1] = 1
        return end

