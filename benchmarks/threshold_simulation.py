"""Simulation of the accept-threshold procedures: is the risk guarantee kept, and at what coverage?

``python -m trustvlm.benchmarks.threshold_simulation`` draws, for every risk curve and calibration
size m, many calibration sets from a population whose selective risk at every coverage is known
in closed form, runs :func:`~trustvlm.calibration.threshold_selection.select_threshold` with
``method="ltt"`` and ``method="sgr"`` on the same draws, and reports:

* the violation rate: the share of draws whose chosen threshold has a true selective risk above
  alpha (an infeasible choice defers everything and never violates); it should stay <= delta;
* the mean true coverage of each choice, the share of draws with a feasible choice, the mean
  certifiable limit on the calibration draw (:func:`~trustvlm.calibration.coverage_limits.certifiable_limit`)
  and the population's own largest coverage at risk alpha.

The population: a sample's rank ``u ~ Uniform(0, 1)`` (0 = most confident) has error probability
``r(u)``; its score is ``1 - u``, or ``1 - floor(u L) / L`` with ties (L levels). Accepting the
top share c of the population gives the selective risk ``R(c) = G(c) / c`` with ``G(c)`` the
integral of r over [0, c].
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from trustvlm.calibration.coverage_limits import certifiable_limit
from trustvlm.calibration.threshold_selection import select_threshold
from trustvlm.cli_common import help_formatter, positive


@dataclass(frozen=True)
class RiskCurve:
    """A population: pointwise error probability r(u) at rank u and its integral G(c); `levels` > 0 ties scores."""

    name: str
    error_at: Callable[[np.ndarray], np.ndarray]
    integral: Callable[[np.ndarray], np.ndarray]
    levels: int = 0

    def risk(self, coverage: np.ndarray) -> np.ndarray:
        """True selective risk when the top `coverage` share is accepted."""
        coverage = np.asarray(coverage, dtype=np.float64)
        return np.where(coverage > 0, self.integral(coverage) / np.maximum(coverage, 1e-300), 0.0)

    def scores(self, u: np.ndarray) -> np.ndarray:
        return 1.0 - u if not self.levels else 1.0 - np.floor(u * self.levels) / self.levels

    def coverage_at(self, threshold: float) -> float:
        """Population share with score >= threshold."""
        if not np.isfinite(threshold):
            return 0.0
        if not self.levels:
            return float(np.clip(1.0 - threshold, 0.0, 1.0))
        return min(1.0, (round((1.0 - threshold) * self.levels) + 1) / self.levels)

    def best_coverage(self, alpha: float) -> float:
        """The largest coverage whose true risk is <= alpha (on the achievable coverages)."""
        grid = (np.arange(1, self.levels + 1) / self.levels) if self.levels else np.linspace(0, 1, 100_001)[1:]
        ok = grid[self.risk(grid) <= alpha]
        return float(ok.max()) if ok.size else 0.0


def _power(u):
    return 0.6 * u**2


def _power_g(c):
    return 0.2 * c**3


def _floor(u):
    return 0.01 + 0.6 * u**2


def _floor_g(c):
    return 0.01 * c + 0.2 * c**3


def _plateau(u):
    return np.where(u < 0.6, 0.04, 0.04 + (u - 0.6))


def _plateau_g(c):
    return 0.04 * c + 0.5 * np.maximum(c - 0.6, 0.0) ** 2


def _top(u):
    return np.where(u < 0.01, 0.2, 0.01 + 0.8 * np.maximum(u - 0.5, 0.0))


def _top_g(c):
    return 0.2 * np.minimum(c, 0.01) + 0.01 * np.maximum(c - 0.01, 0.0) + 0.4 * np.maximum(c - 0.5, 0.0) ** 2


#: The populations simulated, by name.
CURVES: dict[str, RiskCurve] = {curve.name: curve for curve in (
    RiskCurve("power law R(c) = 0.2 c^2", _power, _power_g),
    RiskCurve("power law, scores on 50 levels (ties)", _power, _power_g, levels=50),
    RiskCurve("power law + 1% label noise", _floor, _floor_g),
    RiskCurve("plateau at 4% up to 60% coverage", _plateau, _plateau_g),
    RiskCurve("20% errors in the top 1%, then 1%", _top, _top_g),
    RiskCurve("20% errors in the top 1%, 20 levels (ties)", _top, _top_g, levels=20),
)}
#: "ltt-grid": LTT on a grid of m scores of other draws from the same population (what calibrate does with the
#: lambda half's scores: the exact form of the guarantee); "ltt": its grid is the calibration scores themselves.
METHODS = ("ltt-grid", "ltt", "sgr")


def simulate(curve: RiskCurve, m: int, trials: int, alpha: float, delta: float, rng: np.random.Generator,
             progress: tqdm | None = None) -> dict:
    """Run both methods on `trials` calibration draws of size m from `curve`; violation and coverage figures."""
    coverage = {method: np.zeros(trials) for method in METHODS}
    violated = {method: np.zeros(trials, bool) for method in METHODS}
    feasible = {method: np.zeros(trials, bool) for method in METHODS}
    certifiable = np.zeros(trials)
    chunk = max(1, 2_000_000 // m)  # draws generated together, a few tens of MB at a time
    for begin in range(0, trials, chunk):
        count = min(chunk, trials - begin)
        u = rng.random((count, m))
        wrong = rng.random((count, m)) < curve.error_at(u)
        scores = curve.scores(u)
        grids = curve.scores(rng.random((count, m)))  # an independent half, labels never drawn
        for j in range(count):
            i = begin + j
            for method in METHODS:
                if method == "ltt-grid":
                    choice = select_threshold(scores[j], ~wrong[j], alpha, delta, grid=grids[j])
                else:
                    choice = select_threshold(scores[j], ~wrong[j], alpha, delta, method=method)
                covered = curve.coverage_at(choice.threshold)
                coverage[method][i], feasible[method][i] = covered, choice.feasible
                violated[method][i] = choice.feasible and float(curve.risk(covered)) > alpha
            certifiable[i] = certifiable_limit(scores[j], ~wrong[j], alpha, delta).coverage
            if progress is not None:
                progress.update(1)
    row = {"curve": curve.name, "m": m, "trials": trials, "population_coverage": curve.best_coverage(alpha),
           "certifiable_coverage": float(certifiable.mean())}
    for method in METHODS:
        row[method] = {"violation_rate": float(violated[method].mean()), "feasible_rate": float(feasible[method].mean()),
                       "mean_coverage": float(coverage[method].mean())}
    return row


def _simulate_setting(curve_index: int, m: int, trials: int, alpha: float, delta: float,
                      seed: np.random.SeedSequence) -> dict:
    """:func:`simulate` in a worker process (curves are looked up by index: their functions stay here)."""
    return simulate(list(CURVES.values())[curve_index], m, trials, alpha, delta, np.random.default_rng(seed))


def markdown_table(rows: list[dict], alpha: float, delta: float) -> list[str]:
    """One line per (curve, m): violation rates, feasible rates and mean coverages of LTT and SGR."""
    lines = ["| risk curve | m | trials | violations LTT grid | violations LTT | violations SGR | feasible LTT grid "
             "| feasible LTT | feasible SGR | coverage LTT grid | coverage LTT | coverage SGR | certifiable limit "
             "| population at alpha |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cells = [f"{100 * row[m]['violation_rate']:.1f}%" for m in METHODS]
        cells += [f"{100 * row[m]['feasible_rate']:.0f}%" for m in METHODS]
        cells += [f"{100 * row[m]['mean_coverage']:.1f}%" for m in METHODS]
        lines.append(f"| {row['curve']} | {row['m']:,} | {row['trials']:,} | " + " | ".join(cells)
                     + f" | {100 * row['certifiable_coverage']:.1f}% | {100 * row['population_coverage']:.1f}% |")
    lines.append(f"\nalpha = {alpha:g}, delta = {delta:g}; a violation is a feasible choice whose true selective risk "
                 f"exceeds alpha. Coverage: the population share the chosen threshold accepts (0 when infeasible); "
                 f"certifiable limit: the mean largest calibration coverage one Clopper-Pearson test at delta "
                 f"certifies; population at alpha: the largest coverage whose true risk is <= alpha.")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustvlm.benchmarks.threshold_simulation", formatter_class=help_formatter,
        description="Simulate the accept-threshold procedures (LTT, the default, and SGR) on populations with a "
                    "known risk curve: violation rate of the guarantee and coverage, on the same draws.")
    parser.add_argument("--trials", type=positive(int), default=1000, help="calibration draws per (curve, m)")
    parser.add_argument("--sizes", type=positive(int), nargs="+", default=[500, 2000, 5000, 20000],
                        help="calibration set sizes m")
    parser.add_argument("--curves", nargs="+", type=int, default=list(range(len(CURVES))),
                        choices=range(len(CURVES)),
                        help="which risk curves, by number: "
                        + "; ".join(f"{i}: {name}" for i, name in enumerate(CURVES)).replace("%", "%%"))
    parser.add_argument("--alpha", type=float, default=0.05, help="target selective risk")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed probability of exceeding alpha")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (each setting gets its own stream)")
    parser.add_argument("--jobs", type=positive(int), default=2, help="settings simulated in parallel processes")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = [(i, m) for i in args.curves for m in args.sizes]
    seeds = np.random.SeedSequence(args.seed).spawn(len(settings))  # results do not depend on --jobs
    started = time.perf_counter()
    rows: list[dict | None] = [None] * len(settings)
    with tqdm(total=len(settings) * args.trials, unit="draw", desc="threshold simulation") as bar:
        if args.jobs == 1:
            for k, (i, m) in enumerate(settings):
                rows[k] = simulate(list(CURVES.values())[i], m, args.trials, args.alpha, args.delta,
                                   np.random.default_rng(seeds[k]), bar)
        else:
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                futures = {pool.submit(_simulate_setting, i, m, args.trials, args.alpha, args.delta, seeds[k]): k
                           for k, (i, m) in enumerate(settings)}
                for future in as_completed(futures):
                    rows[futures[future]] = future.result()
                    bar.update(args.trials)
    lines = markdown_table(rows, args.alpha, args.delta)
    lines.append(f"\n({time.perf_counter() - started:.0f} s with {args.jobs} process(es); `python -m "
                 f"trustvlm.benchmarks.threshold_simulation --trials {args.trials} --seed {args.seed}`)")
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
