"""The Grafana dashboard of `trustvlm serve`, as code: panels from a few builders, written to deploy/grafana/.

    python -m trustvlm.pipelines.grafana_dashboard [--output deploy/grafana/dashboards/trustvlm.json]

The dashboard reads the service's Prometheus metrics (``--metrics``; :mod:`trustvlm.runtime.metrics`).
It follows what file provisioning needs: no ``__inputs`` (provisioning never fills them), ``id`` null
and a fixed ``uid``, a ``datasource`` template variable (the provisioned data source has the fixed uid
:data:`DATASOURCE_UID`), a multi-select ``camera`` variable with All, a unit on every panel, rate
windows of ``$__rate_interval``, counters only inside ``rate``/``increase``, ``_bucket`` series only
inside ``histogram_quantile``. ``tests/runtime/test_grafana_dashboard.py`` checks all of it against the
metrics a running service exports, and that the file in deploy/ is what this module writes.

Rows: the service (frames/s, accept share, deferrals by reason, out-of-distribution deferrals,
latency percentiles, batch size, encoder busy share, time since each camera's last decision, the bundle
in use), then one row repeated per camera, then the guarantee: each camera's monitor state and evidence, the
audit's risk bounds, state and labels, deferrals ``guarantee_lost``. Bundle reloads are annotations.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["DASHBOARD_UID", "DATASOURCE_UID", "DEFAULT_OUTPUT", "build_dashboard", "main"]

DASHBOARD_UID = "trustvlm-edge"
DATASOURCE_UID = "trustvlm-prometheus"
DEFAULT_OUTPUT = Path("deploy/grafana/dashboards/trustvlm.json")
CAMERAS = 'camera=~"$camera"'
RATE = "[$__rate_interval]"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _target(expr: str, legend: str, ref: str) -> dict:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def _panel(title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int, width: int = 12,
           kind: str = "timeseries", description: str = "") -> dict:
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": width, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {},
            "targets": [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)]}


def _rate(metric: str, matchers: str = CAMERAS) -> str:
    return f"rate({metric}{{{matchers}}}{RATE})" if matchers else f"rate({metric}{RATE})"


def _quantiles(metric: str, by: str, matchers: str = CAMERAS) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le, {by}) ({_rate(metric + '_bucket', matchers)}))",
             f"p{round(q * 100)} {{{{{by}}}}}") for q in (0.5, 0.95, 0.99)]


def _service_panels(y: int) -> list[dict]:
    decisions = "trustvlm_camera_decisions_total"
    accepts, defers = CAMERAS + ',decision="accept"', CAMERAS + ',decision="defer"'
    atypical = CAMERAS + ',reason="out_of_distribution"'
    accept_share = f"sum by (camera) ({_rate(decisions, accepts)}) / sum by (camera) ({_rate(decisions)})"
    return [
        _panel("Frames received per second", "reqps",
               [(f"sum by (camera) ({_rate('trustvlm_frames_received_total')})", "{{camera}}")], 0, y),
        _panel("Accept share", "percentunit", [(accept_share, "{{camera}}")], 12, y,
               description="accepted / all decisions of each camera"),
        _panel("Deferrals per second by reason", "reqps",
               [(f"sum by (reason) ({_rate(decisions, defers)})", "{{reason}}")], 0, y + 8),
        _panel("Out-of-distribution deferrals per second", "reqps",
               [(f"sum by (camera) ({_rate(decisions, atypical)})", "{{camera}}")], 12, y + 8),
        _panel("Latency from capture", "s", _quantiles("trustvlm_camera_latency_from_capture_seconds", "camera"),
               0, y + 16, description="capture to publish, per camera"),
        _panel("Time since each camera's last decision", "s",
               [(f"time() - max by (camera) (trustvlm_camera_last_decision_timestamp_seconds{{{CAMERAS}}})",
                 "{{camera}}")], 12, y + 16,
               description="a camera that goes quiet climbs here; the service's heartbeat is on trust/_health"),
        _panel("Batch size", "short", _quantiles("trustvlm_batch_size", "instance", ""), 0, y + 24),
        _panel("Encoder busy share", "percentunit",
               [(f"rate(trustvlm_batch_seconds_sum{RATE})", "{{instance}}")], 12, y + 24,
               description="seconds spent scoring batches per second of wall time"),
        _panel("Bundle in use", "none",
               [(f"max by (camera, bundle_id) (trustvlm_camera_bundle_info{{{CAMERAS}}})", "{{camera}} {{bundle_id}}")],
               0, y + 32, width=24, kind="table"),
    ]


def _camera_row(y: int) -> list[dict]:
    one = 'camera="$camera"'
    row = {"type": "row", "title": "Camera $camera", "collapsed": False, "repeat": "camera", "panels": [],
           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}
    return [row,
            _panel("$camera: decisions per second", "reqps",
                   [(f"sum by (decision, reason) ({_rate('trustvlm_camera_decisions_total', one)})",
                     "{{decision}} {{reason}}")], 0, y + 1),
            _panel("$camera: latency from capture", "s",
                   _quantiles("trustvlm_camera_latency_from_capture_seconds", "camera", one), 12, y + 1)]


def _guarantee_panels(y: int) -> list[dict]:
    lost = CAMERAS + ',reason="guarantee_lost"'
    return [{"type": "row", "title": "Guarantee", "collapsed": False, "panels": [],
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}},
            _panel("Guarantee monitor", "none",
                   [(f"max by (camera) (trustvlm_camera_guarantee_state{{{CAMERAS}}})", "{{camera}}")], 0, y + 1,
                   description="0 ok, 1 watch (evidence of a change, reported only), 2 alarm (frames deferred "
                               "guarantee_lost), -1 not watched (a bundle without a reference sample)"),
            _panel("Monitor evidence", "none",
                   [(f"max by (camera) (trustvlm_camera_guarantee_evidence{{{CAMERAS}}})", "{{camera}}")], 12, y + 1,
                   description="log10 of the evidence over the alarm line: 0 is the line"),
            _panel("Audit: risk among accepted frames", "percentunit",
                   [(f"max by (camera) (trustvlm_camera_audit_risk_upper{{{CAMERAS}}})", "upper {{camera}}"),
                    (f"max by (camera) (trustvlm_camera_audit_risk_lower{{{CAMERAS}}})", "lower {{camera}}")],
                   0, y + 9, description="anytime-valid bounds from the labels of audited frames"),
            _panel("Audit state and labels", "none",
                   [(f"max by (camera) (trustvlm_camera_audit_state{{{CAMERAS}}})", "state {{camera}}"),
                    (f"max by (camera) (trustvlm_camera_audit_labels{{{CAMERAS}}})", "labels {{camera}}")],
                   12, y + 9, description="state: 0 unverified, 1 verified, 2 violated, -1 no audit"),
            _panel("Deferred guarantee_lost per second", "reqps",
                   [(f"sum by (camera) ({_rate('trustvlm_camera_decisions_total', lost)})", "{{camera}}")],
                   0, y + 17),
            _panel("Audit labels per second by outcome", "reqps",
                   [(f"sum by (outcome) ({_rate('trustvlm_feedback_labels_total', '')})", "{{outcome}}")],
                   12, y + 17, description="only labels of frames marked audit: true match")]


def build_dashboard() -> dict:
    """The dashboard as Grafana's JSON model (file provisioning; see the module docstring)."""
    panels = [{"type": "row", "title": "Service", "collapsed": False, "panels": [],
               "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}}]
    panels += _service_panels(1)
    panels += _camera_row(41)
    panels += _guarantee_panels(50)
    for index, panel in enumerate(panels, start=1):
        panel["id"] = index
    return {
        "id": None, "uid": DASHBOARD_UID, "title": "trustvlm-edge", "tags": ["trustvlm"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "refresh": "5s", "time": {"from": "now-15m", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
             "current": {"text": "trustvlm Prometheus", "value": DATASOURCE_UID}},
            {"name": "camera", "type": "query", "label": "Camera", "datasource": DATASOURCE,
             "query": {"query": "label_values(trustvlm_frames_received_total, camera)", "refId": "cameras"},
             "definition": "label_values(trustvlm_frames_received_total, camera)", "refresh": 2,
             "multi": True, "includeAll": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}}]},
        "annotations": {"list": [
            {"name": "Bundle reloads", "enable": True, "iconColor": "orange", "datasource": DATASOURCE,
             "expr": f"sum by (result) (increase(trustvlm_bundle_reloads_total{RATE})) > 0",
             "titleFormat": "bundle reload {{result}}", "step": "30s"}]},
        "panels": panels,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trustvlm.pipelines.grafana_dashboard",
                                     description="Write the Grafana dashboard of trustvlm serve's metrics.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the dashboard JSON file")
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(build_dashboard(), indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
