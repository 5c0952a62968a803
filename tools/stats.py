"""Small statistics for the tools: Student-t confidence intervals and Pareto fronts (no SciPy)."""

import math


def _betacf(a, b, x):
    # Continued fraction of the incomplete beta function (modified Lentz).
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a, b, x):
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """The cumulative distribution function of Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p, df):
    """The `p` quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf`).

    Raises:
        ValueError: if `p` is not in (0, 1) or `df` is not positive.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1); received: {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0; received: {df}")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_confidence_interval(values, level=0.95):
    """Mean, sample standard deviation and the Student-t confidence interval of the mean.

    Returns:
        A dict with `n`, `mean`, `std`, `half_width`, `low`, `high`; with one
        value the standard deviation and interval are None.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("values is empty")
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "half_width": None, "low": None, "high": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "half_width": half, "low": mean - half, "high": mean + half}


def pareto_front(points):
    """Indices of the points not dominated when both coordinates are maximised.

    Args:
        points: a list of `(x, y)`, both "higher is better".

    Returns:
        The indices of the Pareto-optimal points, sorted by x.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def static_gap_points(front, energy, accuracy):
    """`accuracy` minus the static front's accuracy interpolated linearly at `energy`, in points.

    Args:
        front: `(energy, accuracy)` pairs of the plain networks (energies
            normalised to the same E_total as `energy`; accuracies in [0, 1]).
        energy: EnergyNet's normalised energy (1 - energy savings).
        accuracy: EnergyNet's accuracy in [0, 1].

    Returns:
        A dict: `gap_points` (None outside the front's energy range: no
        extrapolation), `front_accuracy` (the interpolated accuracy or None),
        `within_front` and a `note` saying which neighbours were used or why
        there is no gap.

    Raises:
        ValueError: for a front with fewer than two points of distinct energy.
    """
    points = sorted((float(e), float(a)) for e, a in front)
    energies = [e for e, _ in points]
    if len(set(energies)) < 2:
        raise ValueError(f"a static front needs at least two networks of different energy; received {points}")
    energy = float(energy)
    if energy < energies[0] or energy > energies[-1]:
        return {"gap_points": None, "front_accuracy": None, "within_front": False,
                "note": (f"EnergyNet's energy {energy:.4f} lies outside the static front's range "
                         f"[{energies[0]:.4f}, {energies[-1]:.4f}]; no extrapolation")}
    for (e0, a0), (e1, a1) in zip(points, points[1:]):
        if e0 <= energy <= e1 and e1 > e0:
            front_accuracy = a0 + (a1 - a0) * (energy - e0) / (e1 - e0)
            return {"gap_points": 100.0 * (float(accuracy) - front_accuracy), "front_accuracy": front_accuracy,
                    "within_front": True,
                    "note": f"interpolated between energies {e0:.4f} and {e1:.4f}"}
    raise AssertionError("unreachable: the energy lies within the sorted front")
