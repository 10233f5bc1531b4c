"""Memory accounting: what a model will cost, and what the machine can give it.

The scheduler never asks the operating system "will this fit?" after the fact; it estimates each
model from its GGUF metadata before loading and keeps a ledger of what loaded models were
estimated at. The estimate is deliberately a little pessimistic: evicting one model too many costs
a reload, while loading one model too many costs the whole machine (swap, or the OOM killer).

    weights  = bytes of the GGUF file (+ adapters and projector)
    kv cache = 2 (K and V) × layers × context × slots × kv heads × head size × bytes per element
    compute  = the graph llama.cpp allocates for one ubatch: logits row, activations and the
               attention score matrix (ubatch × context × heads × 4 bytes without flash attention)
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence

import attrs

from trillama.logs import get_logger

__all__ = [
    "ModelShape",
    "MemoryEstimate",
    "Device",
    "Placement",
    "estimate",
    "discover_devices",
    "place",
    "KV_BYTES",
]

log = get_logger("trillama.actors.memory")

KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
#: What llama.cpp keeps beside the graph and buffers (allocator slack, thread scratch, Python).
RUNNER_OVERHEAD = 64 * 2**20
#: Per-GPU reserve Ollama keeps on CUDA devices; the driver and the CUDA context need it.
GPU_MINIMUM_RESERVE = 457 * 2**20


class ModelShape(Protocol):
    """The GGUF facts the estimate needs (``trillama.store.gguf_info.GGUFInfo`` provides them)."""

    block_count: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    key_length: int | None
    value_length: int | None
    context_length: int


@attrs.frozen
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    #: Bytes per transformer layer (weights + its KV), used to choose partial GPU offload.
    per_layer: int
    layers: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + RUNNER_OVERHEAD


def estimate(
    shape: ModelShape,
    *,
    file_bytes: int,
    extra_bytes: int = 0,
    num_ctx: int,
    num_parallel: int,
    num_batch: int = 512,
    n_vocab: int = 32000,
    kv_cache_type: str = "f16",
    flash_attention: bool = False,
) -> MemoryEstimate:
    layers = max(1, int(shape.block_count or 1))
    heads = max(1, int(shape.head_count or 1))
    kv_heads = max(1, int(shape.head_count_kv or heads))
    embd = max(1, int(shape.embedding_length or 1))
    head_k = int(shape.key_length or embd // heads)
    head_v = int(shape.value_length or embd // heads)
    ctx_total = num_ctx * num_parallel
    per_elem = KV_BYTES.get(kv_cache_type, 2.0)
    kv = int(layers * ctx_total * kv_heads * (head_k + head_v) * per_elem)
    ubatch = min(num_batch, 512)
    activations = 4 * ubatch * (n_vocab + 6 * embd)
    scores = 0 if flash_attention else 4 * ubatch * ctx_total * heads
    compute = activations + scores
    weights = file_bytes + extra_bytes
    per_layer = weights // (layers + 1) + kv // layers
    return MemoryEstimate(weights=weights, kv_cache=kv, compute=compute, per_layer=per_layer, layers=layers)


@attrs.frozen
class Device:
    """A place to put model memory: the host's RAM, or one GPU."""

    kind: str  # "cpu" or "cuda"
    index: int
    name: str
    total: int
    free: int


@attrs.frozen
class Placement:
    """Where one model goes: how many layers on the GPU, and the bytes on each side."""

    n_gpu_layers: int
    gpu_index: int | None
    size: int
    size_vram: int


def _system_ram() -> Device:
    import psutil

    vm = psutil.virtual_memory()
    return Device(kind="cpu", index=0, name="system", total=vm.total, free=vm.available)


def _nvidia_gpus() -> list[Device]:
    """GPUs through NVML, when the driver is there and the engine was built to use them."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return []
    try:
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            return []
    except Exception:
        return []
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    devices = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            devices.append(Device(kind="cuda", index=i, name=name, total=int(mem.total), free=int(mem.free)))
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return devices


def discover_devices() -> tuple[Device, list[Device]]:
    """The host RAM and the usable GPUs, read now (free memory changes as models come and go)."""
    return _system_ram(), _nvidia_gpus()


def place(
    est: MemoryEstimate,
    gpus: Sequence[Device],
    *,
    gpu_overhead: int = 0,
    num_gpu: int = -1,
    reserved_vram: dict[int, int] | None = None,
) -> Placement:
    """Choose GPU offload: all layers on the GPU with most room if they fit, else as many as fit.

    ``num_gpu`` is Ollama's option: -1 decides automatically, 0 forces the CPU, N asks for N layers.
    ``reserved_vram`` is what the ledger already promised to loaded models on each GPU, since NVML's
    free figure lags behind allocations a runner is still making.
    """
    reserved_vram = reserved_vram or {}
    total = est.total
    if num_gpu == 0 or not gpus:
        return Placement(n_gpu_layers=0, gpu_index=None, size=total, size_vram=0)
    best = max(gpus, key=lambda d: d.free - reserved_vram.get(d.index, 0))
    room = best.free - reserved_vram.get(best.index, 0) - gpu_overhead - GPU_MINIMUM_RESERVE
    layers_all = est.layers + 1  # llama.cpp counts the output layer as one more
    if num_gpu > 0:
        wanted = min(num_gpu, layers_all)
    elif room >= total:
        wanted = layers_all
    else:
        fixed = est.compute + RUNNER_OVERHEAD
        wanted = max(0, min(layers_all, int((room - fixed) // max(1, est.per_layer))))
    if wanted <= 0:
        return Placement(n_gpu_layers=0, gpu_index=None, size=total, size_vram=0)
    if wanted >= layers_all:
        vram = total
    else:
        vram = est.compute + RUNNER_OVERHEAD + wanted * est.per_layer
    return Placement(n_gpu_layers=wanted, gpu_index=best.index, size=total, size_vram=min(vram, total))
