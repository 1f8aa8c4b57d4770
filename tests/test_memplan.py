"""The memory plan (prunemem.memplan) against what block-by-block calibration really allocates on the CPU,
and the placement checks that run before any weights load."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from conftest import REPO, tiny_config
from prunemem import memplan
from prunemem.blockwise import HessianStats, LiveBytes, blockwise, choose_offload, resolve_placement
from prunemem.errors import PrunememError
from prunemem.prune import calibrated as cal
from prunemem.prune.registry import REGISTRY, resolve

# what the methods below are resolved against: OWL on Wanda scores (calibrated), GPTQ's transform
PARAMS = {"prune": {"owl": {"score": "wanda"}}, "compress": {"quantize": {"int4-gptq": {"algorithm": "gptq"}}}}


def test_pythia_shapes_count_the_published_parameters():
    assert memplan.Shapes.pythia("160m").params == pytest.approx(162_322_944, rel=1e-6)  # HF num_parameters()
    assert memplan.Shapes.pythia("12b").params == pytest.approx(11_846_072_320, rel=1e-6)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_plan_matches_tracked_bytes_of_a_small_config(method):
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = tiny_config(hidden=64, layers=2, ctx=64)
    model = GPTNeoXForCausalLM(config).eval()
    shapes = memplan.Shapes.from_config(config)
    assert shapes.params == sum(p.numel() for p in model.parameters())
    sequences, seq_len, batch = 8, 48, 4
    ids = torch.randint(1, 64, (sequences, seq_len), generator=torch.Generator().manual_seed(0))
    hessian = method == "sparsegpt"
    make = (lambda m: HessianStats(m.in_features, "cpu")) if hessian else (lambda m: cal.NormStats(m.in_features, "cpu"))

    def edit(index, linears, stats):
        for name, module in linears.items():
            if hessian:
                new, _ = cal.sparsegpt(module.weight, stats[name].hessian, 0.5)
                module.weight.copy_(new)
            else:
                module.weight.mul_(cal.row_mask(cal.wanda_score(module.weight, stats[name]), 0.5))

    meters = []
    with LiveBytes() as live:
        blockwise(model, ids, make, edit, batch_size=batch, meter=lambda i, b: meters.append(b))
    plan = memplan.plan(resolve(method, PARAMS), shapes, sequences, seq_len, batch, "float32")
    for held in meters:  # what each block held: exactly the plan's parts
        assert held == {"activations": plan["activations"], "stats": plan["stats"],
                        "block_weights": shapes.block_params * 4}
    assert plan["weights"] == sum(p.numel() * 4 for p in model.parameters())
    allocated = plan["device"] - plan["weights"]  # the weights existed before the pass
    assert live.peak <= allocated <= 1.35 * live.peak, (live.peak, allocated)
    assert live.live == 0  # nothing of the pass outlives it
    offloaded = memplan.plan(resolve(method, PARAMS), shapes, sequences, seq_len, batch, "float32", offload=True)
    assert offloaded["weights"] == plan["weights"] - (shapes.layers - 1) * shapes.block_params * 4


def test_choose_offload_and_the_one_line_when_nothing_fits():
    figures = {False: {"device": 30 * memplan.GIB, "activations": 2 * memplan.GIB},
               True: {"device": 8 * memplan.GIB, "activations": 2 * memplan.GIB}}
    assert choose_offload(figures.get, 40 * memplan.GIB, "auto", "prune") is False
    assert choose_offload(figures.get, 20 * memplan.GIB, "auto", "prune") is True
    with pytest.raises(PrunememError) as err:
        choose_offload(figures.get, 20 * memplan.GIB, False, "prune")
    assert str(err.value) == ("prune: the memory plan needs 30.0 GiB on the device and 20.0 GiB is free; set "
                              "prune.offload: true (blocks stream from host memory) or a smaller prune.batch_size")
    with pytest.raises(PrunememError) as err:  # offloaded already: the fix is a smaller calibration working set
        choose_offload(figures.get, 4 * memplan.GIB, "auto", "prune")
    assert str(err.value) == ("prune: the memory plan needs 8.0 GiB on the device and 4.0 GiB is free even with blocks "
                              "streamed from host memory (2.0 GiB of it one block's calibration activations); set "
                              "fewer samples.calibration.sequences or a smaller prune.batch_size")


@pytest.mark.parametrize("verb", [("mask", "--method", "sparsegpt", "--level", "0.5"),
                                  ("transform", "--method", "int4-gptq", "--level", "0")])
def test_cli_a_model_the_gpu_cannot_hold_is_one_line_before_any_weights_load(tmp_path, monkeypatch, capsys, verb):
    """The device is a stand-in (CUDA visible, 0.3 GiB free); the plan, the config read and the message are real."""
    import yaml

    from prunemem.cli import main

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prune"].update(device="cuda", dtype="bfloat16", offload="auto")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ckpt = tmp_path / "data" / "checkpoints" / "tiny"
    from transformers import GPTNeoXConfig

    GPTNeoXConfig(vocab_size=50304, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=8192, rotary_pct=0.25).save_pretrained(ckpt)  # pythia-1.4b's shape, no weights
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0.3 * memplan.GIB, 80 * memplan.GIB))
    monkeypatch.chdir(tmp_path)
    assert main(["--params", "params.yaml", verb[0], "--model", "tiny", *verb[1:]]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("prunemem: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert re.fullmatch(r"prunemem: error: prune: the memory plan needs \d+\.\d GiB on the device and 0\.3 GiB is free "
                        r"even with blocks streamed from host memory \(\d+\.\d GiB of it one block's calibration "
                        r"activations\); set fewer samples\.calibration\.sequences or a smaller prune\.batch_size",
                        lines[0]), lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_names_the_key_before_reading_the_checkpoint(tmp_path):
    with pytest.raises(PrunememError, match=r"^prune\.device: 'cuda' requested but no CUDA device is visible$"):
        resolve_placement({"device": "cuda"}, "prune", tmp_path / "absent", resolve("wanda", PARAMS), 8, 16)
    placement = resolve_placement({"device": "auto", "dtype": "auto"}, "prune", tmp_path / "absent",
                                  resolve("wanda", PARAMS), 8, 16)
    assert (placement.device, placement.dtype, placement.offload) == ("cpu", torch.float32, False)


def test_twelve_b_plans_fit_one_80gb_gpu():
    shapes = memplan.Shapes.pythia("12b")
    for method in ("wanda", "sparsegpt", "int4-gptq", "sleb", "owl", "sparsegpt-2of4", "wanda-ccds"):
        assert memplan.plan(resolve(method, PARAMS), shapes, 128, 2048)["device"] < 80e9 * 0.9, method
    assert memplan.plan("embed", shapes, 128, 2048)["device"] < 80e9 * 0.9  # the CCDS embedding


def test_the_memory_plan_class_is_a_registry_trait():
    """Every calibrated method names its class in the registry; the plan reads that trait, not the name."""
    calibrated = [n for n, e in REGISTRY.items() if e.calibrated and e.standalone]
    resolved = [resolve(n, PARAMS) for n in calibrated]
    assert {m.workload for m in resolved if m.calibration} <= set(memplan.KINDS) - {"embed"}
    assert [resolve(n, PARAMS).workload for n in ("sparsegpt-2of4", "wanda-ccds", "int4-gptq")] == \
        ["hessian", "scores", "gptq"]
    shapes = memplan.Shapes.pythia("160m")
    assert memplan.plan(resolve("sparsegpt-2of4", PARAMS), shapes, 8, 64) == memplan.plan("hessian", shapes, 8, 64)
    assert resolve("owl", PARAMS).calibration_passes == 4
    for uncalibrated in ("global", "magnitude-2of4", "int4"):
        with pytest.raises(ValueError, match="has no memory plan"):
            memplan.plan(resolve(uncalibrated, {**PARAMS, "compress": {"quantize": {"int4": {}}}}), shapes, 8, 64)
    with pytest.raises(ValueError, match="memory-plan class 'wanda'"):
        memplan.plan("wanda", shapes, 8, 64)  # a method name is not a class


def test_flops_and_cluster_resources_scale_with_the_method():
    from prunemem.plan import Plan
    from prunemem.cluster import job_resources

    shapes = memplan.Shapes.pythia("12b")
    flops = {m: memplan.calibration_flops(resolve(m, PARAMS), shapes, 128, 2048)
             for m in ("wanda", "owl", "sparsegpt", "sleb")}
    assert flops["wanda"] < flops["sparsegpt"] < flops["sleb"] and flops["owl"] == 2 * flops["wanda"]
    parts = memplan.calibration_flop_parts(resolve("sparsegpt", PARAMS), shapes, 128, 2048)
    assert parts["matmul"] == pytest.approx(2 * 2 * shapes.layers * sum(o * n for o, n in shapes.linears) * 128 * 2048,
                                            rel=0.1)
    hessians = shapes.layers * sum(2 * 128 * 2048 * n * n for _, n in shapes.linears)
    assert hessians < parts["float64"] < 1.2 * hessians  # the Hessians dominate the float64 work at 128 x 2048
    forward = 2 * shapes.layers * sum(o * n for o, n in shapes.linears) * 128 * 2048
    assert flops["wanda"] == pytest.approx(2 * forward, rel=0.1)  # two passes per block (+7% attention at 2048)
    plan = Plan.load([REPO / "workflow/configs/pythia.yaml", REPO / "workflow/configs/pythia-evop.yaml"])
    small, big = (job_resources(plan, next(j for j in plan.jobs("mask") if j.model == m and j.method == "sleb"))
                  for m in ("pythia-160m", "pythia-12b"))
    assert big["runtime"] > 4 * small["runtime"] and big["mem_mb"] > small["mem_mb"] and big["gpu"] == 1
    # a site's own copy (source: local) is sized by its directory's name, as the hub repo is by its id
    params = copy.deepcopy(plan.params)
    spec = params["models"]["pythia-12b"]
    spec.update(source="local", path="/models/pythia-12b")
    for key in ("repo", "revision"):
        spec.pop(key)
    local = Plan(params)
    assert job_resources(local, next(j for j in local.jobs("mask") if j.model == "pythia-12b"
                                     and j.method == "sleb")) == big


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("verb", [("mask", "--method", "wanda", "--level", "0.5"),
                                  ("transform", "--method", "int4-gptq", "--level", "0")])
def test_cli_cuda_without_cuda_is_one_line_naming_the_key_before_reading_anything(tmp_path, monkeypatch, capsys,
                                                                                    verb):
    import yaml

    from prunemem.cli import main

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prune"]["device"] = "cuda"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # no checkpoint, no samples: the device check must come first
    assert main(["--params", "params.yaml", verb[0], "--model", "tiny", *verb[1:]]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("prunemem: error:")]
    assert lines == ["prunemem: error: prune.device: 'cuda' requested but no CUDA device is visible"], err[-2000:]
    assert "Traceback" not in err
