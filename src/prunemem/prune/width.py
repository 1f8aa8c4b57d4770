"""Width units: the MLP neurons and attention heads of a GPT-NeoX model, their weight slices, and
physical shrinking (docs/architecture.md, "Width units").

The one home of the width-unit concept, read by width pruning (``prunemem.prune.adapruner``) and
targeted forgetting. A unit is

- a **neuron** ``i`` of block ``b``: row ``i`` of ``mlp.dense_h_to_4h`` (weight and bias) and
  column ``i`` of ``mlp.dense_4h_to_h``;
- a **head** ``h`` of block ``b``: its q, k and v rows of the fused ``attention.query_key_value``
  (weight and bias) and its columns of ``attention.dense``. HF's ``GPTNeoXAttention`` views the
  fused output as ``[..., heads, 3 * head_size]`` and chunks the last dim into q, k, v, so the
  rows of head ``h`` are the contiguous range ``[3 d h, 3 d (h + 1))`` (layout
  ``[head][q, k, v][head_dim]``), and its input columns of ``attention.dense`` are ``[d h, d (h + 1))``.

Ablating a unit (``units_zeroed``) and removing it (``shrink``) give the same function: a zeroed
neuron contributes act(0) = 0 for GELU-family activations, a zeroed head's v rows give a zero
output whatever its attention pattern, and the output biases (``dense_4h_to_h.bias``,
``attention.dense.bias``) stay. The module's forward views the fused output with ``-1`` heads
and reshapes the attention output with ``-1``, so a smaller ``query_key_value`` runs unchanged;
heads keep their ``head_size`` (rotary embeddings depend on it), so ``config.num_attention_heads``
is left alone and the per-block widths go into ``config.width_per_block``.

    from prunemem.prune.width import WidthUnit, shrink
    shrink(model, [WidthUnit(0, "neuron", 7), WidthUnit(1, "head", 2)])
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from prunemem import arch
from prunemem.errors import PrunememError

KINDS = ("head", "neuron")
SUBLAYER_OF = {"head": "attention", "neuron": "mlp"}


@dataclass(frozen=True, order=True)
class WidthUnit:
    block: int
    kind: str  # "neuron" | "head"
    index: int

    @property
    def name(self) -> str:
        """'3.head.2', '0.neuron.17': how the mask header and reports write it."""
        return f"{self.block}.{self.kind}.{self.index}"

    @classmethod
    def parse(cls, name: str) -> "WidthUnit":
        block, kind, index = name.split(".")
        if kind not in KINDS:
            raise PrunememError(f"width unit {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
        return cls(int(block), kind, int(index))


FAMILIES = ("gpt_neox",)  # the fused-qkv head layout below is GPT-NeoX's; other families are refused


def _layers(model) -> torch.nn.ModuleList:
    arch.require(model, FAMILIES, "width pruning (width-*, adapruner*, localize-*: heads and neurons)")
    return arch.blocks(model)


def head_size(model, block: int) -> int:
    return _layers(model)[block].attention.head_size


def counts(model, block: int) -> dict[str, int]:
    """The current number of heads and neurons of a block (after any shrinking)."""
    widths = _widths(_layers(model)[block])
    return {"head": widths["heads"], "neuron": widths["neurons"]}


def width_units(model) -> list[WidthUnit]:
    """Every head and neuron, in ``WidthUnit`` order: by block, heads before neurons, by index."""
    return [WidthUnit(b, kind, i) for b in range(len(_layers(model)))
            for kind in KINDS for i in range(counts(model, b)[kind])]


def _prefix(block: int) -> str:
    return arch.ARCHS["gpt_neox"].block_prefix(block)


def unit_slices(model, unit: WidthUnit) -> list[tuple[str, int, slice]]:
    """``(parameter name, dim, indices)`` of every parameter entry that belongs to ``unit``, biases included.

    Output biases (``attention.dense.bias``, ``mlp.dense_4h_to_h.bias``) are shared by all units of
    the sublayer and belong to none.
    """
    layer = _layers(model)[unit.block]
    p = _prefix(unit.block)
    if unit.kind == "head":
        d = layer.attention.head_size
        rows, cols = slice(3 * d * unit.index, 3 * d * (unit.index + 1)), slice(d * unit.index, d * (unit.index + 1))
        out = [(p + "attention.query_key_value.weight", 0, rows)]
        if layer.attention.query_key_value.bias is not None:
            out.append((p + "attention.query_key_value.bias", 0, rows))
        return out + [(p + "attention.dense.weight", 1, cols)]
    if unit.kind == "neuron":
        i = slice(unit.index, unit.index + 1)
        out = [(p + "mlp.dense_h_to_4h.weight", 0, i)]
        if layer.mlp.dense_h_to_4h.bias is not None:
            out.append((p + "mlp.dense_h_to_4h.bias", 0, i))
        return out + [(p + "mlp.dense_4h_to_h.weight", 1, i)]
    raise PrunememError(f"width unit {unit}: kind {unit.kind!r} is not one of {', '.join(KINDS)}")


def unit_size(model, unit: WidthUnit) -> int:
    """How many parameters removing ``unit`` removes."""
    params = dict(model.named_parameters())
    total = 0
    for name, dim, index in unit_slices(model, unit):
        shape = list(params[name].shape)
        shape[dim] = index.stop - index.start
        total += int(torch.Size(shape).numel())
    return total


def _grouped(model, units: Iterable[WidthUnit]) -> dict[tuple[str, int], torch.Tensor]:
    """``{(parameter name, dim): sorted index tensor}`` over all the units' slices."""
    grouped: dict[tuple[str, int], list[int]] = defaultdict(list)
    for unit in units:
        for name, dim, index in unit_slices(model, unit):
            grouped[(name, dim)].extend(range(index.start, index.stop))
    return {key: torch.tensor(sorted(set(idx)), dtype=torch.long) for key, idx in grouped.items()}


@contextmanager
def units_zeroed(model, units: Iterable[WidthUnit]) -> Iterator[None]:
    """Ablate ``units`` in place inside the ``with``; the weights are restored bit-exactly after."""
    params = dict(model.named_parameters())
    saved = []
    with torch.no_grad():
        for (name, dim), index in _grouped(model, units).items():
            weight = params[name]
            index = index.to(weight.device)
            saved.append((weight, dim, index, weight.index_select(dim, index).clone()))
            weight.index_fill_(dim, index, 0)
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, dim, index, values in saved:
                weight.index_copy_(dim, index, values)


class _BiasOnly(torch.nn.Module):
    """A sublayer whose every unit was removed: it outputs its output bias (zero without one), which
    is what the zeroed sublayer computes. Attention returns ``(output, None)`` as HF's does."""

    def __init__(self, bias: torch.Tensor | None, hidden: int, attention: bool):
        super().__init__()
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.hidden, self.attention = hidden, attention

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states.new_zeros(hidden_states.shape[:-1] + (self.hidden,))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return (out, None) if self.attention else out


def _select(linear: torch.nn.Linear, dim: int, keep: torch.Tensor) -> torch.nn.Linear:
    """A new Linear holding only the kept output rows (``dim`` 0, bias too) or input columns (``dim`` 1)."""
    keep = keep.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, keep)
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                          device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach().index_select(0, keep) if dim == 0 else linear.bias.detach())
    out.weight.requires_grad_(linear.weight.requires_grad)
    return out


def check_removable(model, units: Iterable[WidthUnit], allow_empty_sublayer: bool = False, key: str = "units") -> None:
    """One line naming the first layer whose every head (or neuron) ``units`` would remove."""
    if allow_empty_sublayer:
        return
    removed: dict[tuple[int, str], int] = defaultdict(int)
    for unit in set(units):
        removed[(unit.block, unit.kind)] += 1
    for (block, kind), n in sorted(removed.items()):
        if n >= counts(model, block)[kind]:
            raise PrunememError(f"{key}: would remove every {kind} of layer {block} "
                                f"(gpt_neox.layers.{block}.{SUBLAYER_OF[kind]}); allowed: keep at least one, "
                                f"or set prune.width.allow_empty_sublayer: true")


@torch.no_grad()
def shrink(model, units: Iterable[WidthUnit], allow_empty_sublayer: bool = False):
    """Physically remove ``units``: smaller matrices, the same function as ``units_zeroed``.

    A sublayer that loses every unit is refused unless ``allow_empty_sublayer``; then it becomes a
    module that outputs its output bias. Returns ``model`` (changed in place); ``config.width_per_block``
    records each block's remaining ``heads`` and ``neurons``.
    """
    units = sorted(set(units))
    check_removable(model, units, allow_empty_sublayer)
    by_block: dict[int, dict[str, set[int]]] = defaultdict(lambda: {k: set() for k in KINDS})
    for unit in units:
        by_block[unit.block][unit.kind].add(unit.index)
    for block, removed in sorted(by_block.items()):
        layer = _layers(model)[block]
        have = counts(model, block)
        for kind, gone in removed.items():
            if not gone:
                continue
            if max(gone) >= have[kind]:
                raise PrunememError(f"width unit {block}.{kind}.{max(gone)}: layer {block} has {have[kind]} {kind}s")
            keep_units = [i for i in range(have[kind]) if i not in gone]
            if kind == "head":
                att, d = layer.attention, layer.attention.head_size
                if not keep_units:
                    layer.attention = _BiasOnly(att.dense.bias, att.dense.out_features, attention=True)
                    continue
                rows = torch.tensor([3 * d * h + j for h in keep_units for j in range(3 * d)])
                cols = torch.tensor([d * h + j for h in keep_units for j in range(d)])
                att.query_key_value = _select(att.query_key_value, 0, rows)
                att.dense = _select(att.dense, 1, cols)
            else:
                mlp = layer.mlp
                if not keep_units:
                    layer.mlp = _BiasOnly(mlp.dense_4h_to_h.bias, mlp.dense_4h_to_h.out_features, attention=False)
                    continue
                keep = torch.tensor(keep_units)
                mlp.dense_h_to_4h = _select(mlp.dense_h_to_4h, 0, keep)
                mlp.dense_4h_to_h = _select(mlp.dense_4h_to_h, 1, keep)
    model.config.width_per_block = [_widths(layer) for layer in _layers(model)]
    return model


def _widths(layer) -> dict[str, int]:
    att, mlp = layer.attention, layer.mlp
    heads = 0 if isinstance(att, _BiasOnly) else att.query_key_value.out_features // (3 * att.head_size)
    neurons = 0 if isinstance(mlp, _BiasOnly) else mlp.dense_h_to_4h.out_features
    return {"heads": heads, "neurons": neurons}


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _pad(linear: torch.nn.Linear, dim: int, size: int) -> torch.nn.Linear:
    """``linear`` with zero output rows (``dim`` 0, zero bias too) or zero input columns (``dim`` 1) appended
    up to ``size``: a zero unit computes nothing, wherever it sits."""
    have = linear.weight.shape[dim]
    if have == size:
        return linear
    shape = list(linear.weight.shape)
    shape[dim] = size
    out = torch.nn.Linear(shape[1], shape[0], bias=linear.bias is not None, device=linear.weight.device,
                          dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.zero_()
        out.weight.narrow(dim, 0, have).copy_(linear.weight)
        if linear.bias is not None:
            out.bias.zero_()
            out.bias.narrow(0, 0, linear.bias.shape[0]).copy_(linear.bias)
    return out


@torch.no_grad()
def standard_form(model) -> dict[str, int]:
    """Give a shrunk model shapes a standard ``GPTNeoXConfig`` describes, computing the same function, so
    ``save_pretrained`` / ``from_pretrained`` round-trip it (export).

    Heads cannot change count without changing ``head_size``, so removed heads come back as zero heads;
    the MLPs are padded with zero neurons to the widest block, which becomes ``config.intermediate_size``
    (all blocks equally pruned: the file really is smaller). An emptied sublayer becomes the standard
    module with zero weights and its output bias. Returns the new ``intermediate_size`` and head count.
    """
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention, GPTNeoXMLP

    layers, config = _layers(model), model.config
    widest = max(1, max(_widths(layer)["neurons"] for layer in layers))
    heads = config.num_attention_heads
    for i, layer in enumerate(layers):
        ref = next(p for p in model.parameters())
        for sub in ("attention", "mlp"):
            module = getattr(layer, sub)
            if isinstance(module, _BiasOnly):
                standard = GPTNeoXAttention(config, i) if sub == "attention" else \
                    GPTNeoXMLP(config.__class__(**{**config.to_dict(), "intermediate_size": widest}))
                standard = standard.to(device=ref.device, dtype=ref.dtype)
                for p in standard.parameters():
                    p.zero_()
                out = standard.dense if sub == "attention" else standard.dense_4h_to_h
                if module.bias is not None and out.bias is not None:
                    out.bias.copy_(module.bias)
                setattr(layer, sub, standard)
        att, mlp = layer.attention, layer.mlp
        d = att.head_size
        att.query_key_value = _pad(att.query_key_value, 0, 3 * d * heads)
        att.dense = _pad(att.dense, 1, d * heads)
        mlp.dense_h_to_4h = _pad(mlp.dense_h_to_4h, 0, widest)
        mlp.dense_4h_to_h = _pad(mlp.dense_4h_to_h, 1, widest)
    config.intermediate_size = widest
    if hasattr(config, "width_per_block"):
        del config.width_per_block
    return {"intermediate_size": widest, "num_attention_heads": heads}
