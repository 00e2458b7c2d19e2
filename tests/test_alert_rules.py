"""deploy/prometheus: promtool checks the alert rules and runs their unit tests
(deploy/prometheus/tests/*.yaml), which make every alert fire and stay quiet."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from tests.promtool import ROOT, Promtool

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yaml"))


def load(path: Path) -> Any:
    with path.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def expectations(doc: dict[str, Any]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(test index, expectation index, alert_rule_test entry) of a unit-test file."""
    for t, test in enumerate(doc["tests"]):
        for e, expected in enumerate(test.get("alert_rule_test", [])):
            yield t, e, expected


def seconds(duration: str) -> int:
    """A Prometheus duration such as 3h30m, in seconds."""
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * unit[u] for n, u in parts)


def output(result: Any) -> str:
    return f"{result.stdout}\n{result.stderr}"


def test_promtool_checks_the_rules_clean(promtool: Promtool) -> None:
    """`promtool check rules`, every lint fatal, accepts alerts.yaml and counts all its rules."""
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(ALERTS))
    assert result.returncode == 0, output(result)
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout, output(result)


def test_rule_unit_tests_pass(promtool: Promtool) -> None:
    """`promtool test rules` passes every unit-test file in deploy/prometheus/tests."""
    assert RULE_TESTS
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, output(result)
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), output(result)


def test_unit_tests_make_every_alert_fire_and_stay_quiet() -> None:
    """Each alert, at each of its severities, fires in some test and is quiet in another."""
    fired: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = load(path)
        assert doc["rule_files"] == ["../alerts.yaml"], path.name
        for _t, _e, expected in expectations(doc):
            name = expected["alertname"]
            if not expected["exp_alerts"]:
                quiet.add(name)
            for alert in expected["exp_alerts"]:
                fired.add((name, alert["exp_labels"]["severity"]))
    rules = {(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()}
    assert not rules - fired, f"never seen firing: {sorted(rules - fired)}"
    assert not fired - rules, f"expected but not in alerts.yaml: {sorted(fired - rules)}"
    names = {name for name, _severity in rules}
    assert not names - quiet, f"never seen quiet: {sorted(names - quiet)}"


def dropped_namespace(expr: promql_parser.Expr) -> list[str]:
    """Each aggregation or vector match in ``expr`` that loses the ``namespace`` label.

    The one allowed: ``on () absent(...)``, the alert that fires when nothing is scraped at
    all (there is no namespace then to keep).
    """
    found: list[str] = []
    todo = [expr]
    while todo:
        node = todo.pop()
        if isinstance(node, promql_parser.AggregateExpr):
            mod = node.modifier
            if mod is None:
                found.append(f"{node.op} without by (...): {node}")
            elif (mod.type == promql_parser.AggModifierType.By) != ("namespace" in mod.labels):
                found.append(f"{node.op} {mod}: {node}")
        if isinstance(node, promql_parser.BinaryExpr):
            match = node.modifier.matching if node.modifier is not None else None
            absent = isinstance(node.rhs, promql_parser.Call) and node.rhs.func.name == "absent"
            on = match is not None and match.type == promql_parser.LabelModifierType.Include
            if on and match is not None and "namespace" not in match.labels and not absent:
                found.append(f"{node.modifier}: {node}")
        for name in ("lhs", "rhs", "expr", "param"):
            child = getattr(node, name, None)
            if isinstance(child, promql_parser.Expr):
                todo.append(child)
        todo += [arg for arg in getattr(node, "args", []) or [] if arg is not None]
    return found


def test_every_alert_keeps_the_namespace() -> None:
    """One Prometheus may scrape several installs: every aggregation and vector match of
    every alert keeps ``namespace``, so prod's alert is not summed with staging's and
    carries the namespace to route on."""
    problems = {
        rule["alert"]: found
        for rule in alert_rules()
        if (found := dropped_namespace(promql_parser.parse(rule["expr"])))
    }
    assert not problems


def test_a_sum_across_namespaces_is_caught() -> None:
    for expr in (
        "sum(up) == 0",
        "min by (account) (x) < 1",
        "a > on (pod) b",
        "sum without (namespace) (x)",
    ):
        assert dropped_namespace(promql_parser.parse(expr)), expr
    assert not dropped_namespace(
        promql_parser.parse("sum by (namespace) (up) == 0 or on () absent(up)")
    )


def test_a_wrong_expectation_fails(promtool: Promtool, tmp_path: Path) -> None:
    """In every unit-test file, dropping an expected alert or expecting one where none
    fires makes promtool fail, while the untouched tests pass: the harness can fail."""

    def run(tests: list[dict[str, Any]]) -> Any:
        path = tmp_path / "rule-test.yaml"
        path.write_text(yaml.safe_dump({**doc, "tests": tests}), encoding="utf-8")
        return promtool("test", "rules", str(path))

    for path in RULE_TESTS:
        doc = load(path)
        doc["rule_files"] = [str(ALERTS)]
        # From the quickest tests to evaluate: promtool evaluates up to the latest time.
        length = [
            max(seconds(x["eval_time"]) for x in test["alert_rule_test"]) for test in doc["tests"]
        ]
        entries = sorted(expectations(doc), key=lambda entry: length[entry[0]])
        firing = next((t, e) for t, e, x in entries if x["exp_alerts"])
        silent = next((t, e) for t, e, x in entries if not x["exp_alerts"])
        chosen = sorted({firing[0], silent[0]})
        assert run([doc["tests"][t] for t in chosen]).returncode == 0, path.name
        for (t, e), wrong in ((firing, []), (silent, [{"exp_labels": {"severity": "warning"}}])):
            test = copy.deepcopy(doc["tests"][t])
            test["alert_rule_test"][e]["exp_alerts"] = wrong
            result = run([test])
            assert result.returncode != 0, (path.name, test["name"], e)
            assert "FAILED" in output(result), output(result)
