"""The layer map (``prunemem.arch``): every method's invariants on a tiny random model of each family.

Families: GPT-NeoX with its parallel residual and with the sequential one, Llama, Qwen2 (biased
q/k/v), Qwen3 (q/k norms, per-layer ``layer_types``) and GPT-2 (Conv1D weights stored [in, out]).
The references here never ask the map: the input dimension of a matrix comes from the module's
type (``nn.Linear`` [out, in], ``Conv1D`` [in, out]), and the skipped-block reference forward
writes each residual layout out by hand.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunemem import arch
from prunemem.errors import PrunememError

VOCAB, LAYERS = 64, 4


def _config(family: str):
    import transformers as T

    common = dict(vocab_size=VOCAB, max_position_embeddings=64, initializer_range=0.2)
    if family.startswith("gpt_neox"):
        return T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
                               rotary_pct=0.25, use_parallel_residual=family == "gpt_neox", **common)
    if family == "gpt2":
        return T.GPT2Config(n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64, vocab_size=VOCAB,
                            initializer_range=0.2)
    cls = {"llama": T.LlamaConfig, "qwen2": T.Qwen2Config, "qwen3": T.Qwen3Config}[family]
    return cls(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, **common)


FAMILIES = ("gpt_neox", "llama", "qwen2", "qwen3", "gpt2")
RESIDUALS = ("gpt_neox", "gpt_neox_sequential", "llama", "qwen2", "qwen3", "gpt2")  # GPT-NeoX in both layouts
_MODELS: dict = {}


def _model(family: str):
    """A fresh copy of the family's seeded random model (eval mode)."""
    if family not in _MODELS:
        config = _config(family)
        torch.manual_seed(0)
        model = arch.model_class(arch.of(config))(config).eval()
        with torch.no_grad():  # random biases and norm gains too, so zeroing a sublayer is visible in every part
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.1)
        _MODELS[family] = model
    return copy.deepcopy(_MODELS[family])


def _tokens(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (rows, cols), generator=torch.Generator().manual_seed(seed))


def _out_in(module: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """[out, in] by the module's own type, not by the map."""
    return tensor if isinstance(module, torch.nn.Linear) else tensor.T


def _ctx(model, calibration, cfg=None):
    from prunemem.prune.methods import MaskContext
    from prunemem.prune.targets import DictSource

    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = cfg or {"block_fraction": 0.25, "seed": 0, "owl": {"score": "wanda", "M": 5, "lambda": 0.08}}
    return MaskContext(DictSource(state), cfg, load_model=lambda: copy.deepcopy(model),
                       calibration=lambda: calibration)


def test_unknown_architecture_is_one_line_listing_the_known(tmp_path):
    from prunemem.checkpoints import load_model
    from prunemem.hub import _expected_keys

    with pytest.raises(PrunememError) as err:
        arch.for_type("mamba", "models.m")
    assert str(err.value) == ("models.m: model_type 'mamba' is not in prunemem's layer map; known: gpt2, gpt_neox, "
                              "llama, qwen2, qwen3 (docs/architecture.md, 'Layer map')")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    for call in (lambda: load_model(tmp_path), lambda: _expected_keys(tmp_path / "config.json")):
        with pytest.raises(PrunememError, match=r"config.json.*'bert' is not in prunemem's layer map; known: gpt2,"):
            call()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", RESIDUALS)
def test_map_names_every_linear_of_every_block_with_its_sublayer(family):
    """Wanda's find_layers view: the map's prunable linears are exactly the linear modules inside the
    blocks, the attention roles under the attention sublayer, the MLP roles under the MLP."""
    from transformers.pytorch_utils import Conv1D

    from prunemem.prune.targets import prunable

    model = _model(family)
    family_map = arch.of(model)
    targets = prunable([n for n, _ in model.named_parameters()])
    found = {n + ".weight" for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))
             and n.startswith(family_map.block_prefix(0)[:-2])}
    assert {t.name for t in targets} == found and len(targets) == LAYERS * len(family_map.linears)
    for t in targets:
        sub = family_map.sublayer_attr(t.part)
        assert t.name.startswith(f"{family_map.block_prefix(t.layer)}{sub}.")
        assert t.transposed == isinstance(model.get_submodule(t.name.removesuffix(".weight")), Conv1D)
    assert {t.role for t in targets} == ({"qkv", "o", "up", "down"} if family.startswith(("gpt_neox", "gpt2"))
                                         else {"q", "k", "v", "o", "gate", "up", "down"})
    assert arch.of(model).residual_of(model.config) == ("parallel" if family == "gpt_neox" else "sequential")
    from prunemem.blockwise import Placement, compute_device, place  # offload walks the body's other children

    assert compute_device(place(model, Placement("cpu", torch.float32, offload=True))) == torch.device("cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_magnitude_strategies_and_nm_along_the_input_dimension(family):
    from prunemem.prune.methods import compute

    model = _model(family)
    ctx = _ctx(model, None)
    modules = dict(model.named_modules())
    part = {t.name: t for t in ctx.source.targets}
    sizes = {n: ctx.source[n].numel() for n in part}

    def pruned(result):
        return {n: int((~m).sum()) for n, m in result.bool_masks().items()}

    per = pruned(compute("layerwise", ctx, 0.5))
    assert per == {n: math.floor(0.5 * s) for n, s in sizes.items()}
    assert sum(pruned(compute("global", ctx, 0.3)).values()) == math.floor(0.3 * sum(sizes.values()))
    for name, keep in (("attention", lambda t: t.part == "attention"), ("mlp", lambda t: t.part == "mlp"),
                       ("first25", lambda t: t.layer == 0), ("last25", lambda t: t.layer == LAYERS - 1)):
        counts = pruned(compute(name, ctx, 0.5))
        chosen = [n for n, t in part.items() if keep(t)]
        assert all(counts[n] == 0 for n in part if n not in chosen), name
        assert sum(counts[n] for n in chosen) == math.floor(0.5 * sum(sizes[n] for n in chosen)), name
    for n, mask in compute("magnitude-2of4", ctx, 0.5).bool_masks().items():
        rows = _out_in(modules[n.removesuffix(".weight")], mask)
        assert (rows.reshape(rows.shape[0], -1, 4).sum(-1) == 2).all(), n  # 2 of every 4 consecutive inputs
        weight = _out_in(modules[n.removesuffix(".weight")], ctx.source[n]).abs()
        groups = weight.reshape(weight.shape[0], -1, 4)
        kept = torch.where(rows.reshape(groups.shape), groups, torch.inf).amin(-1)
        dropped = torch.where(rows.reshape(groups.shape), -torch.inf, groups).amax(-1)
        assert (kept >= dropped).all(), n  # the two largest of each group stay


def _block0_inputs(model, calibration):
    """The input of every block-0 linear over the calibration rows, from a dense forward (hooks)."""
    inputs, handles = {}, []
    for name, module in model.named_modules():
        if name.startswith(arch.of(model).block_prefix(0)) and name + ".weight" in dict(model.named_parameters()) \
                and module.weight.dim() == 2:
            handles.append(module.register_forward_hook(
                lambda m, a, o, name=name: inputs.setdefault(name, []).append(a[0].reshape(-1, a[0].shape[-1]))))
    with torch.no_grad():
        model(input_ids=calibration)
    for h in handles:
        h.remove()
    return {n: torch.cat(x).double() for n, x in inputs.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_wanda_sparsegpt_owl_on_each_family(family, tmp_path):
    """Wanda equals |W| * ||X|| pruned per output row (X from hooks on the dense model); SparseGPT keeps
    exactly the level and reconstructs block 0's outputs better than magnitude; OWL's masks hold its
    per-block levels row by row."""
    from prunemem.prune import magnitude
    from prunemem.prune.methods import compute

    model = _model(family)
    calibration = _tokens(4, 32, seed=1)
    ctx = _ctx(model, calibration)
    modules = dict(model.named_modules())
    x = _block0_inputs(model, calibration)
    wanda = compute("wanda", ctx, 0.5).bool_masks()
    for name, mask in wanda.items():
        module = modules[name.removesuffix(".weight")]
        rows = _out_in(module, mask)
        assert (rows.sum(1) == rows.shape[1] - math.floor(0.5 * rows.shape[1])).all(), name
        if name.removesuffix(".weight") in x:
            score = _out_in(module, module.weight).detach().abs().double() * x[name.removesuffix(".weight")].norm(dim=0)
            ref = torch.ones_like(rows)
            ref.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, : rows.shape[1] // 2], False)
            assert torch.equal(rows, ref), name
    again = compute("wanda", _ctx(model, calibration), 0.5).masks  # deterministic: the same bits on a rerun
    assert all(torch.equal(again[n].bits, m.bits) for n, m in compute("wanda", ctx, 0.5).masks.items())
    sgpt = compute("sparsegpt", ctx, 0.5)
    for name, mask in sgpt.bool_masks().items():
        assert int((~mask).sum()) == mask.numel() // 2 and torch.equal(sgpt.updated[name][~mask],
                                                                      torch.zeros(int((~mask).sum())))
        short = name.removesuffix(".weight")
        if short in x:
            module = modules[short]
            w = _out_in(module, module.weight).detach().double()
            mag = w * magnitude.tensor_mask(w.abs(), 0.5)
            new = _out_in(module, sgpt.updated[name]).double()
            err = lambda v: float((x[short] @ (v - w).T).norm())  # noqa: E731
            assert err(new) < err(mag), name
    from prunemem.prune import masks as mask_file  # the artifact round trip evaluation reads

    path = tmp_path / "sparsegpt.safetensors"
    mask_file.save(path, sgpt.masks, method="sparsegpt", level="0.5", checkpoint_sha256="c" * 64,
                   updated=sgpt.updated)
    applied = _model(family)
    applied.prunemem_checkpoint_sha256 = "c" * 64
    mask_file.apply(applied, path)
    params = dict(applied.named_parameters())
    assert all(torch.equal(params[n], w) for n, w in sgpt.updated.items())
    owl = compute("owl", ctx, 0.5)
    assert abs(sum(owl.block_levels) / LAYERS - 0.5) < 1e-9 and len(set(owl.block_levels)) > 1
    for name, mask in owl.bool_masks().items():
        rows = _out_in(modules[name.removesuffix(".weight")], mask)
        level = owl.block_levels[next(t.layer for t in ctx.source.targets if t.name == name)]
        assert (rows.sum(1) == rows.shape[1] - math.floor(level * rows.shape[1] + 1e-9)).all(), name


def _reference_logits(model, ids, removed: set[tuple[int, str]]):
    """Logits with the ``removed`` (block, 'attention' | 'mlp') sublayers skipped, the residual written out:
    parallel h + attn(ln1 h) + mlp(ln2 h); sequential h' = h + attn(ln1 h), h' + mlp(ln2 h')."""
    family = arch.of(model)
    layers = arch.blocks(model)
    calls, handles = {}, []  # what the dense forward passes each block's attention besides its input
    def keep(store, key, value):  # a pre-hook returning None changes nothing
        store.setdefault(key, value)

    for i, layer in enumerate(layers):
        handles.append(getattr(layer, family.attention).register_forward_pre_hook(
            lambda m, a, k, i=i: keep(calls, i, (a, k)), with_kwargs=True))
    hidden = {}
    handles.append(layers[0].register_forward_pre_hook(
        lambda m, a, k: keep(hidden, "h", a[0] if a else k["hidden_states"]), with_kwargs=True))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)  # no KV cache: the calls below must not attend to these keys
    for h in handles:
        h.remove()
    h = hidden["h"]
    parallel = family.residual_of(model.config) == "parallel"

    def attention(i, layer, x):
        args, kwargs = calls[i]
        module = getattr(layer, family.attention)
        out = module(hidden_states=x, **{k: v for k, v in kwargs.items() if k != "hidden_states"}) if not args \
            else module(x, *args[1:], **kwargs)
        return out[0]

    with torch.no_grad():
        for i, layer in enumerate(layers):
            ln1, ln2, mlp = getattr(layer, family.attention_norm), getattr(layer, family.mlp_norm), layer.mlp
            a = attention(i, layer, ln1(h)) if (i, "attention") not in removed else torch.zeros_like(h)
            if parallel:
                m = mlp(ln2(h)) if (i, "mlp") not in removed else torch.zeros_like(h)
                h = h + a + m
            else:
                h = h + a
                h = h + (mlp(ln2(h)) if (i, "mlp") not in removed else torch.zeros_like(h))
        return getattr(model, family.unembed)(getattr(getattr(model, family.body), family.final_norm)(h))


@pytest.mark.parametrize("family", RESIDUALS)
def test_block_and_sublayer_removal_match_a_hand_written_forward(family):
    """SLEB/EvoP's pass-through block and zero sublayer, and EvoP's batched gated forward, give the logits
    of the reference forward that skips them, for the parallel and the sequential residual; SLEB's
    search and EvoP's method run on each family."""
    from prunemem.prune import search
    from prunemem.prune.calibrated import skip_blocks, sleb
    from prunemem.prune.methods import compute

    ids = _tokens(3, 16, seed=2)
    model = _model(family)
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    assert torch.allclose(_reference_logits(model, ids, set()), dense, atol=1e-5)  # the reference is right
    cases = [({1}, []), (set(), ["1.attention", "2.mlp"]), ({2}, ["0.mlp"])]
    for blocks, sublayers in cases:
        removed = {(b, s) for b in blocks for s in search.SUBLAYERS} | {(int(n[0]), n[2:]) for n in sublayers}
        ref = _reference_logits(model, ids, removed)
        assert not torch.allclose(ref, dense, atol=1e-3)
        pruned = _model(family)
        skip_blocks(pruned, sorted(blocks))
        search.skip_sublayers(pruned, sublayers)
        with torch.no_grad():
            assert torch.allclose(pruned(input_ids=ids).logits, ref, atol=1e-5), (blocks, sublayers)
        gated = _model(family)
        pattern = tuple(sorted(2 * b + search.SUBLAYERS.index(s) for b, s in removed))
        with search.SublayerGates(gated) as gates, torch.no_grad():
            forward = search.GatedForward(gated, gates)
            forward.row_gates = search.gate_rows(pattern, LAYERS, "sublayer").expand(ids.shape[0], -1, -1)
            assert torch.allclose(forward(input_ids=ids).logits, ref, atol=1e-5), pattern
    from prunemem.evaluate.reference import blocks_removed

    none_left = _reference_logits(model, ids, {(b, s) for b in range(LAYERS) for s in search.SUBLAYERS})
    with blocks_removed(model) as empty, torch.no_grad():  # the no_blocks reference perplexity's model
        assert torch.allclose(empty(input_ids=ids).logits, none_left, atol=1e-5)
    assert len(arch.blocks(model)) == LAYERS and torch.equal(model(input_ids=ids).logits, dense)  # put back
    calibration = _tokens(4, 16, seed=3)
    removed = sleb(_model(family), calibration, 2, protect_ends=True)
    assert sorted(removed) == [1, 2]
    spec = {"granularity": "sublayer", "population": 4, "generations": 2, "mutation": 0.2, "crossover": 0.8,
            "elite": 1, "tournament": 2, "batch_size": 8, "threads": torch.get_num_threads(), "device": "cpu"}
    result = compute("evop", _ctx(model, calibration, {"seed": 0, "evop": spec}), 0.25)
    assert len(result.removed_sublayers) == 2
    for name, mask in result.bool_masks().items():
        t = next(t for t in arch_targets(model) if t.name == name)
        assert bool(mask.all()) == (f"{t.layer}.{t.part}" not in result.removed_sublayers)


def arch_targets(model):
    from prunemem.prune.targets import prunable

    return prunable([n for n, _ in model.named_parameters()])


@pytest.mark.parametrize("family", FAMILIES)
def test_quantize_lowrank_gptq_touch_only_mapped_linears_and_apply_back(family, tmp_path):
    """Quantization groups run along the input dimension (<= 2^bits - 1 values per group of one output
    row), only the map's linears change, and the stored transform applies back bit for bit."""
    from prunemem.compress.run import FORMAT, WEIGHTS_FORMAT, apply_transform, transform_model, weights_digest
    from prunemem.prune.masks import write_safetensors
    from prunemem.provenance import sha256_file, write_json

    base = _model(family)
    modules = dict(base.named_modules())
    names = {t.name for t in arch_targets(base)}
    calibration = _tokens(4, 16, seed=4)
    for spec in ({"kind": "quantize", "bits": 4, "group_size": 16, "symmetric": True},
                 {"kind": "quantize", "bits": 4, "group_size": 16, "symmetric": True, "algorithm": "gptq"},
                 {"kind": "lowrank", "keep": 0.5}):
        model, store = _model(family), {}
        transform_model(model, spec, "compress", calibration=calibration, store=store)
        before, after = dict(base.named_parameters()), dict(model.named_parameters())
        for name, p in after.items():
            assert torch.equal(p, before[name]) == (name not in names), (spec, name)
        for name in names:
            w = _out_in(modules[name.removesuffix(".weight")], after[name]).detach()
            if spec["kind"] == "quantize":
                groups = w.reshape(w.shape[0], -1, 16)
                assert max(len(torch.unique(g)) for g in groups.reshape(-1, 16)) <= 15, (spec, name)
            else:
                rows, cols = w.shape
                rank = int(torch.linalg.matrix_rank(w.double(), rtol=1e-5))
                assert rank <= math.floor(0.5 * rows * cols / (rows + cols)), (spec, name)
        # the stored form, written and applied as the transform stage does, gives the same weights back
        weights = tmp_path / f"{family}.safetensors"
        write_safetensors(weights, store, {"format": WEIGHTS_FORMAT})
        record = tmp_path / f"{family}.json"
        write_json(record, {"format": FORMAT, "spec": spec, "checkpoint_sha256": "c" * 64,
                            "weights_file": weights.name, "weights_file_sha256": sha256_file(weights),
                            "weights_sha256": weights_digest(model), "placement": {"dtype": "float32"}})
        fresh = _model(family)
        fresh.prunemem_checkpoint_sha256 = "c" * 64
        apply_transform(fresh, record)
        assert all(torch.equal(p, after[n]) for n, p in fresh.named_parameters()), spec


@pytest.mark.parametrize("family", FAMILIES)
def test_extraction_agrees_with_generate_dense_and_pruned(family):
    """Teacher-forced extraction and greedy generate() agree on each family, on windows the model
    reproduces (its own greedy continuations) and on ones it does not, dense and pruned."""
    from prunemem.evaluate.memorization import greedy_extracted, score_windows
    from prunemem.prune.calibrated import skip_blocks
    from prunemem.prune.search import skip_sublayers

    k, suffix = 8, 6
    for prune in (None, lambda m: (skip_blocks(m, [1]), skip_sublayers(m, ["2.mlp"]))):
        model = _model(family)
        if prune:
            prune(model)
        prompts = _tokens(4, k, seed=5)
        with torch.no_grad():
            own = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=suffix,
                                 do_sample=False, eos_token_id=[], pad_token_id=0)
        other = own.clone()
        other[::2, -1] = (other[::2, -1] + 1) % VOCAB  # half the windows end off the greedy path
        windows = torch.cat([own, other])
        teacher = score_windows(model, windows, k, suffix, 4)["extracted"]
        assert torch.equal(teacher, greedy_extracted(model, windows, k, suffix, pad_id=0))
        assert teacher.tolist() == [True] * 4 + [False, True, False, True]


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_checkpoint_route_and_export_standard_form(family, tmp_path):
    """A hub-style checkpoint (GPT-2's bare-transformer keys included) becomes our model.safetensors with
    the causal LM's names, loads through the map's class, and an exported variant with dropped blocks
    and zeroed sublayers reloads with transformers alone to the same logits."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from prunemem.checkpoints import load_model
    from prunemem.export import standard_form
    from prunemem.hub import _write_weights
    from prunemem.prune.calibrated import skip_blocks
    from prunemem.prune.search import skip_sublayers

    model = _model(family)
    src = tmp_path / "src"
    model.save_pretrained(src, safe_serialization=True)
    state = model.state_dict()
    if family == "gpt2":  # the hub's openai-community/gpt2 file names tensors from the bare GPT2Model
        body = arch.of(model).body + "."
        state = {k.removeprefix(body): v for k, v in state.items() if k != "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(src / "model.safetensors"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_bytes((src / "config.json").read_bytes())
    info = _write_weights([src / "model.safetensors"], "model.safetensors", ckpt / "model.safetensors",
                          ckpt / "config.json")
    assert (info["conversion"] is None) == (family != "gpt2")
    loaded = load_model(ckpt)
    assert type(loaded).__name__ == arch.of(model).model_class
    ids = _tokens(2, 12, seed=6)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    skip_blocks(loaded, [1])
    skip_sublayers(loaded, ["2.attention", "3.mlp"])
    with torch.no_grad():
        expected = loaded(input_ids=ids).logits
    changed = standard_form(loaded)
    assert changed["dropped_blocks"] == [1] and changed["zeroed_sublayers"] == ["2.attention", "3.mlp"]
    loaded.save_pretrained(tmp_path / "out", safe_serialization=True)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=False).eval()
    assert again.config.num_hidden_layers == LAYERS - 1
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, expected, atol=1e-5)


def test_width_pruning_refuses_other_families_in_one_line():
    from prunemem.prune.width import width_units

    assert len(width_units(_model("gpt_neox"))) == LAYERS * (4 + 64)
    with pytest.raises(PrunememError, match=r"^width pruning .* supports model_type gpt_neox only, not 'llama'"):
        width_units(_model("llama"))


def test_memory_plan_reads_each_family_from_the_map():
    from prunemem.memplan import Shapes

    llama = Shapes.from_config(_config("llama"))
    assert sorted(llama.linears) == sorted([(32, 32), (16, 32), (16, 32), (32, 32), (64, 32), (64, 32), (32, 64)])
    assert llama.intermediate == 64
    gpt2 = Shapes.from_config(_config("gpt2"))
    assert sorted(gpt2.linears) == sorted([(96, 32), (32, 32), (128, 32), (32, 128)])  # [out, in], not Conv1D's
    neox = Shapes.from_config(_config("gpt_neox"))
    assert neox.block_linears is None and neox.linears == [(96, 32), (32, 32), (64, 32), (32, 64)]


def test_pythia_bin_with_embed_out_converts_through_the_map(tmp_path):
    """A Pythia ``pytorch_model.bin`` names the unembedding ``embed_out`` (the module calls it
    ``lm_head``): the conversion accepts it and the checkpoint loads to the same logits."""
    from prunemem.checkpoints import load_model
    from prunemem.hub import _write_weights

    model = _model("gpt_neox")
    model.config.to_json_file(tmp_path / "config.json")
    state = {("embed_out." + k.removeprefix("lm_head.")) if k.startswith("lm_head.") else k: v
             for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_bytes((tmp_path / "config.json").read_bytes())
    info = _write_weights([tmp_path / "pytorch_model.bin"], "pytorch_model.bin", ckpt / "model.safetensors",
                          ckpt / "config.json")
    assert info["dropped_keys"] == []
    ids = _tokens(2, 12, seed=7)
    with torch.no_grad():
        assert torch.equal(load_model(ckpt)(input_ids=ids).logits, model(input_ids=ids).logits)


def test_context_length_is_read_under_each_familys_key():
    for family in RESIDUALS:
        config = _config(family).to_dict()
        assert arch.context_length(config) == 64, family
    assert arch.context_length({"model_type": "gpt2", "max_position_embeddings": 9}) is None  # GPT-2 says n_positions


@pytest.fixture
def fake_hub(monkeypatch):
    from fakehub import FakeHub
    from huggingface_hub import constants

    server = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield server
    server.close()


def test_hub_route_for_qwen3_and_gpt2_and_refusal_of_an_unknown_family(fake_hub, tmp_path):
    """What a ``models: {m: {source: hub, repo: ...}}`` entry runs: the real download code against a local
    fake hub, for a Qwen3 repo and a GPT-2 repo whose file has bare-transformer keys; the mask code then
    finds every prunable matrix under the model's own names. An unknown model_type writes nothing."""
    import json

    from safetensors.torch import save_file

    from prunemem.checkpoints import load_model
    from prunemem.hub import fetch_checkpoint
    from prunemem.prune.targets import WeightSource

    for family in ("qwen3", "gpt2"):
        model = _model(family)
        state = model.state_dict()
        if family == "gpt2":
            state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / f"{family}.safetensors"))
        fake_hub.add(f"org/{family}", "main", {"config.json": model.config.to_json_string().encode(),
                                               "model.safetensors": (tmp_path / f"{family}.safetensors").read_bytes()})
        out = fetch_checkpoint(f"org/{family}", "main", tmp_path / family, {}, cache_dir=str(tmp_path / "cache"))
        assert WeightSource(out / "model.safetensors").names == [t.name for t in arch_targets(model)]
        ids = _tokens(2, 12, seed=8)
        with torch.no_grad():
            assert torch.equal(load_model(out)(input_ids=ids).logits, model(input_ids=ids).logits)
    fake_hub.add("org/bert", "main", {"config.json": json.dumps({"model_type": "bert"}).encode(),
                                      "model.safetensors": (tmp_path / "gpt2.safetensors").read_bytes()})
    with pytest.raises(PrunememError, match=r"config.json \(prunemem never runs remote code\): model_type 'bert' is "
                                            r"not in prunemem's layer map; known: gpt2, gpt_neox, llama, qwen2, qwen3"):
        fetch_checkpoint("org/bert", "main", tmp_path / "bert", {}, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "bert").exists()
