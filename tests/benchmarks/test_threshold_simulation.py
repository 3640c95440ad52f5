"""Tests of the threshold simulation: its populations' risk curves and one small end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from trustvlm.benchmarks import threshold_simulation as T


def test_populations_have_the_stated_risk_curves():
    curves = list(T.CURVES.values())
    power, tied, top = curves[0], curves[1], curves[4]
    # 0.2 c^2: 5% at half coverage
    assert power.risk(0.5) == pytest.approx(0.05)
    assert power.best_coverage(0.05) == pytest.approx(0.5, abs=1e-4)
    # the integral G matches r numerically on every curve
    u = np.linspace(0, 1, 200_001)
    for curve in curves:
        numeric = np.trapezoid(curve.error_at(u[u <= 0.8]), u[u <= 0.8])
        assert curve.integral(0.8) == pytest.approx(numeric, abs=1e-4), curve.name
    # ties: 50 levels; accepting score >= 1 - 3/50 accepts levels 0..3, i.e. the top 8%
    assert tied.coverage_at(1 - 3 / 50) == pytest.approx(0.08)
    assert tied.scores(np.array([0.0, 0.019, 0.02])).tolist() == [1.0, 1.0, 0.98]
    # an infeasible threshold covers nothing; the top 1% of the last curve is 20% wrong
    assert power.coverage_at(float("inf")) == 0.0
    assert top.risk(0.01) == pytest.approx(0.2)


def test_help_lists_every_curve():
    text = T.build_parser().format_help()
    assert all(name.split(",")[0][:20] in " ".join(text.split()) for name in T.CURVES)


def test_a_small_run_prints_the_table(capsys, tmp_path):
    out = tmp_path / "table.md"
    assert T.main(["--trials", "3", "--sizes", "300", "--curves", "0", "1", "--jobs", "1",
                   "--markdown", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| power law")]
    assert len(rows) == 2 and all("| 300 | 3 |" in row for row in rows)
    assert out.read_text().strip() == printed.strip()
