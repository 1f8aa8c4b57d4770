"""Which weights are prunable, and the subsets the paper's strategies restrict themselves to.

Prunable (docs/architecture.md, "Semantics the numbers depend on"): the linear weights inside
transformer blocks that the layer map (``prunemem.arch``) lists for the family, e.g. GPT-NeoX
``query_key_value``, ``attention.dense``, ``dense_h_to_4h`` and ``dense_4h_to_h``; Llama/Qwen
``q/k/v/o_proj`` and ``gate/up/down_proj``; GPT-2 ``c_attn``, ``attn.c_proj``, ``c_fc``, ``mlp.c_proj``.
Embeddings, the unembedding, norms and biases are never pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from prunemem import arch


@dataclass(frozen=True)
class Target:
    name: str
    layer: int
    part: str  # "attention" or "mlp"
    role: str = ""  # the layer map's role: qkv, q, k, v, o, up, gate, down
    transposed: bool = False  # stored [in, out] (GPT-2's Conv1D): arch.out_in gives the [out, in] matrix


def prunable(names: list[str]) -> list[Target]:
    """The prunable tensors among ``names`` (any family of the layer map), in (layer, name) order."""
    found = []
    for name in names:
        if hit := arch.match(name):
            _, layer, linear = hit
            found.append(Target(name, layer, linear.part, linear.role, linear.transposed))
    return sorted(found, key=lambda t: (t.layer, t.name))


def blocks_at_edges(n_layers: int, fraction: float) -> int:
    """How many blocks first25/last25 cover: ceil(fraction * layers), at least one."""
    return max(1, math.ceil(fraction * n_layers - 1e-9))


def subset(targets: list[Target], which: str, block_fraction: float) -> list[Target]:
    """The targets a strategy prunes: all, attention, mlp, first or last blocks."""
    n_layers = max(t.layer for t in targets) + 1
    edge = blocks_at_edges(n_layers, block_fraction)
    keep = {
        "all": lambda t: True,
        "attention": lambda t: t.part == "attention",
        "mlp": lambda t: t.part == "mlp",
        "first": lambda t: t.layer < edge,
        "last": lambda t: t.layer >= n_layers - edge,
    }[which]
    return [t for t in targets if keep(t)]


class _Source:
    """What both sources share: the targets' names and their [out, in] matrices."""

    targets: list[Target]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    def matrix(self, name: str):
        """Tensor ``name`` as its [out, in] matrix (the kernels' rows and input columns), per the layer map."""
        return arch.out_in(self[name], self._transposed[name])

    @property
    def _transposed(self) -> dict[str, bool]:
        if not hasattr(self, "_layout"):
            self._layout = {t.name: t.transposed for t in self.targets}
        return self._layout


class WeightSource(_Source):
    """Prunable weights read one tensor at a time from a safetensors file (memory-mapped).

    Reading lazily keeps peak memory at about one tensor, which is what lets a 12B model's
    masks be computed on a modest machine.
    """

    def __init__(self, weights_file: str | Path):
        from safetensors import SafetensorError, safe_open

        from prunemem.errors import PrunememError

        self.path = Path(weights_file)
        try:
            self._file = safe_open(str(self.path), framework="pt")
        except (OSError, SafetensorError) as err:
            raise PrunememError(f"{self.path}: missing or corrupt checkpoint weights ({err})") from None
        self.targets = prunable(list(self._file.keys()))
        if not self.targets:
            raise ValueError(f"{self.path}: no prunable block weights of a family in the layer map "
                             f"({', '.join(sorted(arch.ARCHS))})")

    def __getitem__(self, name: str):
        return self._file.get_tensor(name)


class DictSource(_Source):
    """The same interface over an in-memory state dict (tests, models already loaded)."""

    def __init__(self, state_dict: dict):
        self._sd = state_dict
        self.path = None
        self.targets = prunable(list(state_dict))

    def __getitem__(self, name: str):
        return self._sd[name]
