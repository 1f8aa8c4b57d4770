"""Which calibration sequences a calibrated method reads: a random draw or EvoP's cluster-based sampling.

The samples stage writes a *pool* of held-out windows (``samples.calibration.pool``, default
``sequences``). Every calibrated method reads ``samples.calibration.sequences`` of them:

- ``random``: a seeded uniform draw (the whole pool, in order, when pool == sequences);
- ``cluster`` (CCDS, Wu et al. 2025, "EvoP", arXiv 2502.14910): embed each window by the dense
  model's mean last hidden state, k-means the embeddings into ``prune.ccds.clusters`` groups
  (scikit-learn), and draw evenly from every group, so the set covers the pool's kinds of text
  instead of its most common kind. Methods named ``<method>-ccds`` and both EvoP methods use it.
"""

from __future__ import annotations

import random

import torch


def random_indices(pool: int, n: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(pool), n))


@torch.no_grad()
def embed(model, windows: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Mean last-layer hidden state (after the final norm) of each window, float64 [n, hidden].

    Runs the transformer body only (no unembedding: a micro-batch's logits would be the largest
    tensor of the pass), on the device the model computes on, blocks streamed when offloaded.
    """
    from prunemem import arch
    from prunemem.blockwise import compute_device, streamed

    device = compute_device(model)
    out = []
    with streamed(model):
        for ids in windows.long().split(batch_size):
            ids = ids.to(device)
            hidden = arch.body(model)(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            out.append(hidden.double().mean(dim=1).cpu())
    return torch.cat(out)


def even_quotas(sizes: list[int], n: int) -> list[int]:
    """Split ``n`` draws as evenly as possible over groups of ``sizes``; a small group's shortfall
    goes to the others (largest groups first, then by index)."""
    quotas = [0] * len(sizes)
    left = n
    while left:
        open_ = [i for i, s in enumerate(sizes) if quotas[i] < s]
        share, extra = divmod(left, len(open_))
        # fewest so far first, so a later round's extras do not go to groups that already had one
        order = sorted(open_, key=lambda i: (quotas[i], -(sizes[i] - quotas[i]), i))
        for rank, i in enumerate(order):
            take = min(share + (rank < extra), sizes[i] - quotas[i])
            quotas[i] += take
            left -= take
    return quotas


def cluster_indices(embeddings: torch.Tensor, n: int, clusters: int, seed: int) -> tuple[list[int], list[int]]:
    """(chosen pool indices, cluster label of every pool window): k-means, then an even seeded draw per cluster."""
    from sklearn.cluster import KMeans

    clusters = min(clusters, embeddings.shape[0])
    labels = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(embeddings.numpy()).labels_.tolist()
    members = [[i for i, label in enumerate(labels) if label == c] for c in range(clusters)]
    rng = random.Random(seed)
    chosen = []
    for group, quota in zip(members, even_quotas([len(g) for g in members], n)):
        chosen += rng.sample(group, quota)
    return sorted(chosen), labels


def select(pool: torch.Tensor, n: int, sampling: str, seed: int, clusters: int = 8,
           load_model=None) -> tuple[torch.Tensor, dict]:
    """(the calibration sequences, a record of how they were chosen) from the pool.

    ``load_model`` gives the dense model, already placed (``prunemem.blockwise.place``); the mask
    job hands the same model on to the method, so CCDS never loads a second copy.
    """
    if sampling == "random":
        indices = random_indices(pool.shape[0], n, seed)
        return pool[indices], {"sampling": "random", "indices": indices}
    indices, labels = cluster_indices(embed(load_model(), pool), n, clusters, seed)
    sizes = [labels.count(c) for c in range(max(labels) + 1)]
    return pool[indices], {"sampling": "cluster", "indices": indices, "cluster_sizes": sizes,
                           "chosen_per_cluster": [sum(labels[i] == c for i in indices) for c in range(len(sizes))]}
