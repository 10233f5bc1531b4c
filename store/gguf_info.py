"""What a GGUF file says about itself: architecture, sizes, quantisation, chat template, tensors.

``/api/show``, ``/api/tags``, create (the config blob, template detection) and the scheduler (memory
estimates need block and head counts) all ask the same questions of the same immutable blob
files, so answers are cached by path, size and mtime.

The header is read here directly (the ``gguf`` package supplies only the tensor type names):
``gguf.GGUFReader`` builds a numpy view for every element of every array, which takes about 25 s
for a 262k-token vocabulary (Gemma 3) on this class of machine, and would stall the first
``/api/tags`` after a start. Reading the same header with ``struct`` and leaving arrays undecoded
until someone looks inside takes a fraction of a second.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from trillama.logs import get_logger
from trillama.store.errors import NotGGUF
from trillama.gofmt import go_float32

__all__ = ["GGUFInfo", "GGUFArray", "read_gguf_info", "is_gguf", "human_number", "file_type_name", "NotGGUF"]

log = get_logger("trillama.store.gguf")

GGUF_MAGIC = b"GGUF"

#: llama.cpp's ``llama_ftype`` numbers, named the way Ollama names them (``general.file_type``).
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}

#: Arrays longer than this are shown as ``[]`` unless ``verbose`` (Ollama's rule for show).
SHOW_ARRAY_LIMIT = 5


def human_number(count: int) -> str:
    """Ollama's ``format.HumanNumber``: ``8B``, ``3.2B``, ``494.03M``, ``137M``, ``12K``."""
    if count >= 1_000_000_000:
        value = count / 1_000_000_000
        return f"{value:.0f}B" if value.is_integer() else f"{value:.1f}B"
    if count >= 1_000_000:
        value = count / 1_000_000
        return f"{value:.0f}M" if value.is_integer() else f"{value:.2f}M"
    if count >= 1_000:
        return f"{count / 1_000:.0f}K"
    return str(count)


def file_type_name(code: int | None) -> str:
    """The quantisation label for ``general.file_type``; Ollama treats 0 and absent as unknown."""
    if not code:
        return "unknown"
    return _FILE_TYPES.get(int(code), "unknown")


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


@attrs.frozen(eq=False)
class GGUFInfo:
    path: Path
    architecture: str
    kind: str
    parameter_count: int
    file_type_code: int
    context_length: int
    embedding_length: int
    block_count: int
    head_count: int
    head_count_kv: int
    key_length: int
    value_length: int
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    #: Every key/value pair of the header (``general.parameter_count`` patched in, as Ollama does).
    kv: dict[str, Any]
    #: ``[{"name", "type", "shape"}]`` in file order.
    tensors: tuple[dict[str, Any], ...]

    @property
    def parameter_size(self) -> str:
        return human_number(self.parameter_count)

    @property
    def file_type(self) -> str:
        return file_type_name(self.file_type_code)

    def arch_key(self, key: str) -> Any:
        """An architecture-scoped value: ``arch_key("context_length")`` reads ``llama.context_length``."""
        return self.kv.get(f"{self.architecture}.{key}")

    @property
    def vocab_size(self) -> int:
        declared = self.arch_key("vocab_size")
        if isinstance(declared, int) and declared > 0:
            return declared
        tokens = self.kv.get("tokenizer.ggml.tokens")
        return len(tokens) if isinstance(tokens, GGUFArray) else 0

    @property
    def has_pooling(self) -> bool:
        """Embedding models declare a pooling type; everything else generates text."""
        return self.arch_key("pooling_type") is not None

    @property
    def has_vision(self) -> bool:
        return self.arch_key("vision.block_count") is not None

    @property
    def has_audio(self) -> bool:
        return self.arch_key("audio.block_count") is not None

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"

    @property
    def is_projector(self) -> bool:
        if self.kind in ("projector", "mmproj"):
            return True
        blocks = self.arch_key("block_count") or 0
        if not blocks and (self.arch_key("vision.block_count") or 0) > 0:
            return True
        return self.architecture == "clip" and not blocks and bool(
            self.arch_key("has_vision_encoder") or self.arch_key("has_audio_encoder"))

    def model_info(self, verbose: bool = False) -> dict[str, Any]:
        """Ollama's ``model_info`` map: the header minus the name and the chat template.

        Long arrays (the vocabulary, merges…) would make every ``show`` megabytes long, so
        arrays with more than five elements become ``[]`` unless ``verbose``.
        """
        out: dict[str, Any] = {}
        for key, value in self.kv.items():
            if key in ("general.name", "tokenizer.chat_template"):
                continue
            if isinstance(value, GGUFArray):
                value = [] if len(value) > SHOW_ARRAY_LIMIT and not verbose else value.to_list()
            out[key] = value
        return out


class GGUFArray(Sequence):
    """An array value of the header, decoded from the file only when someone looks inside.

    Vocabularies run to hundreds of thousands of strings; most readers only need their length
    (``show`` hides long arrays, the scheduler wants the vocabulary size), so the elements stay
    on disk until asked for, then are decoded once.
    """

    def __init__(self, path: Path, offset: int, count: int, item_type: int, version: int,
                 endian: str) -> None:
        self._path = path
        self._offset = offset
        self._count = count
        self._type = item_type
        self._version = version
        self._endian = endian
        self._items: list[Any] | None = None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        return self.to_list()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, GGUFArray)):
            return self.to_list() == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"GGUFArray(type={self._type}, len={self._count})"

    def to_list(self) -> list[Any]:
        if self._items is None:
            with self._path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                cursor = _Cursor(data, self._offset, self._version, self._endian)
                self._items = [cursor.value(self._type) for _ in range(self._count)]
        return self._items


    def longest_string(self) -> int:
        """Bytes of the longest element of a string array (0 for other arrays), without decoding.

        For a vocabulary this bounds the text one token stands for (the runner's prompt-length
        check): its raw form is never shorter than the text it renders to (``▁`` is three bytes
        for one space, a byte-level BPE character one or two bytes for one byte, ``<0x0A>`` six).
        """
        if self._type != _STRING:
            return 0
        fmt = self._endian + ("I" if self._version == 1 else "Q")
        step = struct.calcsize(fmt)
        unpack = struct.Struct(fmt).unpack_from
        longest = 0
        with self._path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            pos = self._offset
            for _ in range(self._count):
                (n,) = unpack(data, pos)
                pos += step + n
                if n > longest:
                    longest = n
        return longest


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6


class _Cursor:
    """Sequential reads from a GGUF header in the file's byte order."""

    def __init__(self, data: Any, pos: int, version: int, endian: str) -> None:
        self.data = data
        self.pos = pos
        self.version = version
        self.endian = endian
        self.size = len(data)

    def unpack(self, code: str) -> Any:
        fmt = self.endian + code
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def length(self) -> int:
        # GGUF v1 used 32-bit lengths and counts.
        return self.unpack("I" if self.version == 1 else "Q")

    def string(self) -> str:
        n = self.length()
        if n > self.size - self.pos:
            raise ValueError("string runs past the end of the file")
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.length()
        self.pos += n
        if self.pos > self.size:
            raise ValueError("string runs past the end of the file")

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        code = _SCALARS.get(value_type)
        if code is None:
            raise ValueError(f"invalid value type {value_type}")
        value = self.unpack(code)
        return go_float32(value) if value_type == _FLOAT32 else value

    def array(self, path: Path) -> GGUFArray:
        item_type = self.unpack("I")
        count = self.length()
        start = self.pos
        if item_type == _STRING:
            for _ in range(count):
                self.skip_string()
        elif item_type == _ARRAY:
            for _ in range(count):
                self.array(path)
        else:
            code = _SCALARS.get(item_type)
            if code is None:
                raise ValueError(f"invalid array type {item_type}")
            self.pos += struct.calcsize(code) * count
            if self.pos > self.size:
                raise ValueError("array runs past the end of the file")
        return _NestedArray(path, start, count, item_type, self) if item_type == _ARRAY else \
            GGUFArray(path, start, count, item_type, self.version, self.endian)


class _NestedArray(GGUFArray):
    """Arrays of arrays (rare): decoded eagerly by re-reading, element by element."""

    def __init__(self, path: Path, offset: int, count: int, item_type: int, cursor: _Cursor) -> None:
        super().__init__(path, offset, count, item_type, cursor.version, cursor.endian)

    def to_list(self) -> list[Any]:
        if self._items is None:
            with self._path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                cursor = _Cursor(data, self._offset, self._version, self._endian)
                self._items = [cursor.array(self._path).to_list() for _ in range(self._count)]
        return self._items


def _tensor_type_name(code: int) -> str:
    import gguf  # only for the names of ggml's tensor types

    try:
        return gguf.GGMLQuantizationType(code).name
    except ValueError:
        return f"type{code}"


def _parse(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The header's key/values and tensor list, and the parameter count (sum of elements)."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 24:
            raise ValueError("file too small for a GGUF header")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != GGUF_MAGIC:
                raise ValueError("bad magic")
            endian = "<"
            (version,) = struct.unpack_from("<I", data, 4)
            if version > 0xFFFF:  # written on a big-endian machine
                endian = ">"
                (version,) = struct.unpack_from(">I", data, 4)
            if version not in (1, 2, 3):
                raise ValueError(f"unsupported GGUF version {version}")
            cursor = _Cursor(data, 8, version, endian)
            tensor_count = cursor.length()
            kv_count = cursor.length()
            kv: dict[str, Any] = {}
            for _ in range(kv_count):
                key = cursor.string()
                value_type = cursor.unpack("I")
                kv[key] = cursor.array(path) if value_type == _ARRAY else cursor.value(value_type)
            tensors: list[dict[str, Any]] = []
            parameters = 0
            for _ in range(tensor_count):
                name = cursor.string()
                dims = cursor.unpack("I")
                if dims > 8:
                    raise ValueError(f"tensor {name!r} has {dims} dimensions")
                shape = [cursor.unpack("Q") for _ in range(dims)]
                kind = cursor.unpack("I")
                cursor.unpack("Q")  # data offset: not needed here
                elements = 1
                for n in shape:
                    elements *= n
                parameters += elements
                tensors.append({"name": name, "type": _tensor_type_name(kind), "shape": shape})
    return kv, tensors, parameters


def _as_int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, GGUFArray):
        numbers = [int(v) for v in value.to_list() if isinstance(v, (int, float))]
        return max(numbers) if numbers else default
    return default


def _read(path: Path) -> GGUFInfo:
    if not is_gguf(path):
        raise NotGGUF()
    try:
        kv, tensors, parameters = _parse(path)
    except (ValueError, struct.error, OSError) as exc:
        log.warning("gguf_unreadable", path=str(path), error=str(exc))
        raise NotGGUF() from None
    # Ollama counts parameters from the tensors and overwrites whatever the header says.
    kv["general.parameter_count"] = parameters

    arch = kv.get("general.architecture") if isinstance(kv.get("general.architecture"), str) else ""
    arch = arch or "unknown"

    def arch_value(key: str) -> Any:
        return kv.get(f"{arch}.{key}")

    embedding = _as_int(arch_value("embedding_length"))
    heads = _as_int(arch_value("attention.head_count"), 1) or 1
    head_dim = embedding // heads if heads else 0
    tokens = kv.get("tokenizer.ggml.tokens")

    def token(key: str) -> str | None:
        index = kv.get(key)
        if isinstance(tokens, GGUFArray) and isinstance(index, int) and 0 <= index < len(tokens):
            value = tokens[index]
            return value if isinstance(value, str) else None
        return None

    template = kv.get("tokenizer.chat_template")
    return GGUFInfo(
        path=path,
        architecture=arch,
        kind=kv.get("general.type") if isinstance(kv.get("general.type"), str) else "unknown",
        parameter_count=parameters,
        file_type_code=_as_int(kv.get("general.file_type")),
        context_length=_as_int(arch_value("context_length")),
        embedding_length=embedding,
        block_count=_as_int(arch_value("block_count")),
        head_count=heads,
        head_count_kv=_as_int(arch_value("attention.head_count_kv"), heads) or heads,
        key_length=_as_int(arch_value("attention.key_length"), head_dim) or head_dim,
        value_length=_as_int(arch_value("attention.value_length"), head_dim) or head_dim,
        chat_template=template if isinstance(template, str) and template else None,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        kv=kv,
        tensors=tuple(tensors),
    )


_CACHE_SIZE = 32
_lock = threading.Lock()
_cache: "OrderedDict[tuple[str, int, int], GGUFInfo]" = OrderedDict()
_loading: dict[tuple[str, int, int], threading.Lock] = {}


def read_gguf_info(path: Path | str) -> GGUFInfo:
    """Read (or recall) the header of the GGUF file at ``path``; raise :class:`NotGGUF`.

    Blobs never change once written, so a cached answer stays right for as long as the file's
    size and mtime do. Two threads asking for the same new file wait for one read.
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        loading = _loading.setdefault(key, threading.Lock())
    with loading:
        with _lock:
            if key in _cache:
                return _cache[key]
        try:
            info = _read(path)
        finally:
            with _lock:
                _loading.pop(key, None)
        with _lock:
            _cache[key] = info
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return info
