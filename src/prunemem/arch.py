"""The layer map: where each supported architecture keeps its blocks, its prunable linears and their roles.

Every method (magnitude and its paper strategies, Wanda, SparseGPT, OWL, N:M, SLEB, EvoP,
quantization, low rank, GPTQ, the reference perplexities, export) reaches modules and parameter
names through this map only; nothing else in prunemem names a module path. One ``Arch`` entry
per family, keyed by ``config.model_type``:

- ``body`` / ``blocks``: the causal LM's transformer and its block list (``gpt_neox.layers``,
  ``model.layers``, ``transformer.h``), so parameter names are ``{body}.{blocks}.{i}.{linear}.weight``;
- ``linears``: the prunable matrices of a block, each with its role (attention ``qkv`` fused or
  ``q``/``k``/``v`` and ``o``; MLP ``up``, ``gate``, ``down``) and whether it is stored transposed:
  GPT-2's ``Conv1D`` keeps its weight as [in, out], so the input dimension Wanda's rows, N:M
  groups, SparseGPT's and GPTQ's columns and quantization groups run along is the map's to say
  (``Matrix``), never a guess from the shape;
- ``attention`` / ``mlp`` and their norms: the two sublayers a block is made of, which is how a
  block or one sublayer is skipped (SLEB and EvoP replace the block by a pass-through, or a
  sublayer by a module adding zero);
- ``residual``: ``parallel`` (GPT-NeoX with ``use_parallel_residual``: x + attn(ln1 x) + mlp(ln2 x))
  or ``sequential`` (Llama, Qwen, GPT-2: h = x + attn(ln1 x); h + mlp(ln2 h)); for GPT-NeoX the
  config decides (``residual_key``);
- ``embed``, ``final_norm`` (attributes of the body) and ``unembed`` (of the causal LM, as the module
  names it: GPT-NeoX's ``lm_head``, which transformers saves as ``embed_out``).

Which linears are prunable follows Wanda's ``find_layers`` (github.com/locuslab/wanda,
lib/prune.py: every ``nn.Linear`` inside a decoder layer) and SparseGPT's per-layer sweep
(github.com/IST-DASLab/sparsegpt): embeddings, the unembedding, norms and biases are never pruned.

Adding a family: one ``Arch`` entry below (read the family's ``modeling_*.py`` in transformers for
the attribute names), and its tiny config in ``tests/test_arch.py``, whose invariants then cover
every method on it. An architecture the map does not know is refused with one line listing those
it knows (``for_type``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from prunemem.errors import PrunememError
from prunemem.prune.units import SUBLAYERS  # noqa: F401 (the unit names EvoP searches, whatever a block calls them)

if TYPE_CHECKING:  # torch is imported where a model is built: the map itself (and targets) stay torch-free
    import torch

ATTENTION_ROLES = ("qkv", "q", "k", "v", "o")
MLP_ROLES = ("up", "gate", "down")


@dataclass(frozen=True)
class Linear:
    """One prunable matrix of a block: its path under the block, its role, its storage layout."""

    path: str  # "attention.query_key_value", "self_attn.q_proj", "attn.c_attn"
    role: str  # one of ATTENTION_ROLES + MLP_ROLES
    transposed: bool = False  # weight stored [in, out] (GPT-2's Conv1D) instead of nn.Linear's [out, in]

    @property
    def part(self) -> str:
        return "attention" if self.role in ATTENTION_ROLES else "mlp"


@dataclass(frozen=True)
class Arch:
    """The layer map of one architecture (see the module docstring for each field)."""

    model_type: str
    model_class: str  # the transformers class that builds it (never remote code)
    body: str
    blocks: str
    embed: str
    final_norm: str
    unembed: str
    attention: str  # attribute of a block: the attention sublayer
    mlp: str
    attention_norm: str  # the norm in front of the attention sublayer
    mlp_norm: str
    linears: tuple[Linear, ...]
    residual: str = "sequential"  # or "parallel"
    residual_key: str | None = None  # config attribute that picks parallel (True) or sequential (False)
    saved_as: tuple[tuple[str, str], ...] = ()  # (file prefix, module prefix) transformers renames on load
    context_key: str = "max_position_embeddings"  # the config.json key holding the context length

    @cached_property
    def pattern(self) -> re.Pattern:
        """Parameter names of the prunable weights: group 1 the block index, group 2 the linear's path."""
        paths = "|".join(re.escape(lin.path) for lin in self.linears)
        return re.compile(rf"^{re.escape(self.body)}\.{re.escape(self.blocks)}\.(\d+)\.({paths})\.weight$")

    def linear(self, path: str) -> Linear:
        return next(lin for lin in self.linears if lin.path == path)

    def block_prefix(self, index: int) -> str:
        return f"{self.body}.{self.blocks}.{index}."

    def sublayer_attr(self, which: str) -> str:
        """The module attribute of sublayer ``which`` ('attention' or 'mlp') in a block."""
        return {"attention": self.attention, "mlp": self.mlp}[which]

    def residual_of(self, config) -> str:
        """'parallel' or 'sequential' for this config."""
        if self.residual_key is None:
            return self.residual
        return "parallel" if getattr(config, self.residual_key) else "sequential"


_LLAMA = dict(body="model", blocks="layers", embed="embed_tokens", final_norm="norm", unembed="lm_head",
              attention="self_attn", mlp="mlp", attention_norm="input_layernorm", mlp_norm="post_attention_layernorm",
              linears=(Linear("self_attn.q_proj", "q"), Linear("self_attn.k_proj", "k"),
                       Linear("self_attn.v_proj", "v"), Linear("self_attn.o_proj", "o"), Linear("mlp.gate_proj", "gate"), Linear("mlp.up_proj", "up"),
                       Linear("mlp.down_proj", "down")))

ARCHS: dict[str, Arch] = {a.model_type: a for a in (
    Arch("gpt_neox", "GPTNeoXForCausalLM", body="gpt_neox", blocks="layers", embed="embed_in",
         final_norm="final_layer_norm", unembed="lm_head", attention="attention", mlp="mlp",
         attention_norm="input_layernorm", mlp_norm="post_attention_layernorm",
         linears=(Linear("attention.query_key_value", "qkv"), Linear("attention.dense", "o"),
                  Linear("mlp.dense_h_to_4h", "up"), Linear("mlp.dense_4h_to_h", "down")),
         residual="parallel", residual_key="use_parallel_residual", saved_as=(("embed_out.", "lm_head."),)),
    Arch("llama", "LlamaForCausalLM", **_LLAMA),
    Arch("qwen2", "Qwen2ForCausalLM", **_LLAMA),
    Arch("qwen3", "Qwen3ForCausalLM", **_LLAMA),
    Arch("gpt2", "GPT2LMHeadModel", body="transformer", blocks="h", embed="wte", final_norm="ln_f",
         unembed="lm_head", attention="attn", mlp="mlp", attention_norm="ln_1", mlp_norm="ln_2",
         linears=(Linear("attn.c_attn", "qkv", True), Linear("attn.c_proj", "o", True),
                  Linear("mlp.c_fc", "up", True), Linear("mlp.c_proj", "down", True)),
         context_key="n_positions"),
)}


def for_type(model_type, where: str) -> Arch:
    """The map of ``model_type``; one line naming ``where`` (a file or key) and the known types otherwise."""
    if model_type not in ARCHS:
        raise PrunememError(f"{where}: model_type {model_type!r} is not in prunemem's layer map; known: "
                            f"{', '.join(sorted(ARCHS))} (docs/architecture.md, 'Layer map')")
    return ARCHS[model_type]


def of(model) -> Arch:
    """The map of a loaded causal LM (or of its config)."""
    config = getattr(model, "config", model)
    return for_type(getattr(config, "model_type", None), f"{type(model).__name__}.config")


def context_length(config: dict):
    """The context length a parsed config.json declares (under its family's key), or None."""
    family = ARCHS.get(config.get("model_type"))
    return config.get(family.context_key if family else "max_position_embeddings")


def model_class(arch: Arch):
    import transformers

    return getattr(transformers, arch.model_class)


def body(model) -> torch.nn.Module:
    return getattr(model, of(model).body)


def blocks(model) -> torch.nn.ModuleList:
    return getattr(body(model), of(model).blocks)


def set_blocks(model, modules) -> None:
    import torch

    setattr(body(model), of(model).blocks, modules if isinstance(modules, torch.nn.ModuleList)
            else torch.nn.ModuleList(modules))


def embedding(model) -> torch.nn.Module:
    return getattr(body(model), of(model).embed)


def final_norm(model) -> torch.nn.Module:
    return getattr(body(model), of(model).final_norm)


def unembedding(model) -> torch.nn.Module:
    return getattr(model, of(model).unembed)


def sublayer(block: torch.nn.Module, arch: Arch, which: str) -> torch.nn.Module:
    return getattr(block, arch.sublayer_attr(which))


def set_sublayer(block: torch.nn.Module, arch: Arch, which: str, module: torch.nn.Module) -> None:
    setattr(block, arch.sublayer_attr(which), module)


def match(name: str) -> tuple[Arch, int, Linear] | None:
    """(map, block index, linear) of a prunable parameter name, or None. Bodies differ between
    families (``gpt_neox.``, ``model.``, ``transformer.``), so a name belongs to at most one."""
    for arch in ARCHS.values():
        if m := arch.pattern.match(name):
            return arch, int(m.group(1)), arch.linear(m.group(2))
    return None


@dataclass(frozen=True)
class Matrix:
    """A prunable linear seen as the [out, in] matrix the kernels expect, whatever its storage.

    ``weight`` is a view (writes through it edit the module's parameter in place); ``to_param``
    turns an [out, in] result (mask, updated weight) back into the parameter's own layout.
    """

    module: torch.nn.Module
    transposed: bool = False

    @property
    def weight(self) -> torch.Tensor:
        w = self.module.weight
        return w.T if self.transposed else w

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def to_param(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.T.contiguous() if self.transposed else tensor


def out_in(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A stored weight as its [out, in] matrix (a view)."""
    return tensor.T if transposed else tensor


def block_matrices(model, index: int) -> dict[str, Matrix]:
    """``{module name: Matrix}`` of block ``index``'s prunable linears, in parameter-name order."""
    arch, modules = of(model), dict(model.named_modules())
    prefix = arch.block_prefix(index)
    names = sorted(prefix + lin.path for lin in arch.linears)
    return {n: Matrix(modules[n], arch.linear(n[len(prefix):]).transposed) for n in names if n in modules}


def require(model, families: tuple[str, ...], what: str) -> None:
    """One line when ``what`` (a method converted for some families only) meets another family."""
    arch = of(model)
    if arch.model_type not in families:
        raise PrunememError(f"{what} supports model_type {', '.join(families)} only, not {arch.model_type!r} "
                            "(the other methods run on every family of the layer map)")


def block_shapes(config) -> dict[Linear, tuple[int, int]]:
    """``{linear: (out, in)}`` of one block's prunable matrices for ``config``, from the model built
    on the meta device (no memory, whatever its size)."""
    import torch

    family = of(config)
    with torch.device("meta"):
        model = model_class(family)(config)
    prefix = family.block_prefix(0)
    return {family.linear(name[len(prefix):]): tuple(matrix.weight.shape)
            for name, matrix in block_matrices(model, 0).items()}
