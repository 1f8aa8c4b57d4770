"""The memory plan of a calibrated method: peak device and host bytes, from the model's shapes.

    from prunemem.memplan import Shapes, plan
    from prunemem.prune.registry import resolve
    plan(resolve("sparsegpt", params), Shapes.pythia("12b"), sequences=128, seq_len=2048)   # {'device': ..., ...}
    plan("hessian", Shapes.pythia("12b"), 128, 2048)                         # the same, by memory-plan class

The class of a method is its registry trait ``workload`` (``KINDS``); this module reads no method names.

Arithmetic only (no torch), so the scheduler and the docs can read it. What is counted follows
:func:`prunemem.blockwise.blockwise` and the kernels of ``prune.calibrated`` / ``compress.gptq``:

- ``weights``: the whole model in the weight dtype, or, offloaded, the non-block modules plus one block;
- ``activations``: one block's calibration inputs, sequences x seq_len x hidden in the weight dtype
  (each micro-batch's outputs replace its inputs, so there is one copy);
- ``stats``: the block's accumulators, float64: a Hessian in^2 per linear (SparseGPT, GPTQ), or a
  squared-norm vector per linear (Wanda, OWL); none for SLEB and the CCDS embedding;
- ``transient``: the largest short-lived working set: a micro-batch through the block (MLP
  activations, eager attention scores, the statistics hook's float64 copy of its input), or the
  edit kernel on the widest linear (SparseGPT/GPTQ: the float64 weight plus four in x in
  factorisation buffers, measured; Wanda: float64 scores, sort values and int64 indices), or, for methods
  that run the whole model, SLEB's loss: a micro-batch's logits and their float32 copy (the CCDS
  embedding stops at the last hidden state).

Host: the checkpoint loaded in the weight dtype (the whole model stays there when offloaded),
the bit-packed masks (1 bit per prunable weight) and what the artifact carries (SparseGPT's
updated weights in the weight dtype; GPTQ's codes and scales).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3
DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shapes:
    """What the plan needs of a model config (GPT-NeoX's four linears unless ``block_linears`` says otherwise)."""

    hidden: int
    intermediate: int
    layers: int
    vocab: int
    heads: int
    rotary_dims: int
    block_linears: tuple[tuple[int, int], ...] | None = None  # (out, in) per the layer map (other families)

    @classmethod
    def from_config(cls, config) -> "Shapes":
        head = config.hidden_size // config.num_attention_heads
        rope = getattr(config, "rope_parameters", None) or {}  # transformers 5; older configs: rotary_pct
        share = rope.get("partial_rotary_factor", getattr(config, "rotary_pct", 1.0))
        if config.model_type == "gpt_neox":
            return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size,
                       config.num_attention_heads, int(head * share))
        from prunemem import arch

        shapes = arch.block_shapes(config)  # refuses a family the layer map does not know
        widest_mlp = max(max(shape) for lin, shape in shapes.items() if lin.part == "mlp")
        return cls(config.hidden_size, widest_mlp, config.num_hidden_layers, config.vocab_size,
                   config.num_attention_heads, int(head * share), tuple(shapes.values()))

    @classmethod
    def pythia(cls, size: str) -> "Shapes":
        """The published Pythia configs (EleutherAI/pythia-*), padded vocabulary included."""
        hidden, layers, heads = PYTHIA[size]
        return cls(hidden, 4 * hidden, layers, 50688 if size == "12b" else 50304, heads, hidden // heads // 4)

    @property
    def linears(self) -> list[tuple[int, int]]:
        """(out, in) of a block's prunable linears: query_key_value, dense, dense_h_to_4h, dense_4h_to_h
        (GPT-NeoX), or the layer map's for another family."""
        if self.block_linears is not None:
            return list(self.block_linears)
        h, i = self.hidden, self.intermediate
        return [(3 * h, h), (h, h), (i, h), (h, i)]

    @property
    def block_params(self) -> int:
        h = self.hidden
        return sum(o * n + o for o, n in self.linears) + 4 * h  # weights, biases, two LayerNorms

    @property
    def prunable(self) -> int:
        return self.layers * sum(o * n for o, n in self.linears)

    @property
    def params(self) -> int:
        return self.layers * self.block_params + 2 * self.vocab * self.hidden + 2 * self.hidden


PYTHIA = {"160m": (768, 12, 12), "410m": (1024, 24, 16), "1b": (2048, 16, 8), "1.4b": (2048, 24, 16),
          "2.8b": (2560, 32, 32), "6.9b": (4096, 32, 32), "12b": (5120, 36, 40)}
KINDS = {"scores": "Wanda, Wanda N:M, OWL", "hessian": "SparseGPT (unstructured and N:M)", "gptq": "GPTQ",
         "forward": "SLEB", "embed": "CCDS embedding"}


def _work(method) -> tuple[str, int]:
    """(memory-plan class, calibration passes) of a resolved method (``registry.Method``: its
    ``workload`` and ``calibration_passes`` traits), or of a class named directly (``"embed"``:
    the CCDS embedding, which is a step of a method, not a method). No method name is read here."""
    if isinstance(method, str):
        if method not in KINDS:
            raise ValueError(f"memory-plan class {method!r}; allowed: {', '.join(KINDS)}")
        return method, 2
    if method.workload not in KINDS:
        raise ValueError(f"method {method.name!r} has no memory plan (it reads no calibration set)")
    return method.workload, method.calibration_passes


def plan(method, shapes: Shapes, sequences: int, seq_len: int, batch_size: int = 8,
         dtype: str = "bfloat16", offload: bool = False, attention: str = "sdpa", gptq_bits: int = 4,
         gptq_group: int = 128) -> dict[str, int]:
    """Peak bytes of one calibrated job: ``device`` (and its parts) and ``host``.

    ``method``: a resolved ``registry.Method`` (its ``workload`` trait) or a class of ``KINDS``.

    ``attention``: ``eager`` holds a micro-batch's heads x seq_len^2 scores (the CPU default),
    ``sdpa`` does not (fused kernels on CUDA).
    """
    w, f64 = DTYPE_BYTES[dtype], 8
    h, n_layers = shapes.hidden, shapes.layers
    work, _ = _work(method)
    tokens = batch_size * seq_len
    non_block = (shapes.params - n_layers * shapes.block_params) * w
    weights = (non_block + shapes.block_params * w) if offload else shapes.params * w
    activations = sequences * seq_len * h * w if work in ("scores", "hessian", "gptq") else 0
    if work in ("hessian", "gptq"):
        stats = sum(n * n for _, n in shapes.linears) * f64
    elif work == "scores":
        stats = sum(n for _, n in shapes.linears) * f64
    else:
        stats = 0
    # a micro-batch through one block: its output, qkv, MLP up-projection and activation, eager scores
    scores = 2 * batch_size * shapes.heads * seq_len * seq_len * w if attention == "eager" else 0
    forward = tokens * (2 * h + 3 * h + 2 * shapes.intermediate) * w + scores
    rotary = 2 * tokens * shapes.rotary_dims * w * (sequences // batch_size if activations else 1)
    widest = max(n for _, n in shapes.linears)
    hook = {"hessian": tokens * widest * f64 + widest * widest * f64, "gptq": tokens * widest * f64 + widest**2 * f64,
            "scores": 2 * tokens * widest * f64}.get(work, 0)
    if work in ("hessian", "gptq"):
        kernel = max(o * n * f64 * (2 if work == "gptq" else 1) + o * n + 4 * n * n * f64 for o, n in shapes.linears)
    elif work == "scores":
        kernel = max(o * n * (3 * f64 + 1) for o, n in shapes.linears)
    else:
        kernel = 0
    logits = tokens * shapes.vocab * (w + 4) if work == "forward" else 0  # the embedding stops before embed_out
    transient = max(forward + hook, kernel, logits) + rotary
    device = weights + activations + stats + transient
    masks = shapes.prunable // 8
    carried = {"hessian": shapes.prunable * w,
               "gptq": shapes.prunable * gptq_bits // 8 + shapes.prunable // gptq_group * 2}.get(work, 0)
    host = shapes.params * w + (masks if work in ("scores", "hessian", "forward") else 0) + carried
    return {"device": device, "host": host, "weights": weights, "activations": activations, "stats": stats,
            "transient": transient}


def calibration_flop_parts(method, shapes: Shapes, sequences: int, seq_len: int, level: float = 0.5,
                           protect_ends: bool = True, pool: int | None = None) -> dict[str, float]:
    """FLOPs of one calibrated job, ``matmul`` (block forwards, in the weight dtype) and ``float64``
    (the statistics and edit kernels), which run at very different rates on a GPU.

    A block's forward over T tokens is 2 * (its matmul weights) * T plus 4 * seq_len * hidden * T
    for attention. Wanda: two passes per block (statistics, then the pruned block's outputs), plus
    each linear's float64 squared input norms (2 T in); OWL: Wanda twice (measuring, then pruning:
    its ``calibration_passes``). SparseGPT / GPTQ: the two passes, plus per linear, in float64, the
    Hessian (2 T in^2), its factorisation (~5/3 in^3: Cholesky, inverse, Cholesky) and the OBS
    updates (out in^2 + 128 out in, the lazy block updates and the in-block sweeps): d^3 per layer
    dominates. SLEB: every round scores every remaining candidate by a whole-model forward.
    The CCDS embedding: one forward of the pool (``pool`` windows, default ``sequences``).
    """
    tokens = sequences * seq_len
    matmul = sum(o * n for o, n in shapes.linears)
    block = 2 * matmul * tokens + 4 * seq_len * shapes.hidden * tokens
    work, passes = _work(method)
    if work in ("hessian", "gptq"):
        per_linear = sum(2 * tokens * n * n + 5 / 3 * n**3 + o * n * n + 128 * o * n for o, n in shapes.linears)
        return {"matmul": shapes.layers * 2 * block, "float64": shapes.layers * per_linear}
    if work == "forward":
        model = shapes.layers * block + 2 * shapes.vocab * shapes.hidden * tokens
        candidates = shapes.layers - (2 if protect_ends else 0)
        rounds = math.floor(level * shapes.layers + 1e-9)
        return {"matmul": model * sum(candidates - r for r in range(rounds)), "float64": 0.0}
    if work == "embed":
        return {"matmul": shapes.layers * block * (pool or sequences) / sequences, "float64": 0.0}
    norms = sum(2 * tokens * n for _, n in shapes.linears)  # one statistics pass in every two
    return {"matmul": shapes.layers * passes * block, "float64": shapes.layers * passes // 2 * norms}


def calibration_flops(method, shapes: Shapes, sequences: int, seq_len: int, level: float = 0.5,
                      protect_ends: bool = True, pool: int | None = None) -> float:
    """FLOPs of one calibrated job (the cost that scales its cluster resources and predicts GPU time):
    the sum of :func:`calibration_flop_parts`."""
    return sum(calibration_flop_parts(method, shapes, sequences, seq_len, level, protect_ends, pool).values())


def fit_error(figures: dict[str, int], free: int, key: str, offloaded: bool = False) -> str | None:
    """One line when the plan's device peak exceeds the free memory, with the fix; None when it fits.

    Resident, the fix is to stream blocks from host memory; offloaded already, what is left on the
    device is one block's calibration activations and the micro-batch's working set, so the fix is
    fewer calibration sequences or a smaller micro-batch."""
    if figures["device"] <= free:
        return None
    need = (f"{key}: the memory plan needs {figures['device'] / GIB:.1f} GiB on the device and "
            f"{free / GIB:.1f} GiB is free")
    if offloaded:
        return (f"{need} even with blocks streamed from host memory ({figures['activations'] / GIB:.1f} GiB of it "
                f"one block's calibration activations); set fewer samples.calibration.sequences or a smaller "
                f"{key}.batch_size")
    return f"{need}; set {key}.offload: true (blocks stream from host memory) or a smaller {key}.batch_size"


def table(sizes=("1.4b", "12b"), sequences: int = 128, seq_len: int = 2048) -> str:
    """Markdown: the plan of every method kind at each Pythia size, resident and offloaded (bench/README.md)."""
    rows = ["| size | method | device GiB (resident) | device GiB (offload) | host GiB |", "|---|---|---|---|---|"]
    for size in sizes:
        shapes = Shapes.pythia(size)
        for work, label in KINDS.items():
            a = plan(work, shapes, sequences, seq_len)
            b = plan(work, shapes, sequences, seq_len, offload=True)
            rows.append(f"| {size} | {label} | {a['device'] / GIB:.1f} | {b['device'] / GIB:.1f} | "
                        f"{a['host'] / GIB:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
