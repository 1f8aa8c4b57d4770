"""``prunemem <verb>``: one subcommand per pipeline stage. Snakemake rules and DVC stages call these.

    prunemem validate                               # check params.yaml, print the plan size
    prunemem fetch      --model pythia-160m         # data/fetched/pythia-160m.json (hub datasets -> HF cache)
    prunemem checkpoint --model tiny                # data/checkpoints/tiny/ (a verified copy of the shipped model)
    prunemem checkpoint --model tiny --retrain --ship   # retrain the embedded model and re-ship it
    prunemem samples    --model tiny                # data/samples/tiny/
    prunemem mask       --model tiny --method global --level 0.5
    prunemem transform  --model tiny --method int4   --level 0     # quantization / low-rank baselines
    prunemem evaluate   --model tiny --method dense  --level 0
    prunemem evaluate   --model tiny --method global --level 0.3 --level 0.5   # levels in turn, one process
    prunemem downstream --model tiny --method global --level 0.5   # lm-eval tasks (params downstream:)
    prunemem downstream --model tiny                # every variant of tiny (or of one --method), one process
    prunemem report                                 # reports/results.csv, reports/report.html
    prunemem export     --model tiny --method global --level 0.5 --out DIR   # a standard HF checkpoint
    prunemem audit                                  # re-hash everything, check it against params and dvc.lock
    prunemem dvc-yaml                               # regenerate dvc.yaml from the plan

``--params`` may be repeated; later files override earlier ones (as Snakemake's --configfile).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial

from prunemem.errors import PrunememError
from prunemem.plan import Plan

log = logging.getLogger("prunemem")


def _progress(desc: str):
    from prunemem.runtime import progress

    return partial(progress, desc=desc)


def _check_model(plan: Plan, model: str) -> None:
    if model not in plan.models:
        raise PrunememError(f"--model: {model!r} is not in params models; allowed: {', '.join(plan.models)}")


def _check_variant(plan: Plan, model: str, method: str, level: str) -> None:
    variants = plan.variants(model)
    if (method, level) not in variants:
        methods = list(dict.fromkeys(m for m, _ in variants))
        if method not in methods:
            raise PrunememError(f"--method: {method!r} is not in the plan; allowed: {', '.join(methods)}")
        allowed = ", ".join(lv for m, lv in variants if m == method)
        raise PrunememError(f"--level: {level!r} is not a level of {method}; allowed: {allowed}")


def cmd_validate(plan: Plan, args) -> None:
    n = sum(len(plan.variants(m)) for m in plan.models)
    print(f"ok: {len(plan.models)} model(s) x {n // len(plan.models)} variants x {len(plan.ks)} k = "
          f"{n * len(plan.ks)} result rows")


def fetch_command(args, model: str) -> str:
    """The command line that fetches ``model``'s sample sources, as errors tell the user to run it."""
    import shlex

    return " ".join(["prunemem", *(f"--params {shlex.quote(p)}" for p in args.params), "fetch", "--model", model])


def cmd_fetch(plan: Plan, args) -> None:
    from prunemem.data.fetch import fetch

    _check_model(plan, args.model)
    print(fetch(plan.params, args.model, plan.fetch_path(args.model), fetch_command(args, args.model),
                prov_params=plan.stage_params("fetch", args.model)))


def cmd_checkpoint(plan: Plan, args) -> None:
    _check_model(plan, args.model)
    if plan.source(args.model) == "local":
        from prunemem.hub import adopt_local

        spec = plan.params["models"][args.model]
        out = adopt_local(spec["path"], plan.checkpoint_dir(args.model), plan.stage_params("checkpoint", args.model),
                          spec.get("sha256"))
    elif plan.source(args.model) == "hub":
        from prunemem.hub import fetch_checkpoint

        spec = plan.params["models"][args.model]
        out = fetch_checkpoint(spec["repo"], spec["revision"], plan.checkpoint_dir(args.model),
                               plan.stage_params("checkpoint", args.model))
    else:
        import time

        from prunemem.checkpoints import build_embedded

        if args.ship and not args.retrain:
            raise PrunememError("--ship: ships a model trained by this command; allowed: with --retrain")
        start = time.perf_counter()
        from prunemem.provenance import git_commit

        commit = git_commit()  # the code the training runs, before the tree can move on
        out = build_embedded(plan.checkpoint_dir(args.model), plan.params, progress=_progress("train"),
                             prov_params=plan.stage_params("checkpoint", args.model), retrain=args.retrain)
        if args.ship:
            from prunemem.checkpoints import embedded_recipe
            from prunemem.shipped import ship

            ship(out, embedded_recipe(plan.params), time.perf_counter() - start,
                 plan.params["embedded"]["training"]["threads"], commit)
    print(out)


def cmd_samples(plan: Plan, args) -> None:
    from prunemem.data import samples

    _check_model(plan, args.model)
    samples.build(plan.checkpoint_dir(args.model), plan.samples_dir(args.model), plan.params, args.model,
                  prov_params=plan.stage_params("samples", args.model), fetch_record=plan.fetch_path(args.model),
                  fetch_command=fetch_command(args, args.model))
    print(plan.samples_dir(args.model))


def _check_artifact(plan: Plan, args, kind: str) -> None:
    """A mask or transform job: the model, a method of that kind in the plan, its levels."""
    _check_model(plan, args.model)
    if args.method not in plan.variant_methods or plan.kind(args.method) != kind:
        allowed = ", ".join(m for m in plan.variant_methods if plan.kind(m) == kind)
        problem = f"has no {kind}" if args.method in plan.variant_methods else f"is not a {kind} method in params"
        raise PrunememError(f"--method: {args.method} {problem}; allowed: {allowed}")
    _check_levels(plan, args)


def _check_levels(plan: Plan, args) -> None:
    """Every --level before any is built: a typo in the last one must not cost the first ones' work."""
    for level in args.level:
        _check_variant(plan, args.model, args.method, level)


# --level repeated runs the levels one after another in this process (a batch, jobs.batch: method):
# each is built exactly as its own job would build it, so one import of torch serves them all.
def cmd_mask(plan: Plan, args) -> None:
    from prunemem.prune.run import build_mask

    _check_artifact(plan, args, "mask")
    for level in args.level:
        print(build_mask(plan, args.model, args.method, level))


def cmd_transform(plan: Plan, args) -> None:
    from prunemem.compress.run import build_transform

    _check_artifact(plan, args, "transform")
    for level in args.level:
        print(build_transform(plan, args.model, args.method, level))


def cmd_evaluate(plan: Plan, args) -> None:
    from prunemem.evaluate.run import evaluate

    _check_model(plan, args.model)
    _check_levels(plan, args)
    for level in args.level:
        evaluate(plan, args.model, args.method, level, progress=_progress("evaluate"))
        print(plan.metrics_dir(args.model, args.method, level))


def cmd_downstream(plan: Plan, args) -> None:
    """The variants named (--level repeatable, as for evaluate), every level of --method, or every
    variant of the model, in turn in this process: the tasks are read and the imports paid once."""
    from prunemem.downstream.run import Downstream

    _check_model(plan, args.model)
    if args.level and args.method is None:
        raise PrunememError("--level: given without --method; allowed: --method M --level L, --method M, or neither")
    if args.method is not None and not args.level:
        args.level = [lv for m, lv in plan.variants(args.model) if m == args.method] or [""]
    if args.method is not None:
        _check_levels(plan, args)
    variants = [(args.method, lv) for lv in args.level] if args.method is not None else plan.variants(args.model)
    with Downstream(plan, args.model) as tasks:
        for method, level in variants:
            tasks.run(method, level)
            print(plan.downstream_dir(args.model, method, level))


def cmd_report(plan: Plan, args) -> None:
    from prunemem.report.html import build

    csv, page = build(plan)
    print(csv)
    print(page)


def cmd_audit(plan: Plan, args) -> None:
    from prunemem.audit import Audit

    audit = Audit(plan)
    mismatches = audit.run(dvc=not args.no_dvc)
    for line in mismatches:
        print(line)
    print(f"audit: {audit.checked} artifacts checked, {len(mismatches)} mismatches", file=sys.stderr)
    if mismatches:
        raise SystemExit(1)


def cmd_export(plan: Plan, args) -> None:
    from prunemem.export import export_variant

    _check_model(plan, args.model)
    _check_variant(plan, args.model, args.method, args.level)
    print(export_variant(plan, args.model, args.method, args.level, args.out, args.dtype))


def cmd_dvc_yaml(plan: Plan, args) -> None:
    from prunemem.dvcgen import write_dvc_yaml

    print(write_dvc_yaml(plan, args.params, args.output))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prunemem", description=__doc__.split("\n")[0])
    ap.add_argument("--params", action="append", help="params YAML (repeatable; default params.yaml)")
    sub = ap.add_subparsers(dest="verb", required=True)
    sub.add_parser("validate", help="check params and print the plan size").set_defaults(fn=cmd_validate)
    for name, fn, helptext in (("fetch", cmd_fetch, "download the dataset files a model's samples read"),
                               ("checkpoint", cmd_checkpoint, "build, fetch or adopt a model checkpoint"),
                               ("samples", cmd_samples, "build member / non-member / perplexity sets")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True)
        if name == "checkpoint":
            p.add_argument("--retrain", action="store_true",
                           help="embedded: train even when the shipped checkpoint matches the recipe")
            p.add_argument("--ship", action="store_true",
                           help="embedded, with --retrain: replace the shipped checkpoint and its pins")
        p.set_defaults(fn=fn)
    for name, fn, helptext in (("mask", cmd_mask, "compute a pruning mask"),
                               ("transform", cmd_transform, "record a compression transform (int8, int4, lowrank)"),
                               ("evaluate", cmd_evaluate, "evaluate a (masked) model")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True)
        p.add_argument("--method", required=True)
        p.add_argument("--level", required=True, action="append",
                       help="as spelt in paths, e.g. 0.5 (dense: 0); repeat it to build several levels in turn")
        p.set_defaults(fn=fn)
    p = sub.add_parser("downstream", help="score variants on lm-eval tasks (params downstream:)")
    p.add_argument("--model", required=True)
    p.add_argument("--method", help="default: every method of the model's grid")
    p.add_argument("--level", action="append",
                   help="as spelt in paths, e.g. 0.5 (dense: 0); repeatable; default: every level of --method")
    p.set_defaults(fn=cmd_downstream)
    p = sub.add_parser("export", help="write one variant as a standard Hugging Face checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--level", required=True, help="as spelt in paths, e.g. 0.5 (dense: 0)")
    p.add_argument("--out", required=True, help="a new or empty directory")
    p.add_argument("--dtype", default="float32", help="float32 (the CPU evaluation's, exact), bfloat16 or float16")
    p.set_defaults(fn=cmd_export)
    sub.add_parser("report", help="results.csv and report.html").set_defaults(fn=cmd_report)
    p = sub.add_parser("audit", help="re-hash every artifact and check it against its recorded inputs and params")
    p.add_argument("--no-dvc", action="store_true", help="skip the comparison with dvc.lock")
    p.set_defaults(fn=cmd_audit)
    p = sub.add_parser("dvc-yaml", help="regenerate dvc.yaml from the plan")
    p.add_argument("--output", default="dvc.yaml")
    p.set_defaults(fn=cmd_dvc_yaml)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.params = args.params or ["params.yaml"]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        plan = Plan.load(args.params)
        args.fn(plan, args)
    except PrunememError as err:
        print(f"prunemem: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a file problem no stage anticipated: still one line naming the file
        print(f"prunemem: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
