"""EvoP: the batched gate evaluator, the genetic search, CCDS sampling, the search split, masks and params checks.

Every figure the evaluator produces is checked against a separately pruned copy of the model
(``skip_blocks`` / ``skip_sublayers`` / SLEB's ``calibration_loss``, the same code ``masks.apply``
runs), and the search against brute force over the whole pattern space.
"""

from __future__ import annotations

import copy
import itertools
import math
import random

import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from prunemem.errors import PrunememError
from prunemem.prune import ccds
from prunemem.prune.methods import check_evop_level
from prunemem.prune import search as S
from prunemem.prune.calibrated import SkipBlock, calibration_loss, skip_blocks

VOCAB = 100


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: one thread is 20x faster than two on a shared 2-core machine (spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(parallel: bool = True, seed: int = 0):
    """A tiny random GPT-NeoX (hidden 32, 4 layers) with larger-than-default weights, so patterns differ
    clearly, and non-zero biases, so removing a sublayer must remove its bias too."""
    from transformers import GPTNeoXForCausalLM

    cfg = tiny_config(vocab=VOCAB, hidden=32, layers=4)
    cfg.use_parallel_residual = parallel
    cfg.initializer_range = 0.2
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.2)
    return model


def _tokens(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def _pruned(model, pattern, granularity):
    """A copy with the pattern removed the way ``masks.apply`` removes it."""
    copy_ = copy.deepcopy(model)
    if granularity == "block":
        skip_blocks(copy_, list(pattern))
    else:
        names = S.unit_names(len(model.gpt_neox.layers), granularity)
        S.skip_sublayers(copy_, [names[u] for u in pattern])
    return copy_


@torch.no_grad()
def _reference_ppl(model, calibration):
    """exp(mean next-token NLL), one row at a time, in float64."""
    total, count = 0.0, 0
    for row in calibration:
        ids = row.long().unsqueeze(0)
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        total -= float(logp.gather(1, ids[0, 1:].unsqueeze(1)).sum())
        count += ids.shape[1] - 1
    return math.exp(total / count)


# -- units and gates --------------------------------------------------------------------------
def test_units_counts_and_gates():
    assert S.unit_names(3, "block") == ["0", "1", "2"]
    assert S.unit_names(2, "sublayer") == ["0.attention", "0.mlp", "1.attention", "1.mlp"]
    assert [S.removed_count(level, 10) for level in (0.3, 0.5, 0.7, 0.09)] == [3, 5, 7, 0]  # 0.3 * 10 < 3 in floats
    assert S.removed_sublayers((1, 3), "block") == [(1, "attention"), (1, "mlp"), (3, "attention"), (3, "mlp")]
    assert S.removed_sublayers((1, 6), "sublayer") == [(0, "mlp"), (3, "attention")]
    assert S.gate_rows((1, 6), 4, "sublayer").tolist() == [[1, 0], [1, 1], [1, 1], [0, 1]]
    assert S.gate_rows((2,), 3, "block").tolist() == [[1, 1], [1, 1], [0, 0]]


# -- the batched evaluator against separately pruned copies -----------------------------------
BLOCK_PATTERNS = [(), (0,), (3,), (1, 2), (0, 1, 3)]
SUBLAYER_PATTERNS = [(), (0,), (1,), (6,), (0, 1), (2, 5), (3, 4, 7), (0, 2, 4, 6)]


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
@pytest.mark.parametrize("granularity,patterns", [("block", BLOCK_PATTERNS), ("sublayer", SUBLAYER_PATTERNS)])
def test_evaluator_perplexity_equals_separately_pruned_model(parallel, granularity, patterns):
    model = _model(parallel)
    calibration = _tokens(4, 20, seed=1)
    # batch_rows=3 with 4 rows per candidate: micro-batches straddle candidates
    scores = S.Evaluator(model, calibration, granularity, batch_rows=3)(patterns)
    assert all(s.extraction is None and s.fitness == s.perplexity for s in scores)
    refs = []
    for pattern, score in zip(patterns, scores):
        ref = _reference_ppl(_pruned(model, pattern, granularity), calibration)
        assert score.perplexity == pytest.approx(ref, rel=2e-6), pattern
        refs.append(ref)
        if granularity == "block":  # SLEB's pass-through and SLEB's loss
            sleb = copy.deepcopy(model)
            for b in pattern:
                sleb.gpt_neox.layers[b] = SkipBlock()
            assert score.perplexity == pytest.approx(math.exp(calibration_loss(sleb, calibration)), rel=2e-6)
    assert len({round(r, 6) for r in refs}) == len(refs)  # the patterns really are told apart
    assert not model.gpt_neox.layers[0].attention._forward_hooks  # gates removed afterwards
    # one candidate per micro-batch, or all in one: the same figures
    alone = S.Evaluator(model, calibration, granularity, batch_rows=1)(patterns)
    together = S.Evaluator(model, calibration, granularity, batch_rows=64)(patterns)
    for a, b, s in zip(alone, together, scores):
        assert a.perplexity == pytest.approx(s.perplexity, rel=1e-6)
        assert b.perplexity == pytest.approx(s.perplexity, rel=1e-6)


def test_evaluator_cache_and_order():
    model = _model()
    ev = S.Evaluator(model, _tokens(2, 12, seed=2), "sublayer", batch_rows=5)
    first = ev([(1,), (0, 3), (1,)])
    assert first[0] is first[2] and len(ev.cache) == 2
    calls = []
    ev._rows = lambda *a: calls.append(a) or torch.zeros(0)  # a cached pattern must not be recomputed
    again = ev([(0, 3), (1,)])
    assert not calls and again == [first[1], first[0]]


@torch.no_grad()
def _greedy(model, prompts, n):
    ids = prompts
    for _ in range(n):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_evaluator_extraction_equals_score_batch_on_pruned_copies():
    """Windows are greedy continuations of different pruned variants, so each candidate extracts
    its own windows and the rates differ; every rate must equal ``score_batch`` on a pruned copy."""
    from prunemem.evaluate.memorization import score_batch

    model, k, suffix, lam = _model(), 8, 8, 3.0
    makers = {(): 3, (1,): 1, (2, 5): 2, (0, 7): 4}  # pattern -> windows generated by it
    windows = torch.cat([_greedy(_pruned(model, p, "sublayer"), _tokens(n, k, seed=10 + i), suffix)
                         for i, (p, n) in enumerate(makers.items())])
    windows = torch.cat([_tokens(len(windows), 3, seed=9), windows], dim=1)  # longer than k + suffix
    candidates = [*makers, (3,), (4, 6)]
    calibration = _tokens(3, 16, seed=1)
    ev = S.Evaluator(model, calibration, "sublayer", batch_rows=5, search=windows, k=k, suffix=suffix, lam=lam)
    scores = ev(candidates)
    rates = []
    for pattern, score in zip(candidates, scores):
        pruned = _pruned(model, pattern, "sublayer")
        ref = score_batch(pruned, windows, k, suffix)
        assert float(ref["decision_margin"].min()) > 1e-5  # no near-tie that float noise could flip
        rates.append(float(ref["extracted"].double().mean()))
        assert score.extraction == rates[-1], pattern
        assert score.perplexity == pytest.approx(_reference_ppl(pruned, calibration), rel=2e-6)
        assert score.fitness == pytest.approx(score.perplexity + lam * score.extraction, rel=1e-12)
    assert rates[0] >= 3 / len(windows) and len(set(rates)) >= 3  # the check is not vacuous


# -- the genetic algorithm --------------------------------------------------------------------
class TableFitness:
    """A deterministic toy fitness over patterns, shaped like Evaluator (a ``cache`` of Scores)."""

    def __init__(self, table):
        self.table, self.cache, self.batches = table, {}, []

    def __call__(self, patterns):
        self.batches.append(list(patterns))
        for p in patterns:
            self.cache.setdefault(p, S.Score(self.table[p], None, self.table[p]))
        return [self.cache[p] for p in patterns]


def _table(n_units, n_remove, seed):
    rng = random.Random(seed)
    return {p: rng.random() for p in itertools.combinations(range(n_units), n_remove)}


def _check_history(history, fitness, n_units, n_remove, generations):
    assert [h["generation"] for h in history] == list(range(generations))
    best = [h["best_fitness"] for h in history]
    assert all(a >= b for a, b in zip(best, best[1:]))  # never gets worse
    for h in history:
        pattern = tuple(h["best_pattern"])
        assert len(pattern) == n_remove == len(set(pattern)) and all(0 <= u < n_units for u in pattern)
        assert h["best_fitness"] == fitness.cache[pattern].fitness
        assert h["best_fitness"] <= h["mean_fitness"] <= h["worst_fitness"]


def test_search_finds_brute_force_optimum_of_a_random_table():
    table = _table(8, 3, seed=0)
    optimum = min(table, key=lambda p: (table[p], p))
    cfg = S.SearchConfig(population=16, generations=20, seed=0)
    fitness = TableFitness(table)
    best, history = S.search(fitness, 8, 3, cfg)
    assert best == optimum
    _check_history(history, fitness, 8, 3, 20)
    assert best == min(fitness.cache, key=lambda p: (table[p], p))  # best of everything it saw
    # every generation's population is duplicate-free and of full size
    populations = [b for b in fitness.batches if len(b) > 1]
    assert len(populations) == 20 and all(len(set(b)) == len(b) == 16 for b in populations)
    # the same seed repeats exactly; another seed is still valid
    again = S.search(TableFitness(table), 8, 3, cfg)
    assert again == (best, history)
    other_fitness = TableFitness(table)
    other, other_history = S.search(other_fitness, 8, 3, S.SearchConfig(population=16, generations=20, seed=1))
    assert other == optimum
    _check_history(other_history, other_fitness, 8, 3, 20)
    assert other_fitness.batches != fitness.batches  # a different seed draws a different run


def test_search_uses_structure_without_enumerating_the_space():
    """Additive unit costs on C(16, 4) = 1820 patterns: the GA must find the 4 cheapest units
    while scoring far fewer patterns than exist (with 20 generations it does for 95 of 100 seeds,
    with 40 for all of them)."""
    costs = list(range(1, 17))
    random.Random(0).shuffle(costs)

    class Additive(TableFitness):
        def __init__(self):
            super().__init__({})

        def __call__(self, patterns):
            for p in patterns:
                self.table[p] = sum(costs[u] for u in p)
            return super().__call__(patterns)

    optimum = tuple(sorted(sorted(range(16), key=costs.__getitem__)[:4]))
    for seed in range(5):
        fitness = Additive()
        best, history = S.search(fitness, 16, 4, S.SearchConfig(population=16, generations=40, seed=seed))
        assert best == optimum, seed
        assert history[-1]["evaluated"] == len(fitness.cache) < math.comb(16, 4) / 4
        _check_history(history, fitness, 16, 4, 40)


def test_search_with_small_space_and_population_larger_than_it():
    table = _table(4, 2, seed=3)  # 6 patterns, population 16
    fitness = TableFitness(table)
    best, history = S.search(fitness, 4, 2, S.SearchConfig(population=16, generations=3, elite=2, seed=0))
    assert best == min(table, key=lambda p: (table[p], p))
    assert all(len(b) == 6 for b in fitness.batches if len(b) > 1)
    assert history[-1]["evaluated"] == 6


def test_search_ties_break_by_pattern():
    fitness = TableFitness({p: 1.0 for p in itertools.combinations(range(6), 2)})
    best, _ = S.search(fitness, 6, 2, S.SearchConfig(population=8, generations=6, seed=4))
    assert best == min(fitness.cache)  # every fitness equal: the smallest pattern seen wins


def test_search_with_real_evaluator_equals_brute_force_and_counts_unique_patterns():
    model = _model()
    calibration = _tokens(3, 16, seed=4)
    space = list(itertools.combinations(range(8), 2))  # sublayer granularity, 2 of 8 units
    brute = S.Evaluator(model, calibration, "sublayer", batch_rows=64)(space)
    values = sorted(s.fitness for s in brute)
    assert values[1] - values[0] > 1e-4 * values[0]  # a unique optimum, beyond float noise
    optimum = space[min(range(len(space)), key=lambda i: brute[i].fitness)]

    ev = S.Evaluator(model, calibration, "sublayer", batch_rows=7)
    computed: list[list] = []
    rows = ev._rows

    def spy(gates, patterns, data, measure):
        computed.append(list(patterns))
        return rows(gates, patterns, data, measure)

    ev._rows = spy
    per_generation = []

    def progress(generations):
        for g in generations:
            yield g
            per_generation.append(len({p for batch in computed for p in batch}))

    cfg = S.SearchConfig(population=6, generations=8, seed=0)
    best, history = S.search(ev, 8, 2, cfg, progress=progress)
    assert best == optimum
    flat = [p for batch in computed for p in batch]
    assert len(flat) == len(set(flat))  # no pattern scored twice
    assert history[-1]["evaluated"] == len(flat) == len(ev.cache)
    assert [h["evaluated"] for h in history][:-1] == per_generation[:len(history) - 1]
    _check_history(history, ev, 8, 2, 8)


def test_crossover_and_mutate_invariants():
    for seed in range(300):
        rng = random.Random(seed)
        n_units = rng.randint(2, 20)
        n_remove = rng.randint(1, n_units - 1)
        a, b = S.random_pattern(n_units, n_remove, rng), S.random_pattern(n_units, n_remove, rng)
        for pattern in (a, b):
            assert list(pattern) == sorted(set(pattern)) and len(pattern) == n_remove
        child = S.crossover(a, b, n_remove, rng)
        assert list(child) == sorted(set(child)) and len(child) == n_remove
        assert set(a) & set(b) <= set(child) <= set(a) | set(b)
        assert S.crossover(a, a, n_remove, rng) == a
        rate = rng.random()
        mutant = S.mutate(child, n_units, rate, rng)
        assert list(mutant) == sorted(set(mutant)) and len(mutant) == n_remove
        assert all(0 <= u < n_units for u in mutant)
        assert S.mutate(child, n_units, 0.0, rng) == child
    rng = random.Random(0)
    assert {S.mutate((0, 1), 3, 1.0, rng) for _ in range(20)} <= {(0, 2), (1, 2)}  # only swaps with kept units
    assert len({S.mutate((0, 1), 6, 1.0, rng) for _ in range(200)}) > 5


def test_evop_method_end_to_end_masks_and_memorization(tmp_path):
    """``compute('evop' | 'evop-mem', ...)``: the masks cover exactly the chosen units, and the saved mask
    applied to the model gives the perplexity the search reported for its best pattern."""
    from prunemem.prune import masks
    from prunemem.prune.methods import MaskContext, compute
    from prunemem.prune.targets import DictSource

    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calibration, windows = _tokens(3, 16, seed=5), _tokens(5, 16, seed=6)
    spec = {"granularity": "sublayer", "population": 4, "generations": 3, "mutation": 0.2, "crossover": 0.8,
            "elite": 1, "tournament": 2, "lambda": 10.0, "batch_size": 8, "threads": torch.get_num_threads(),
            "device": "cpu"}
    for method, granularity in (("evop", "sublayer"), ("evop-mem", "block")):
        ctx = MaskContext(DictSource(state), {"seed": 0, "evop": {**spec, "granularity": granularity}},
                          load_model=lambda: copy.deepcopy(model), calibration=lambda: calibration,
                          search_split=lambda: windows, samples={"k": [4, 8], "suffix_tokens": 8})
        result = compute(method, ctx, 0.5)
        search = result.info["search"]
        units = S.unit_names(4, granularity)
        assert len(search["removed"]) == len(units) // 2 and len(search["history"]) == 3
        if granularity == "block":
            assert result.removed_blocks == [int(n) for n in search["removed"]] and not result.removed_sublayers
            removed = {(b, s) for b in result.removed_blocks for s in S.SUBLAYERS}
        else:
            assert result.removed_sublayers == search["removed"] and not result.removed_blocks
            removed = {(int(b), s) for b, s in (n.split(".") for n in search["removed"])}
        for target in DictSource(state).targets:
            keep = result.masks[target.name].bool()
            assert bool(keep.all()) == ((target.layer, target.part) not in removed), target.name
            assert keep.all() or not keep.any()
        if method == "evop-mem":
            assert search["k"] == 8 and search["lambda"] == 10.0
            assert search["history"][0]["best_extraction"] is not None
        else:
            assert search["k"] is None and search["history"][0]["best_extraction"] is None
        best = S.Evaluator(model, calibration, granularity)([tuple(units.index(n) for n in search["removed"])])[0]
        assert search["history"][-1]["best_perplexity"] == pytest.approx(best.perplexity, rel=1e-6)
        path = tmp_path / f"{method}.safetensors"
        masks.save(path, result.masks, method=method, level="0.5", checkpoint_sha256="f" * 64,
                   removed_blocks=result.removed_blocks, removed_sublayers=result.removed_sublayers, info=result.info)
        applied = copy.deepcopy(model)
        applied.prunemem_checkpoint_sha256 = "f" * 64
        masks.apply(applied, path)
        assert _reference_ppl(applied, calibration) == pytest.approx(best.perplexity, rel=2e-6)
        assert masks.header(path)["info"]["search"]["removed"] == search["removed"]


# -- CCDS ---------------------------------------------------------------------------------------
def _water_filling(sizes: list[int], n: int) -> list[int]:
    """min(size, t) for the highest level t that fits, then one extra each to the largest groups above t."""
    t = 0
    while t < max(sizes, default=0) and sum(min(s, t + 1) for s in sizes) <= n:
        t += 1
    quotas = [min(s, t) for s in sizes]
    for i in sorted((i for i, s in enumerate(sizes) if s > t), key=lambda i: (-sizes[i], i))[: n - sum(quotas)]:
        quotas[i] += 1
    return quotas


@pytest.mark.parametrize("sizes,n,expected", [([10, 1, 5], 9, [4, 1, 4]), ([3, 3, 3], 7, [3, 2, 2]),
                                              ([4, 10, 8, 10], 22, [4, 6, 6, 6]),  # was [4, 7, 5, 6]
                                              ([0, 5, 2], 6, [0, 4, 2]), ([4, 4], 0, [0, 0]),
                                              ([2, 9, 9], 20, [2, 9, 9]), ([1, 2, 3, 4], 5, [1, 1, 1, 2])])
def test_even_quotas_cases(sizes, n, expected):
    assert ccds.even_quotas(sizes, n) == expected == _water_filling(sizes, n)


def test_even_quotas_properties():
    for seed in range(300):
        rng = random.Random(seed)
        sizes = [rng.randint(0, 12) for _ in range(rng.randint(1, 7))]
        n = rng.randint(0, sum(sizes))
        q = ccds.even_quotas(sizes, n)
        assert sum(q) == n and all(0 <= a <= s for a, s in zip(q, sizes))
        # as even as possible: a group that is not full holds at least the largest quota minus one
        assert all(a >= max(q) - 1 for a, s in zip(q, sizes) if a < s)
        assert q == _water_filling(sizes, n)


def _blobs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [0.0, 20.0, 0.0], [0.0, 0.0, 20.0]],
                           dtype=torch.float64)
    points = torch.cat([c + torch.randn(40, 3, generator=gen, dtype=torch.float64) for c in centres])
    perm = torch.randperm(160, generator=gen)  # interleave the blobs in the pool
    return points[perm], (perm // 40).tolist()


def test_cluster_indices_draw_evenly_from_separated_blobs():
    points, blob = _blobs()
    chosen, labels = ccds.cluster_indices(points, 8, 4, seed=0)
    assert chosen == sorted(set(chosen)) and len(chosen) == 8
    assert sorted(sum(blob[i] == b for i in chosen) for b in range(4)) == [2, 2, 2, 2]
    # k-means recovers the blobs exactly: same label <=> same blob
    assert all((labels[i] == labels[j]) == (blob[i] == blob[j]) for i in range(0, 160, 7) for j in range(160))
    assert ccds.cluster_indices(points, 8, 4, seed=0) == (chosen, labels)
    other, _ = ccds.cluster_indices(points, 8, 4, seed=1)
    assert other != chosen and sorted(sum(blob[i] == b for i in other) for b in range(4)) == [2, 2, 2, 2]


def test_select_cluster_records_choice_with_the_models_embeddings():
    model = _model()
    pool = torch.cat([_tokens(6, 12, seed=7), torch.full((6, 12), 5)])  # 6 random rows and 6 identical ones
    emb = ccds.embed(model, pool, batch_size=4)
    assert emb.dtype == torch.float64 and emb.shape == (12, 32)
    with torch.no_grad():
        hidden = model(input_ids=pool[3:4], output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(emb[3], hidden[0].double().mean(0), atol=1e-5)
    assert torch.equal(emb[6], emb[11])  # identical windows, identical embeddings
    chosen, info = ccds.select(pool, 4, "cluster", seed=0, clusters=2, load_model=lambda: model)
    indices, labels = ccds.cluster_indices(emb, 4, 2, seed=0)
    assert info == {"sampling": "cluster", "indices": indices, "cluster_sizes": [labels.count(0), labels.count(1)],
                    "chosen_per_cluster": [2, 2]}
    assert torch.equal(chosen, pool[indices]) and len(set(labels[6:])) == 1  # the identical rows share a cluster


def test_random_indices_and_random_select():
    a = ccds.random_indices(100, 10, seed=3)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= i < 100 for i in a)
    assert a == ccds.random_indices(100, 10, seed=3) and a != ccds.random_indices(100, 10, seed=4)
    pool = _tokens(7, 5, seed=8)
    whole, info = ccds.select(pool, 7, "random", seed=11)
    assert torch.equal(whole, pool) and info == {"sampling": "random", "indices": list(range(7))}
    part, info = ccds.select(pool, 3, "random", seed=11)
    assert torch.equal(part, pool[info["indices"]]) and info["indices"] == ccds.random_indices(7, 3, 11)


# -- the mask artifact with removed sublayers ------------------------------------------------
def test_mask_roundtrip_removed_sublayers_and_apply(tmp_path):
    from prunemem.prune import masks
    from prunemem.prune.targets import prunable

    model = _model(parallel=False)
    keep = {t.name: torch.full(model.state_dict()[t.name].shape, not (t.layer == 1 and t.part == "mlp"))
            for t in prunable(list(model.state_dict()))}
    path = tmp_path / "m.safetensors"
    info = {"search": {"granularity": "sublayer", "removed": ["1.mlp"], "history": [{"generation": 0}]}}
    masks.save(path, keep, method="evop", level="0.125", checkpoint_sha256="e" * 64, removed_sublayers=["1.mlp"],
               info=info)
    meta = masks.header(path)
    assert meta["removed_sublayers"] == ["1.mlp"] and meta["info"] == info and meta["removed_blocks"] == []

    ids = _tokens(2, 10, seed=9)
    reference = _pruned(model, (3,), "sublayer")  # unit 3 = block 1's MLP
    applied = copy.deepcopy(model)
    applied.prunemem_checkpoint_sha256 = "e" * 64
    masks.apply(applied, path)
    weights_only = copy.deepcopy(model)  # zeroed weights, but the MLP biases still add their part
    masks.apply(weights_only, keep)
    with torch.no_grad():
        want = reference(input_ids=ids).logits
        assert torch.allclose(applied(input_ids=ids).logits, want, atol=1e-5)
        assert not torch.allclose(weights_only(input_ids=ids).logits, want, atol=1e-3)
        assert isinstance(applied.gpt_neox.layers[1].mlp, S._ZeroMLP)
        hidden = torch.randn(2, 10, 32)
        assert not applied.gpt_neox.layers[1].mlp(hidden).any()


# -- the search split ----------------------------------------------------------------------------
def _members(sizes: dict) -> list[dict]:
    return [{"sample_id": f"{kind}-{copies}-{i}", "kind": kind, "copies": copies}
            for (kind, copies), n in sizes.items() for i in range(n)]


def _exact_shares(sizes: list[int], n: int) -> list[int]:
    """Largest remainder in integers; ties by stratum order."""
    total = sum(sizes)
    share = [n * s // total for s in sizes]
    order = sorted(range(len(sizes)), key=lambda i: (-(n * sizes[i] % total), i))
    for i in order[: n - sum(share)]:
        share[i] += 1
    return share


def test_split_search_stratified_disjoint_deterministic():
    from prunemem.data.samples import split_search

    sizes = {("canary", c): 20 for c in (1, 2, 4, 8, 16, 32, 64)} | {("train", 1): 50}  # the default study
    members = _members(sizes)
    rest, search = split_search(members, 40, seed=0)
    counts = {key: sum((r["kind"], r["copies"]) == key for r in search) for key in sizes}
    # 40 * 20 / 190 = 4.21 per canary stratum, 40 * 50 / 190 = 10.53: the extras go to train, then copies 1
    assert counts == {**{("canary", c): 4 for c in (2, 4, 8, 16, 32, 64)}, ("canary", 1): 5, ("train", 1): 11}
    ids = [r["sample_id"] for r in members]
    assert len(search) == 40 and len(rest) == 150
    assert {r["sample_id"] for r in rest}.isdisjoint(r["sample_id"] for r in search)
    assert sorted(r["sample_id"] for r in rest + search) == sorted(ids)
    assert [r["sample_id"] for r in rest] == [i for i in ids if i in {r["sample_id"] for r in rest}]  # order kept
    assert split_search(members, 40, seed=0) == (rest, search)
    assert split_search(members, 40, seed=1)[1] != search
    assert split_search(members, 0, seed=0) == (members, [])


def test_split_search_counts_are_floor_or_ceil_of_the_exact_share():
    from prunemem.data.samples import split_search

    for seed in range(200):
        rng = random.Random(seed)
        sizes = [rng.randint(1, 30) for _ in range(rng.randint(1, 6))]
        n = rng.randint(1, sum(sizes) - 1) if sum(sizes) > 1 else 0
        if not n:
            continue
        members = _members({("canary", c): s for c, s in enumerate(sizes)})
        _, search = split_search(members, n, seed)
        got = [sum(r["copies"] == c for r in search) for c in range(len(sizes))]
        assert sum(got) == n
        assert all(n * s // sum(sizes) <= g <= -(-n * s // sum(sizes)) for g, s in zip(got, sizes))
        # floors first, then one extra each for the largest remainders
        floors = [n * s // sum(sizes) for s in sizes]
        assert sum(g - f for g, f in zip(got, floors)) == n - sum(floors)


def test_split_search_exact_remainder_ties_break_by_stratum_order():
    from prunemem.data.samples import split_search

    sizes = [3, 11, 23, 3]  # n = 6 of 40: shares 0.45, 1.65, 3.45, 0.45
    _, search = split_search(_members({("canary", c): s for c, s in enumerate(sizes)}), 6, 0)
    assert [sum(r["copies"] == c for r in search) for c in range(4)] == _exact_shares(sizes, 6) == [1, 2, 3, 0]


def test_split_search_refuses_taking_every_member():
    from prunemem.data.samples import split_search

    members = _members({("canary", 1): 3, ("train", 1): 2})
    for n in (5, 6):
        with pytest.raises(PrunememError) as err:
            split_search(members, n, 0)
        assert "samples.search_members" in str(err.value) and "\n" not in str(err.value)
    assert len(split_search(members, 4, 0)[0]) == 1


def _write_samples(directory, members, search):
    import polars as pl

    from prunemem.data.samples import SAMPLE_SCHEMA
    from prunemem.provenance import write_parquet

    def frame(rows):
        return pl.DataFrame([{"sample_id": sid, "kind": "canary", "copies": 2, "member": True, "source": "doc",
                              "position": 0, "tokens": tokens} for sid, tokens in rows], schema=SAMPLE_SCHEMA)

    directory.mkdir(exist_ok=True)
    write_parquet(frame(members), directory / "members.parquet")
    write_parquet(frame(search), directory / "search.parquet")


def test_load_search_split(tmp_path):
    from prunemem.data.samples import load_search_split

    rng = random.Random(0)
    windows = {f"canary-{i:05d}": [rng.randrange(VOCAB) for _ in range(12)] for i in range(6)}
    members = [(sid, t) for sid, t in windows.items() if sid < "canary-00004"]
    search = [(sid, t) for sid, t in windows.items() if sid >= "canary-00004"]
    _write_samples(tmp_path / "ok", members, search)
    split = load_search_split(tmp_path / "ok", suffix=4)
    assert split.dtype == torch.long and split.tolist() == [t for _, t in search]

    # a search window whose tested suffix is also a member's, under another id and prompt
    planted = [9, 9, 9, 9] + members[2][1][-8:]
    _write_samples(tmp_path / "overlap", members, [*search, ("canary-00099", planted)])
    with pytest.raises(PrunememError) as err:
        load_search_split(tmp_path / "overlap", suffix=4)
    message = str(err.value)
    assert "\n" not in message and "overlaps the evaluation members" in message
    assert "canary-00099" in message and members[2][0] in message
    assert load_search_split(tmp_path / "overlap", suffix=12).shape == (3, 12)  # whole windows differ

    _write_samples(tmp_path / "empty", members, [])
    with pytest.raises(PrunememError) as err:
        load_search_split(tmp_path / "empty", suffix=4)
    assert "empty" in str(err.value) and "search_members" in str(err.value) and "\n" not in str(err.value)


# -- params checks and levels --------------------------------------------------------------------
def test_check_evop_level():
    check_evop_level(0.25, 4, "block", "prune.levels")  # one block of four
    check_evop_level(0.125, 4, "sublayer", "prune.levels")
    for level, blocks, granularity, words in [(0.2, 4, "block", "removes no block"),
                                              (0.999, 1, "block", "needs at least 2 blocks"),
                                              (0.1, 4, "sublayer", "removes no sublayer"),
                                              (0.9999999999, 4, "block", "would remove all 4 blocks"),
                                              (0.9999999999, 2, "sublayer", "would remove all 4 sublayers")]:
        with pytest.raises(PrunememError) as err:
            check_evop_level(level, blocks, granularity, "models.tiny.levels")
        assert str(err.value).startswith("models.tiny.levels: ") and words in str(err.value)
        assert "\n" not in str(err.value)


def _params():
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


def _invalid(edit) -> str:
    from prunemem.plan import validate

    params = _params()
    edit(params)
    with pytest.raises(PrunememError) as err:
        validate(params)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_default_params_are_valid():
    from prunemem.plan import validate

    params = _params()
    validate(params)
    assert {"evop", "evop-mem"} <= set(params["prune"]["methods"])
    params["prune"]["methods"] += ["wanda-ccds", "sleb-ccds"]  # opt-in in the default (README, "Calibration sampling")
    validate(params)


def test_params_checks_for_evop_and_ccds():
    def evop(**kw):
        return lambda p: p["prune"]["evop"].update(kw)

    assert "prune.evop.population" in _invalid(evop(population=1))
    message = _invalid(lambda p: (p["prune"].update(levels=[0.9999999999]), evop(granularity="block")(p)))
    assert "prune.levels" in message and "would remove all 4 blocks" in message
    message = _invalid(lambda p: (p["prune"].update(levels=[0.5, 0.2]), evop(granularity="block")(p)))
    assert "prune.levels: 0.2 removes no block of 4" in message
    assert "removes no sublayer of 8" in _invalid(lambda p: p["prune"].update(levels=[0.1]))
    message = _invalid(lambda p: (p["embedded"]["architecture"].update(num_layers=1), evop(granularity="block")(p)))
    assert "needs at least 2 blocks" in message
    message = _invalid(lambda p: p["models"]["tiny"].update(levels=[0.05]))
    assert "models.tiny.levels: 0.05 removes no sublayer" in message
    assert "samples.search_members" in _invalid(lambda p: p["samples"].update(search_members=0))
    assert "samples.search_members" in _invalid(lambda p: p["samples"].update(search_members=245))
    message = _invalid(evop(elite=16, population=16))
    assert "prune.evop.elite" in message and "population of 16" in message
    message = _invalid(lambda p: (p["prune"].update(methods=["owl-ccds"]), p["prune"]["owl"].update(score="magnitude")))
    assert "owl-ccds" in message and "prune.owl.score" in message
    assert "prune.methods[0]" in _invalid(lambda p: p["prune"].update(methods=["global-ccds"]))
    assert "prune.ccds" in _invalid(lambda p: p["prune"].pop("ccds"))
    assert "prune.evop" in _invalid(lambda p: p["prune"].pop("evop"))
    assert "prune.evop.granularity" in _invalid(evop(granularity="head"))
    # without evop in the methods, levels that evop could not use are fine
    from prunemem.plan import validate

    params = _params()
    params["prune"].update(methods=["global", "wanda-ccds"], levels=[0.1])
    params["samples"]["search_members"] = 0
    validate(params)
