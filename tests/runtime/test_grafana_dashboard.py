"""The Grafana dashboard: provisionable, every expression parses, names only metrics a running service exports,
counters only inside rate/increase, _bucket only inside histogram_quantile, $__rate_interval windows, units set."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from trustvlm.contract.camera_map import CameraMap, write_camera_map
from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame

from .conftest import fault_image

promql_parser = pytest.importorskip("promql_parser", reason="the dashboard lint needs promql-parser (the dev extra)")

ROOT = Path(__file__).resolve().parents[2]
COUNTER_FUNCTIONS = {"rate", "increase", "irate"}


def exported_metrics(text: str) -> dict[str, str]:
    """Series name -> type, from a Prometheus exposition (histograms give _bucket, _sum and _count)."""
    names = {}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "histogram":
            names.update({f"{name}_bucket": "bucket", f"{name}_sum": "counter", f"{name}_count": "counter"})
        elif kind == "counter":
            names[name if name.endswith("_total") else f"{name}_total"] = "counter"
        else:
            names[name] = kind
    return names


def expressions(dashboard: dict):
    """(where, expression) of every query: panels, template variables, annotations."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), \w+\)", variable["query"]["query"])
            assert match, variable
            yield f"variable {variable['name']!r}", match.group(1)
    for annotation in dashboard["annotations"]["list"]:
        yield f"annotation {annotation['name']!r}", annotation["expr"]


def walk(node, ancestors=()):
    """Every node of a parsed expression with the names of the functions around it."""
    yield node, ancestors
    kind = type(node).__name__
    if kind == "Call":
        for arg in node.args:
            yield from walk(arg, ancestors + (node.func.name,))
    elif kind == "MatrixSelector":
        yield from walk(node.vector_selector, ancestors)
    elif kind == "BinaryExpr":
        yield from walk(node.lhs, ancestors)
        yield from walk(node.rhs, ancestors)
    elif kind in ("AggregateExpr", "ParenExpr", "UnaryExpr", "SubqueryExpr"):
        yield from walk(node.expr, ancestors)


def lint(dashboard: dict, metrics: dict[str, str]) -> list[str]:
    """One line per broken rule, naming the panel (or variable, annotation) and the metric."""
    problems = []
    if "__inputs" in dashboard or dashboard.get("id") is not None or not dashboard.get("uid"):
        problems.append("dashboard: no __inputs, id null and a fixed uid are needed for file provisioning")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    if variables.get("datasource", {}).get("type") != "datasource":
        problems.append("dashboard: no datasource template variable")
    camera = variables.get("camera", {})
    if not (camera.get("multi") and camera.get("includeAll")):
        problems.append("variable 'camera': must be multi-select with All")
    for panel in dashboard["panels"]:
        if panel.get("targets") and not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"panel {panel['title']!r}: no unit")
    for where, expr in expressions(dashboard):
        windows = re.findall(r"\[([^\]]*)\]", expr)
        problems += [f"{where}: rate window [{w}] is not [$__rate_interval]" for w in windows if w != "$__rate_interval"]
        concrete = expr.replace("$__rate_interval", "1m").replace('"$camera"', '"cam"')
        try:
            tree = promql_parser.parse(concrete)
        except ValueError as error:
            problems.append(f"{where}: does not parse: {error}")
            continue
        for node, around in walk(tree):
            if type(node).__name__ != "VectorSelector":
                continue
            kind = metrics.get(node.name)
            if kind is None:
                problems.append(f"{where}: {node.name} is not exported by the service")
            elif where.startswith("variable"):
                continue  # label_values(metric, label) reads labels, not values
            elif kind == "counter" and not COUNTER_FUNCTIONS & set(around):
                problems.append(f"{where}: counter {node.name} outside rate/increase")
            elif kind == "bucket" and "histogram_quantile" not in around:
                problems.append(f"{where}: {node.name} outside histogram_quantile")
    return problems


@pytest.fixture
def live_metrics(serve, push, subscribe, fault_export, make_fault_bundle, tmp_path) -> dict[str, str]:
    """The metric names a service with a camera map exports once two cameras' frames were decided."""
    folders = {"cam_a": make_fault_bundle(tmp_path / "a"), "cam_b": make_fault_bundle(tmp_path / "b", seed=1)}
    camera_map = write_camera_map(tmp_path / "cameras.toml", CameraMap(folders))
    service = serve("--artifacts", str(fault_export), "--bundles", str(camera_map), "--metrics", "127.0.0.1:0")
    subscriber, sender, image = subscribe(service.publish), push(service.ingest), fault_image()
    for seq, camera in enumerate(("cam_a", "cam_b")):
        send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                   image.tobytes())
    assert subscriber.wait_for(lambda s: len(s.decisions) == 2, 20)
    assert subscriber.wait_for(lambda s: s.health and s.health[-1].counters.get("decisions", 0) >= 2, 20)
    text = urllib.request.urlopen(f"{service.metrics}/metrics", timeout=5).read().decode()
    assert service.stop() == 0
    return exported_metrics(text)


def test_the_dashboard_names_only_exported_metrics_and_follows_the_conventions(live_metrics):
    from trustvlm.pipelines.grafana_dashboard import DEFAULT_OUTPUT, build_dashboard  # noqa: PLC0415

    dashboard = build_dashboard()
    assert lint(dashboard, live_metrics) == []
    # the provisioned file is what the generator writes (regenerate: python -m trustvlm.pipelines.grafana_dashboard)
    assert json.loads((ROOT / DEFAULT_OUTPUT).read_text()) == json.loads(json.dumps(dashboard))
    assert any(panel.get("repeat") == "camera" for panel in dashboard["panels"])
    # And the lint names the panel and the metric of each broken rule (on a dashboard broken on purpose)
    panel = dashboard["panels"][1]
    panel["targets"][0]["expr"] = ("trustvlm_frames_received_total + trustvlm_batch_size_bucket"
                                   " + rate(trustvlm_no_such_metric_total[5m])")
    panel["fieldConfig"]["defaults"]["unit"] = ""
    dashboard["id"] = 7
    title = repr(panel["title"])
    assert set(lint(dashboard, live_metrics)) == {
        "dashboard: no __inputs, id null and a fixed uid are needed for file provisioning",
        f"panel {title}: no unit",
        f"panel {title}: rate window [5m] is not [$__rate_interval]",
        f"panel {title}: counter trustvlm_frames_received_total outside rate/increase",
        f"panel {title}: trustvlm_batch_size_bucket outside histogram_quantile",
        f"panel {title}: trustvlm_no_such_metric_total is not exported by the service"}


def test_the_generator_writes_the_provisioned_dashboard(tmp_path, capsys):
    from trustvlm.pipelines.grafana_dashboard import DEFAULT_OUTPUT, main  # noqa: PLC0415

    assert main(["--output", str(tmp_path / "dashboard.json")]) == 0
    assert (tmp_path / "dashboard.json").read_text() == (ROOT / DEFAULT_OUTPUT).read_text()
    assert "wrote" in capsys.readouterr().out
