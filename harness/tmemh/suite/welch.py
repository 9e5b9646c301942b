"""Welch's t-test (two samples, unequal variances), standard library only.

The two-sided p-value is the Student t distribution's tail at |t| with the
Welch-Satterthwaite degrees of freedom, computed as the regularized incomplete beta function
I_x(df/2, 1/2) at x = df / (df + t^2), evaluated by its continued fraction (modified Lentz).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

_EPSILON = 1e-15
_TINY = 1e-300
_MAX_TERMS = 300


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (converges for x < (a+1)/(a+b+2))."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _MAX_TERMS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPSILON:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(t, degrees of freedom, two-sided p) for the means of ``a`` and ``b``; each needs two or
    more values. Two samples without any spread give p = 1 if equal, else 0."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least two values on each side")
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    spread = var_a + var_b
    if spread == 0.0:
        return (0.0 if mean_a == mean_b else math.inf), math.inf, \
            (1.0 if mean_a == mean_b else 0.0)
    t = (mean_a - mean_b) / math.sqrt(spread)
    df = spread ** 2 / ((var_a ** 2 / (len(a) - 1) if var_a else 0.0)
                        + (var_b ** 2 / (len(b) - 1) if var_b else 0.0))
    return t, df, t_two_sided_p(t, df)
