"""Is a distilled student better than its from-scratch twin beyond seed noise? Welch's t-test over seeds.

Welch's test does not assume the two groups share a variance (a distilled student is often steadier
over seeds than one from scratch). Two-sided p-value; undefined (nan) with fewer than two seeds on a
side, or when neither side varies at all."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass



@dataclass(frozen=True)
class Difference:
    delta: float  # mean(a) - mean(b), in the units of the values (accuracy points)
    p_value: float  # Welch's two-sided p; nan where undefined

    def text(self) -> str:
        p = "p n/a" if math.isnan(self.p_value) else f"p={self.p_value:.3f}" if self.p_value >= 0.001 else "p<0.001"
        return f"{self.delta:+.2f} ({p})"


def welch(a: list[float], b: list[float]) -> Difference:
    delta = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2 or (statistics.variance(a) == 0 and statistics.variance(b) == 0):
        return Difference(delta, math.nan)
    from scipy import stats  # imported on first use: 0.5 s that every kdrun command would pay at start-up

    return Difference(delta, float(stats.ttest_ind(a, b, equal_var=False).pvalue))
