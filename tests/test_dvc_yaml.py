"""dvc.yaml is generated from the plan; the committed file must not be stale."""

from conftest import REPO
from prunemem.dvcgen import render, stages
from prunemem.plan import Plan


def test_committed_dvc_yaml_is_up_to_date():
    plan = Plan.load([REPO / "params.yaml"])
    assert (REPO / "dvc.yaml").read_text() == render(plan), "run `prunemem dvc-yaml` and commit dvc.yaml"


def test_every_artifact_is_a_dvc_output(default_params):
    plan = Plan(default_params)
    outs = {o for s in stages(plan)["stages"].values() for o in s["outs"]}
    for model in plan.models:
        assert plan.checkpoint_dir(model).as_posix() in outs and plan.samples_dir(model).as_posix() in outs
        for method, level in plan.variants():
            assert plan.metrics_dir(model, method, level).as_posix() in outs
            artifact = plan.variant_artifact(model, method, level)
            assert (artifact is None) == (method == "dense")
            if artifact is not None:
                assert artifact.as_posix() in outs
    assert {"reports/results.csv", "reports/report.html"} <= outs
