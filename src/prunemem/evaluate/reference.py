"""Reference points for perplexity: a unigram, an interpolated bigram, and the model with every block removed.

    summary.json of the dense variant: "reference_perplexity": {"unigram": .., "bigram": .., "no_blocks": ..}

They show the quality regime at a glance: a model near its bigram is barely a language model,
and pruning cannot cost it much. The n-grams are counted on the exact training rows the
embedded model was trained on (``training_rows.safetensors``), within rows, and score exactly
the tokens the model's sliding-window perplexity scores (``prunemem.evaluate.perplexity.spans``),
each given the token before it.

- unigram: add-one (Laplace) estimate over the vocabulary;
- bigram: Witten-Bell interpolation with that unigram, ``P(w|v) = (c(v,w) + T(v) P1(w)) / (c(v) + T(v))``
  where ``T(v)`` is the number of distinct tokens seen after ``v`` (Chen & Goodman, "An Empirical
  Study of Smoothing Techniques for Language Modeling", 1998, section 2.4). It has no tuned
  parameter, so nothing is fitted on the held-out text.
- no_blocks: embeddings -> final norm -> unembedding, i.e. the residual stream with every
  block's contribution removed, as SLEB or EvoP removing all blocks would leave it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from prunemem.evaluate.perplexity import Span


def scored_pairs(tokens: torch.Tensor, todo: list[Span]) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, token) for every token the sliding-window perplexity scores."""
    positions = np.concatenate([np.arange(s.first_scored, s.end) for s in todo])
    stream = tokens.numpy()
    return stream[positions - 1], stream[positions]


def ngram_perplexity(rows: torch.Tensor, vocab_size: int, previous: np.ndarray, target: np.ndarray
                     ) -> dict[str, float]:
    """Unigram and Witten-Bell bigram perplexity of ``target`` given ``previous``, counted on ``rows`` [n, seq]."""
    rows = rows.numpy().astype(np.int64)
    unigram = np.bincount(rows.ravel(), minlength=vocab_size).astype(np.float64)
    p1 = (unigram + 1.0) / (unigram.sum() + vocab_size)
    pairs = (rows[:, :-1] * vocab_size + rows[:, 1:]).ravel()
    keys, counts = np.unique(pairs, return_counts=True)
    context = np.bincount(keys // vocab_size, weights=counts, minlength=vocab_size)  # c(v) as a bigram context
    types = np.bincount(keys // vocab_size, minlength=vocab_size).astype(np.float64)  # T(v)
    query = previous.astype(np.int64) * vocab_size + target.astype(np.int64)
    at = np.searchsorted(keys, query).clip(max=len(keys) - 1)
    pair_count = np.where(keys[at] == query, counts[at], 0).astype(np.float64)
    c_v, t_v, p1_w = context[previous], types[previous], p1[target]
    seen = c_v > 0
    p2 = np.where(seen, (pair_count + t_v * p1_w) / np.where(seen, c_v + t_v, 1.0), p1_w)
    return {"unigram": math.exp(-np.log(p1_w).mean()), "bigram": math.exp(-np.log(p2).mean())}


@contextmanager
def blocks_removed(model):
    """The model with no transformer blocks (embed -> final norm -> unembed, per the layer map) inside the ``with``.

    The blocks are detached and put back afterwards rather than copied, so a large model does
    not need its memory twice.
    """
    from prunemem import arch

    layers, n = arch.blocks(model), model.config.num_hidden_layers
    arch.set_blocks(model, torch.nn.ModuleList())
    model.config.num_hidden_layers = 0
    try:
        yield model
    finally:
        arch.set_blocks(model, layers)
        model.config.num_hidden_layers = n


def reference_perplexity(model, checkpoint_dir, tokens: torch.Tensor, todo: list[Span], batch_size: int
                         ) -> dict[str, float]:
    """``{"unigram", "bigram", "no_blocks"}`` on the perplexity set's ``tokens`` and windows ``todo``.

    The n-grams need the training rows, which only embedded checkpoints ship; for a hub model
    only ``no_blocks`` is given.
    """
    from pathlib import Path

    from safetensors.torch import load_file

    from prunemem import embedded
    from prunemem.evaluate.perplexity import combine, span_nll

    out = {}
    rows_file = Path(checkpoint_dir) / embedded.TRAINING_ROWS
    if rows_file.is_file():
        previous, target = scored_pairs(tokens, todo)
        out.update(ngram_perplexity(load_file(rows_file)["rows"], model.config.vocab_size, previous, target))
    with blocks_removed(model) as empty:
        nll = sum(float(span_nll(empty, tokens, todo[i : i + batch_size]).sum())
                  for i in range(0, len(todo), batch_size))
    out["no_blocks"] = combine(nll, todo)[0]
    return out
