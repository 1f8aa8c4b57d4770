"""Block-by-block calibration: run calibration text through one transformer block at a time.

The inputs of block 0 are captured with every positional and keyword argument the model
passes it (attention mask, rotary position embeddings, ...), then each block is run on the
previous block's outputs. A caller collects per-linear statistics during a block's first pass,
edits that block's weights, and the block is re-run so the next block sees the edited outputs
(as GPTQ and SparseGPT do). Only one block's activations are alive at a time, which is what
lets calibrated methods fit a 12B model on one GPU.
"""

from __future__ import annotations

from typing import Callable

import torch

from prunemem.prune.targets import prunable


class _Captured(Exception):
    pass


def _layers(model) -> torch.nn.ModuleList:
    return model.gpt_neox.layers


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
def blockwise(model, calibration: torch.Tensor, make_stats: Callable[[torch.nn.Linear], object],
              edit_block: Callable[[int, dict[str, torch.nn.Linear], dict[str, object]], None],
              batch_size: int = 8, progress=None) -> None:
    """For each block: collect ``make_stats(linear)`` hooks on its prunable linears over the
    calibration set, call ``edit_block(index, linears, stats)``, and propagate the edited outputs."""
    device = next(model.parameters()).device
    ids = calibration.long().to(device)
    batches = list(ids.split(batch_size))
    inputs = block0_inputs(model, batches)
    modules = dict(model.named_modules())
    names = [t.name.rsplit(".", 1)[0] for t in prunable([n for n, _ in model.named_parameters()])]
    layers = _layers(model)
    indices = range(len(layers)) if progress is None else progress(range(len(layers)))
    for index in indices:
        layer = layers[index]
        prefix = f"gpt_neox.layers.{index}."
        linears = {n: modules[n] for n in names if n.startswith(prefix)}
        stats = {n: make_stats(m) for n, m in linears.items()}
        handles = [m.register_forward_hook(stats[n]) for n, m in linears.items()]
        try:
            for args, kwargs in inputs:
                layer(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        edit_block(index, linears, stats)
        inputs = [((_hidden(layer(*args, **kwargs)), *args[1:]), kwargs) for args, kwargs in inputs]
