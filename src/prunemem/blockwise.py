"""Block-by-block calibration: run calibration text through one transformer block at a time.

The inputs of block 0 are captured with every positional and keyword argument the model
passes it (attention mask, rotary position embeddings, ...), then each block is run on the
previous block's outputs. A caller collects per-linear statistics during a block's first pass,
edits that block's weights, and the block is re-run so the next block sees the edited outputs
(as GPTQ and SparseGPT do). Only one block's activations are alive at a time (each micro-batch's
outputs replace its inputs), which is what lets calibrated methods fit a 12B model on one GPU.

Where the weights live is a :class:`Placement`: the whole model on the compute device
(``offload=False``), or the model on the host with one block at a time moved to the device and
back (``offload=True``, as SparseGPT's and GPTQ's reference scripts do). The same code runs on
the CPU, where both are the identity. The bytes each choice needs are :mod:`prunemem.memplan`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from prunemem import arch

HOST = "cpu"


class _Captured(Exception):
    pass


@dataclass(frozen=True)
class Placement:
    """Where a calibrated method computes (``device``), the weights' dtype, and whether blocks stream from the host."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    offload: bool = False


def _layers(model) -> torch.nn.ModuleList:
    return arch.blocks(model)


def place(model, placement: Placement):
    """Cast ``model`` to the placement's dtype and put it where it computes; returns the model.

    With offload, everything but the blocks (embeddings, rotary tables, final norm, unembedding:
    small beside the blocks) goes to the device and the blocks stay on the host.
    """
    model.to(dtype=placement.dtype)
    if not placement.offload:
        return model.to(placement.device)
    blocks_attr = arch.of(model).blocks
    for name, child in arch.body(model).named_children():
        if name != blocks_attr:
            child.to(placement.device)
    arch.unembedding(model).to(placement.device)
    return model


def compute_device(model) -> torch.device:
    """The device a model computes on: where its input embedding is (blocks may be offloaded to the host)."""
    return arch.embedding(model).weight.device


@contextlib.contextmanager
def streamed(model):
    """Full forward passes over an offloaded model: each block visits the device for its own forward only."""
    device = compute_device(model)
    if all(p.device == device for p in _layers(model).parameters()):
        yield model
        return
    def arrive(module, args):
        module.to(device)

    def leave(module, args, output):
        module.to(HOST)

    handles = []
    for layer in _layers(model):
        handles.append(layer.register_forward_pre_hook(arrive))
        handles.append(layer.register_forward_hook(leave))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def block0_inputs(model, batches: list[torch.Tensor]) -> list[tuple[tuple, dict]]:
    """(args, kwargs) that block 0 receives for each micro-batch of token ids."""
    captured: list[tuple[tuple, dict]] = []

    def hook(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Captured

    handle = _layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def tensor_bytes(*objects) -> int:
    """Bytes of the distinct tensor storages reachable in ``objects`` (tensors, tuples, lists, dicts, stats)."""
    seen, total, stack = set(), 0, list(objects)
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
            stack.extend(vars(obj).values())
    return total


class HessianStats:
    """Accumulates H = 2/N * sum x x^T (float64) of one linear layer's inputs."""

    def __init__(self, in_features: int, device):
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.rows = 0

    def __call__(self, module, args, output) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        total = self.rows + x.shape[0]
        self.hessian.mul_(self.rows / total).add_(x.T @ x, alpha=2.0 / total)
        self.rows = total


@torch.no_grad()
def blockwise(model, calibration: torch.Tensor, make_stats: Callable[[arch.Matrix], object],
              edit_block: Callable[[int, dict[str, arch.Matrix], dict[str, object]], None],
              batch_size: int = 8, progress=None, meter: Callable[[int, dict], None] | None = None) -> None:
    """For each block: collect ``make_stats(matrix)`` hooks on its prunable linears over the
    calibration set, call ``edit_block(index, matrices, stats)``, and propagate the edited outputs.

    The linears come from the layer map as ``arch.Matrix`` (``.weight`` the [out, in] view, which
    GPT-2's transposed Conv1D needs; ``.to_param`` back to the parameter's layout), keyed by module name.

    An offloaded model's block is moved to the device for its turn and back afterwards.
    ``meter(index, bytes)``, when given, receives what block ``index`` held at its peak: the
    calibration activations, the statistics and the block's weights (what the memory plan counts).
    """
    device = compute_device(model)
    ids = calibration.long().to(device)
    batches = list(ids.split(batch_size))
    inputs = block0_inputs(model, batches)
    del ids, batches
    layers = _layers(model)
    indices = range(len(layers)) if progress is None else progress(range(len(layers)))
    for index in indices:
        layer = layers[index]
        home = next(layer.parameters()).device
        layer.to(device)
        linears = arch.block_matrices(model, index)
        stats = {n: make_stats(m) for n, m in linears.items()}
        handles = [m.module.register_forward_hook(stats[n]) for n, m in linears.items()]
        try:
            for args, kwargs in inputs:
                layer(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        if meter is not None:
            meter(index, {"activations": tensor_bytes([args[0] for args, _ in inputs]),
                          "stats": tensor_bytes(stats), "block_weights": tensor_bytes(list(layer.parameters()))})
        edit_block(index, linears, stats)
        del stats
        for j, (args, kwargs) in enumerate(inputs):  # in place: the old activations go as the new arrive
            inputs[j] = ((_hidden(layer(*args, **kwargs)), *args[1:]), kwargs)
        layer.to(home)


def choose_offload(figures, free: int, offload, key: str) -> bool:
    """Resident when the plan fits ``free`` bytes, else offloaded when that fits (``offload: auto``).

    ``figures(offload)`` is the memory plan of either choice. A fixed ``offload`` (true/false) that
    does not fit, or neither choice fitting, is one line with the plan's figure, the free memory
    and the fix, raised before any weights load.
    """
    from prunemem.errors import PrunememError
    from prunemem.memplan import fit_error

    choices = [False, True] if offload == "auto" else [bool(offload)]
    for choice in choices:
        if fit_error(figures(choice), free, key) is None:
            return choice
    raise PrunememError(fit_error(figures(choices[-1]), free, key, offloaded=choices[-1]))


def resolve_placement(section: dict, key: str, checkpoint, method, sequences: int, seq_len: int) -> Placement:
    """The placement of a calibrated job from its params section (``device``, ``dtype``, ``offload``,
    ``batch_size``); checks CUDA and the memory plan before any weights load.

    ``method``: the resolved ``registry.Method`` (its memory plan is its ``workload`` trait)."""
    from prunemem.runtime import resolve_device

    device, dtype = resolve_device(section.get("device", "auto"), section.get("dtype", "auto"), key)
    offload = section.get("offload", "auto")
    if device == "cpu":  # host memory is the model's home anyway: nothing to stream
        return Placement("cpu", dtype, False)
    from transformers import AutoConfig

    from prunemem import memplan

    shapes = memplan.Shapes.from_config(AutoConfig.from_pretrained(checkpoint, local_files_only=True,
                                                                   trust_remote_code=False))
    free, _ = torch.cuda.mem_get_info(device)
    name = str(dtype).removeprefix("torch.")

    def figures(off: bool) -> dict:
        return memplan.plan(method, shapes, sequences, seq_len, section.get("batch_size", 8), name, off)

    return Placement(device, dtype, choose_offload(figures, free, offload, key))


class LiveBytes:
    """Peak bytes of the tensors allocated while active (a TorchDispatchMode), device-agnostic.

    Counts each new storage an op outputs until the last tensor on it is freed, so on the CPU it
    measures what ``torch.cuda.max_memory_allocated`` measures on a GPU (less the allocator's
    rounding). Tensors that existed before entering (the model's weights), and in-place results on
    them, are not counted.
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                for t in torch.utils._pytree.tree_leaves((args, kwargs)):  # in-place outputs of older tensors
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in tracker._refs:
                        tracker._known.add(t.untyped_storage().data_ptr())
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        tracker._track(t)
                return out

        self.mode, self.live, self.peak, self._refs, self._known = _Mode(), 0, 0, {}, set()

    def _track(self, t: torch.Tensor) -> None:
        import weakref

        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if ptr in self._known or not size:
            return
        if ptr not in self._refs:
            self._refs[ptr] = [0, size]
            self.live += size
            self.peak = max(self.peak, self.live)
        self._refs[ptr][0] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        ref = self._refs.get(ptr)
        if ref is None:
            return
        ref[0] -= 1
        if ref[0] == 0:
            self.live -= ref[1]
            del self._refs[ptr]

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)
