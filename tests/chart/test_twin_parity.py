"""The local twin runs the rule the chart renders: the demo's values, read back from the YAML.

The demo builds its KEDA + HPA rule from values.yaml plus its printed overrides; a cluster
runs the ScaledObject `helm template` makes of the same values. Rendering the chart with the
demo's overrides as `--set` and reading the ScaledObject back must give the same rule:
triggers, bounds, polling, cooldown and every scale-up / scale-down policy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_checks import by_kind

from conftest import CASES, ValuesCase, effective_values, helm_template, parse_docs
from creditstream.autoscale.rule import AutoscalingConfig, flatten_values, with_queue
from creditstream.demo.values import DEMO_HPA_SYNC_PERIOD_S, DEMO_OVERRIDES, load_demo_values

pytestmark = [pytest.mark.chart, pytest.mark.timeout(300)]


def rendered_rules(
    helm: Path, sets: tuple[str, ...], files: tuple[Path, ...] = ()
) -> list[AutoscalingConfig]:
    """One rule per ScaledObject: the fused chart renders one, the staged chart one per stage."""
    docs = parse_docs(helm_template(helm, files, sets).stdout)
    return [
        AutoscalingConfig.from_scaled_object(scaled, hpa_sync_period_s=DEMO_HPA_SYNC_PERIOD_S)
        for scaled in by_kind(docs, "ScaledObject")
    ]


def rendered_rule(
    helm: Path, sets: tuple[str, ...], files: tuple[Path, ...] = ()
) -> AutoscalingConfig:
    (rule,) = rendered_rules(helm, sets, files)
    return rule


def test_the_demo_twin_runs_the_scaled_object_the_chart_renders(helm: Path) -> None:
    demo = load_demo_values([], "q.demo").autoscaling
    rendered = rendered_rule(helm, tuple(flatten_values(DEMO_OVERRIDES)))
    assert with_queue(rendered, demo.queue_name) == demo
    # the part the latency depends on, spelled out
    assert rendered.polling_interval_s == 1
    assert rendered.scale_up == demo.scale_up
    assert {(p.kind, p.value, p.period_s) for p in rendered.scale_up.policies} == {
        ("Pods", 4, 15.0),
        ("Percent", 100, 15.0),
    }


# NOTE: cases with autoscaling disabled render no ScaledObject: nothing to compare.
SCALED_CASES = [
    pytest.param(case, id=case.id)
    for case in CASES
    if effective_values(case)["autoscaling"]["enabled"]
]


@pytest.mark.parametrize("case", SCALED_CASES)
def test_every_values_case_renders_the_rule_its_values_give(helm: Path, case: ValuesCase) -> None:
    expected = AutoscalingConfig.from_values(
        effective_values(case), hpa_sync_period_s=DEMO_HPA_SYNC_PERIOD_S
    )
    rules = rendered_rules(helm, (), case.files)
    assert rules, "autoscaling enabled but no ScaledObject rendered"
    # NOTE: staged mode renders one ScaledObject per stage, each on its own queue; every one
    # must run the rule the values give, only the queue differs.
    for rule in rules:
        assert with_queue(rule, expected.queue_name) == expected
