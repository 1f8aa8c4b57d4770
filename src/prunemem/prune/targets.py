"""Which weights are prunable, and the subsets the paper's strategies restrict themselves to.

Prunable (docs/architecture.md, "Semantics the numbers depend on"): the ``nn.Linear`` weights inside transformer blocks, i.e. in
GPT-NeoX ``query_key_value``, ``attention.dense``, ``dense_h_to_4h`` and ``dense_4h_to_h``.
Embeddings, ``embed_out``, LayerNorms and biases are never pruned.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

PRUNABLE = re.compile(r"^gpt_neox\.layers\.(\d+)\.(attention\.(?:query_key_value|dense)|mlp\.(?:dense_h_to_4h|dense_4h_to_h))\.weight$")


@dataclass(frozen=True)
class Target:
    name: str
    layer: int
    part: str  # "attention" or "mlp"


def prunable(names: list[str]) -> list[Target]:
    """The prunable tensors among ``names``, in (layer, name) order."""
    found = []
    for name in names:
        if m := PRUNABLE.match(name):
            found.append(Target(name, int(m.group(1)), m.group(2).split(".")[0]))
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


class WeightSource:
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
            raise ValueError(f"{self.path}: no prunable GPT-NeoX block weights found")

    def __getitem__(self, name: str):
        return self._file.get_tensor(name)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]


class DictSource:
    """The same interface over an in-memory state dict (tests, models already loaded)."""

    def __init__(self, state_dict: dict):
        self._sd = state_dict
        self.path = None
        self.targets = prunable(list(state_dict))

    def __getitem__(self, name: str):
        return self._sd[name]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]
