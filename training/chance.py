"""Is a trained model's validation accuracy clearly above chance?

"Clearly" is a one-sided exact binomial test (the test of ``scipy.stats.binomtest(alternative="greater")``): under the null hypothesis that the model guesses,
each of the n validation images is right with probability 1/C (C classes), so the number right is
Binomial(n, 1/C). The model passes when P(X >= correct) < ``alpha`` (default 0.001: a guessing model
passes one run in a thousand). With 400 validation images and 10 classes that takes 61 right (15.3%,
chance 10%); with 20 images and 10 classes, 8 right. Passing says the model learned *something*, not
that it is good enough: the accuracy is printed beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ALPHA = 0.001


@dataclass(frozen=True)
class ChanceTest:
    """The outcome of the test (see the module docstring)."""

    correct: int
    count: int
    classes: int
    p_value: float
    alpha: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else 0.0

    @property
    def chance(self) -> float:
        return 1.0 / self.classes

    @property
    def above_chance(self) -> bool:
        return self.p_value < self.alpha

    def describe(self) -> str:
        """One line: accuracy, chance, p-value and the verdict."""
        verdict = "clearly above chance" if self.above_chance else "NOT clearly above chance"
        return (f"validation zero-shot accuracy {100 * self.accuracy:.2f}% ({self.correct}/{self.count}) is {verdict} "
                f"({100 * self.chance:.1f}% for {self.classes} classes; one-sided binomial test "
                f"p = {self.p_value:.2g}, {'<' if self.above_chance else '>='} {self.alpha:g})")

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy": round(self.accuracy, 4), "chance": self.chance,
                "above_chance": self.above_chance}


def check_above_chance(correct: int, count: int, classes: int, alpha: float = ALPHA) -> ChanceTest:
    """One-sided exact binomial test of `correct` out of `count` against chance 1/`classes`.

    Raises:
        ValueError: Fewer than 2 classes, no validation images, or `correct` outside [0, count].
    """
    if classes < 2 or count < 1 or not 0 <= correct <= count:
        raise ValueError(f"expected >= 2 classes and 0 <= correct <= count >= 1, but got correct={correct}, "
                         f"count={count}, classes={classes}")
    p_value = binomial_upper_tail(correct, count, 1.0 / classes)
    return ChanceTest(int(correct), int(count), int(classes), float(p_value), float(alpha))


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), 0 < p < 1, summed exactly in log space (no underflow for large n)."""
    if k <= 0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(value - top) for value in logs))
