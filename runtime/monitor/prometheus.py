"""The guarantee watch on ``/metrics``: a collector read at scrape time (nothing is counted per frame).

Per watched camera (at most ``monitor.max_cameras`` and those the state file holds, so the label set is bounded):

* ``trustvlm_camera_guarantee_state{camera}``: the monitor, 0 ok, 1 watch, 2 alarm (-1: not watched);
* ``trustvlm_camera_guarantee_evidence{camera}``: log10 of the monitor's evidence over its ALARM line (0 at the
  line, negative below);
* ``trustvlm_camera_monitor_frames{camera}``: thinned frames the monitor has seen on the camera's bundle;
* ``trustvlm_camera_audit_state{camera}``: 0 unverified, 1 verified, 2 violated (-1: no audit);
* ``trustvlm_camera_audit_labels{camera}``: audit labels matched on the camera's bundle;
* ``trustvlm_camera_audit_risk_upper{camera}`` / ``..._lower``: the audit's confidence bounds on the risk among
  accepted frames;

and ``trustvlm_feedback_labels_total{outcome}`` (matched, unmatched, unknown_label, unwatched_camera),
``trustvlm_audit_marked_total`` (accepted frames marked for audit), ``trustvlm_monitor_resets_total``.
"""

from __future__ import annotations

__all__ = ["WatchCollector", "MONITOR_CODES", "AUDIT_CODES"]

MONITOR_CODES = {"": -1, "ok": 0, "watch": 1, "alarm": 2}
AUDIT_CODES = {"": -1, "unverified": 0, "verified": 1, "violated": 2}


#: Per camera: (metric name without ``trustvlm_``, help, the value of a :meth:`GuaranteeWatch.snapshot` row).
GAUGES = (
    ("camera_guarantee_state", "guarantee monitor per camera: 0 ok, 1 watch, 2 alarm, -1 not watched",
     lambda r: MONITOR_CODES[r["monitor"]]),
    ("camera_guarantee_evidence", "log10 of the monitor's evidence over its alarm line (0 = alarm)",
     lambda r: r["evidence"]),
    ("camera_monitor_frames", "thinned frames the monitor has seen on the camera's bundle", lambda r: r["frames"]),
    ("camera_audit_state", "audit of the risk among accepted frames: 0 unverified, 1 verified, 2 violated, -1 no audit",
     lambda r: AUDIT_CODES[r["audit_state"]]),
    ("camera_audit_labels", "audit labels matched on the camera's bundle", lambda r: r["labels"]),
    ("camera_audit_risk_upper", "upper confidence bound of the risk among accepted frames", lambda r: r["risk_upper"]),
    ("camera_audit_risk_lower", "lower confidence bound of the risk among accepted frames", lambda r: r["risk_lower"]),
)
FEEDBACK_OUTCOMES = ("matched", "unmatched", "unknown_label", "unwatched_camera")


class WatchCollector:
    """A prometheus_client collector over a :class:`~trustvlm.runtime.monitor.watch.GuaranteeWatch` (None: only
    :meth:`describe`, e.g. for the metrics reference)."""

    def __init__(self, watch=None):
        self.watch = watch

    def describe(self):
        """The metric families, without samples (the registry checks their names; the reference lists them)."""
        return list(self._families([], {}))

    def collect(self):
        return self._families(self.watch.snapshot(), self.watch.counters())

    @staticmethod
    def _families(rows: list[dict], counts: dict):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        for name, doc, value in GAUGES:
            family = GaugeMetricFamily(f"trustvlm_{name}", doc, labels=["camera"])
            for row in rows:
                if value(row) is not None:  # no evidence for a camera the monitor does not watch
                    family.add_metric([row["camera_id"]], float(value(row)))
            yield family
        labels = CounterMetricFamily("trustvlm_feedback_labels", "audit labels received, by what became of them",
                                     labels=["outcome"])
        for outcome in FEEDBACK_OUTCOMES if rows or counts else ():
            labels.add_metric([outcome], counts.get(f"feedback_{outcome}", 0))
        yield labels
        marked = CounterMetricFamily("trustvlm_audit_marked", "accepted frames marked audit: true")
        resets = CounterMetricFamily("trustvlm_monitor_resets", "operator resets of a camera's monitor and audit")
        if counts:
            marked.add_metric([], counts.get("audit_marked", 0))
            resets.add_metric([], counts.get("monitor_resets", 0))
        yield marked
        yield resets
