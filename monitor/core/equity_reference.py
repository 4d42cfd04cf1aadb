"""Plain Python / NumPy reference implementation of the inequality measures.

Written independently of :mod:`monitor.core.equity_kernels`, as directly from the definitions in
``shared/notes/equity-measures.md`` as possible (explicit loops, pairwise sums, a Newton-Raphson
maximisation of the binomial log-likelihood instead of IRLS). It is a test oracle and the
benchmark baseline, not production code: it is slow (``gini_pairwise`` is O(n^2)) and returns
``nan`` for undefined values like the kernels do.

All functions take plain sequences or arrays; weights default to ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "atkinson",
    "concentration_index",
    "cv",
    "ge",
    "gini_pairwise",
    "gini_sorted",
    "grouped_measures",
    "lorenz",
    "mld",
    "theil_decomposition",
    "theil_t",
]

NAN = float("nan")
MEASURES = (
    "D", "R", "ACI", "RCI", "SII", "RII", "BGV", "BGSD", "COV", "MDMU", "MDMW", "MDBU", "MDBW",
    "MDRU", "MDRW", "IDISU", "IDISW", "TI", "MLD", "PAR", "PAF", "WAGSTAFF", "ERREYGERS",
)  # fmt: skip


def _as_list(values: Sequence[float] | np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _expit(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))


def _round_half_even(v: float) -> float:
    # R's round() and numpy's rint both round halves to even; Python's round() does too.
    return float(round(v))


def _logit_fit(cases: list[float], trials: list[float], ranks: list[float]) -> tuple[float, float]:
    """Maximise sum_j m_j * [c_j ln pi_j + (m_j - c_j) ln(1 - pi_j)] by Newton-Raphson.

    The outer factor ``m_j`` is R's prior weight (``weights = pop``) of an aggregated binomial
    glm. Returns (intercept, slope) or (nan, nan) when the iterations do not converge.
    """
    a, b = 0.0, 0.0
    for _ in range(200):
        grad = np.zeros(2)
        hess = np.zeros((2, 2))
        for c, m, x in zip(cases, trials, ranks, strict=True):
            if m == 0:
                continue
            pi = _expit(a + b * x)
            score = m * (c - m * pi)  # d/d eta of the weighted log-likelihood
            info = m * m * pi * (1.0 - pi)
            grad += score * np.array([1.0, x])
            hess += info * np.array([[1.0, x], [x, x * x]])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return NAN, NAN
        a += float(step[0])
        b += float(step[1])
        if abs(step[0]) + abs(step[1]) < 1e-12 * (1 + abs(a) + abs(b)):
            return a, b
        if not (math.isfinite(a) and math.isfinite(b)) or abs(a) + abs(b) > 1e3:
            return NAN, NAN
    return NAN, NAN


def _sii(y: list[float], pop: list[float], scale: float, method: str) -> tuple[float, float]:
    """SII/RII of subgroups already in rank order (most disadvantaged first)."""
    if method == "linear":
        total = sum(pop)
        p = [v / total for v in pop]
        cum, x = 0.0, []
        for pj in p:
            x.append(cum + pj / 2)
            cum += pj
        xbar = sum(pj * xj for pj, xj in zip(p, x, strict=True))
        ybar = sum(pj * yj for pj, yj in zip(p, y, strict=True))
        sxx = sum(pj * (xj - xbar) ** 2 for pj, xj in zip(p, x, strict=True))
        if sxx <= 0:
            return NAN, NAN
        sxy = sum(pj * (xj - xbar) * (yj - ybar) for pj, xj, yj in zip(p, x, y, strict=True))
        b1 = sxy / sxx
        b0 = ybar - b1 * xbar
        return b1, ((b0 + b1) / b0 if b0 != 0 else NAN)
    trials = [float(math.ceil(v)) for v in pop]
    cases = [_round_half_even(yj / scale * m) for yj, m in zip(y, trials, strict=True)]
    if any(c < 0 or c > m for c, m in zip(cases, trials, strict=True)):
        return NAN, NAN
    if sum(1 for m in trials if m > 0) < 2:
        return NAN, NAN
    total = sum(trials)
    cum, ranks = 0.0, []
    for m in trials:
        ranks.append((cum + m / 2) / total)
        cum += m
    a, b = _logit_fit(cases, trials, ranks)
    if math.isnan(a):
        return NAN, NAN
    v1, v0 = _expit(a + b), _expit(a)
    return scale * (v1 - v0), (v1 / v0 if v0 > 0 else NAN)


def grouped_measures(
    est: Sequence[float],
    pop: Sequence[float],
    order: Sequence[float] | None = None,
    reference: int | None = None,
    favourable: bool = True,
    scale: float = 100.0,
    sii_method: str = "logit",
) -> dict[str, float]:
    """Every group-level measure, ``nan`` where not applicable or undefined (same rules as kernels)."""
    y = _as_list(est)
    n_pop = _as_list(pop)
    n = len(y)
    out = dict.fromkeys(MEASURES, NAN)
    if n < 2 or sum(n_pop) <= 0:
        return out
    total = sum(n_pop)
    p = [v / total for v in n_pop]
    mu = sum(pj * yj for pj, yj in zip(p, y, strict=True))
    ordered = order is not None

    if ordered:
        assert order is not None
        idx = sorted(range(n), key=lambda j: float(order[j]))
        worst, top = idx[0], idx[-1]
        y1, y2 = (y[top], y[worst]) if favourable else (y[worst], y[top])
        y_ref = y[top]
    elif reference is not None:
        others = [y[j] for j in range(n) if j != reference]
        y1, y2 = (y[reference], min(others)) if favourable else (max(others), y[reference])
        y_ref = y[reference]
    else:
        y1, y2 = max(y), min(y)
        y_ref = max(y) if favourable else min(y)
    out["D"] = y1 - y2
    out["R"] = y1 / y2 if y2 != 0 else NAN
    par = y_ref - mu
    if (favourable and par < 0) or (not favourable and par > 0):
        par = 0.0
    out["PAR"] = par
    out["PAF"] = par / mu * 100 if mu != 0 else NAN
    if n <= 2:
        return out

    if ordered:
        ys = [y[j] for j in idx]
        ps = [p[j] for j in idx]
        aci = 0.0
        below = 0.0
        for yj, pj in zip(ys, ps, strict=True):
            aci += pj * (2 * (below + pj / 2) - 1) * yj
            below += pj
        out["ACI"] = aci
        if mu != 0:
            rci = aci / mu
            out["RCI"] = rci
            if all(0 <= v <= scale for v in y):
                lo, hi = 0.0, float(scale)
                out["ERREYGERS"] = 4 * mu * rci / (hi - lo)
                if hi - mu > 1e-9 * hi:  # at the bound (to rounding) the index is undefined
                    out["WAGSTAFF"] = mu * (hi - lo) * rci / ((hi - mu) * (mu - lo))
        out["SII"], out["RII"] = _sii(ys, [n_pop[j] for j in idx], scale, sii_method)
        return out

    best = max(y) if favourable else min(y)
    out["BGV"] = sum(pj * (yj - mu) ** 2 for pj, yj in zip(p, y, strict=True))
    out["BGSD"] = math.sqrt(out["BGV"])
    out["MDMU"] = sum(abs(yj - mu) for yj in y) / n
    out["MDMW"] = sum(pj * abs(yj - mu) for pj, yj in zip(p, y, strict=True))
    out["MDBU"] = sum(abs(yj - best) for yj in y) / n
    out["MDBW"] = sum(pj * abs(yj - best) for pj, yj in zip(p, y, strict=True))
    if reference is not None:
        out["MDRU"] = sum(abs(yj - y[reference]) for yj in y) / n
        out["MDRW"] = sum(pj * abs(yj - y[reference]) for pj, yj in zip(p, y, strict=True))
    if mu != 0:
        out["COV"] = out["BGSD"] / mu * 100
        out["IDISU"] = out["MDMU"] / mu * 100
        out["IDISW"] = out["MDMW"] / mu * 100
    y_nz = [yj if yj != 0 else 1e-6 for yj in y]
    mu_nz = sum(pj * yj for pj, yj in zip(p, y_nz, strict=True))
    ratios = [yj / mu_nz for yj in y_nz] if mu_nz > 0 else []
    if ratios and all(r > 0 for r in ratios):
        out["TI"] = 1000 * sum(pj * r * math.log(r) for pj, r in zip(p, ratios, strict=True))
        out["MLD"] = 1000 * sum(-pj * math.log(r) for pj, r in zip(p, ratios, strict=True))
    return out


# --------------------------------------------------------------------------------------------
# individual level
# --------------------------------------------------------------------------------------------


def _weights(x: Sequence[float], w: Sequence[float] | None) -> tuple[list[float], list[float]]:
    xs = _as_list(x)
    ws = [1.0] * len(xs) if w is None else _as_list(w)
    return xs, ws


def _mean(x: list[float], w: list[float]) -> float:
    return sum(wi * xi for wi, xi in zip(w, x, strict=True)) / sum(w)


def gini_pairwise(x: Sequence[float], w: Sequence[float] | None = None) -> float:
    """``sum_i sum_j omega_i omega_j |x_i - x_j| / (2 mu)`` by an explicit double loop (O(n^2))."""
    xs, ws = _weights(x, w)
    mu = _mean(xs, ws)
    if mu == 0:
        return NAN
    total = sum(ws)
    acc = 0.0
    for xi, wi in zip(xs, ws, strict=True):
        for xj, wj in zip(xs, ws, strict=True):
            acc += wi * wj * abs(xi - xj)
    return acc / (total * total) / (2 * mu)


def gini_sorted(x: Sequence[float] | np.ndarray, w: Sequence[float] | np.ndarray | None = None) -> float:
    """Weighted Gini with NumPy in O(n log n): ``2 cov(x, F) / mu`` (benchmark baseline)."""
    xa = np.asarray(x, dtype=np.float64)
    wa = np.ones_like(xa) if w is None else np.asarray(w, dtype=np.float64)
    order = np.argsort(xa, kind="stable")
    xs, ws = xa[order], wa[order]
    om = ws / ws.sum()
    mu = float(np.dot(om, xs))
    if mu == 0:
        return NAN
    f = np.cumsum(om) - om / 2
    return float(2 * np.dot(om, (xs - mu) * (f - np.dot(om, f))) / mu)


def lorenz(x: Sequence[float], w: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
    """Lorenz points with (0, 0) prepended."""
    xs, ws = _weights(x, w)
    pairs = sorted(zip(xs, ws, strict=True), key=lambda t: t[0])
    tw = sum(ws)
    twx = sum(a * b for a, b in pairs)
    p, lc = [0.0], [0.0]
    cw = cwx = 0.0
    for xi, wi in pairs:
        cw += wi
        cwx += wi * xi
        p.append(cw / tw)
        lc.append(cwx / twx if twx > 0 else NAN)
    return p, lc


def ge(x: Sequence[float], alpha: float, w: Sequence[float] | None = None) -> float:
    """Generalised entropy for alpha not in {0, 1}."""
    xs, ws = _weights(x, w)
    mu = _mean(xs, ws)
    if mu == 0:
        return NAN
    total = sum(ws)
    s = sum(wi / total * (xi / mu) ** alpha for xi, wi in zip(xs, ws, strict=True))
    return (s - 1) / (alpha * (alpha - 1))


def theil_t(x: Sequence[float], w: Sequence[float] | None = None) -> float:
    """Theil T = GE(1), with 0 ln 0 = 0."""
    xs, ws = _weights(x, w)
    mu = _mean(xs, ws)
    if mu == 0:
        return NAN
    total = sum(ws)
    return sum(wi / total * (xi / mu) * math.log(xi / mu) for xi, wi in zip(xs, ws, strict=True) if xi > 0)


def mld(x: Sequence[float], w: Sequence[float] | None = None) -> float:
    """Mean log deviation = GE(0); nan if any positively weighted value is 0."""
    xs, ws = _weights(x, w)
    mu = _mean(xs, ws)
    if mu == 0 or any(xi == 0 and wi > 0 for xi, wi in zip(xs, ws, strict=True)):
        return NAN
    total = sum(ws)
    return sum(wi / total * math.log(mu / xi) for xi, wi in zip(xs, ws, strict=True) if wi > 0)


def atkinson(x: Sequence[float], eps: float, w: Sequence[float] | None = None) -> float:
    """Atkinson index; nan for eps >= 1 if any positively weighted value is 0."""
    xs, ws = _weights(x, w)
    mu = _mean(xs, ws)
    if mu == 0:
        return NAN
    total = sum(ws)
    if eps >= 1 and any(xi == 0 and wi > 0 for xi, wi in zip(xs, ws, strict=True)):
        return NAN
    if eps == 1:
        gm = math.exp(sum(wi / total * math.log(xi) for xi, wi in zip(xs, ws, strict=True) if wi > 0))
        return 1 - gm / mu
    e = 1 - eps
    s = sum(wi / total * xi**e for xi, wi in zip(xs, ws, strict=True) if wi > 0)
    return 1 - s ** (1 / e) / mu


def cv(x: Sequence[float], w: Sequence[float] | None = None) -> float:
    """Population (ddof = 0) weighted coefficient of variation."""
    xs, ws = _weights(x, w)
    mu = _mean(xs, ws)
    if mu == 0:
        return NAN
    total = sum(ws)
    return math.sqrt(sum(wi / total * (xi - mu) ** 2 for xi, wi in zip(xs, ws, strict=True))) / mu


def concentration_index(
    h: Sequence[float], rank_var: Sequence[float], w: Sequence[float] | None = None
) -> float:
    """``2 cov(h, R) / mu_h`` with the weighted fractional rank (ties share the midpoint rank)."""
    hs, ws = _weights(h, w)
    rs = _as_list(rank_var)
    total = sum(ws)
    mh = _mean(hs, ws)
    if mh == 0:
        return NAN
    ranks = []
    for ri in rs:
        below = sum(wj for rj, wj in zip(rs, ws, strict=True) if rj < ri)
        tied = sum(wj for rj, wj in zip(rs, ws, strict=True) if rj == ri)
        ranks.append((below + tied / 2) / total)
    mr = _mean(ranks, ws)
    cov = sum(wi / total * (hi - mh) * (ri - mr) for hi, ri, wi in zip(hs, ranks, ws, strict=True))
    return 2 * cov / mh


def theil_decomposition(
    x: Sequence[float], groups: Sequence[object], w: Sequence[float] | None = None
) -> dict[str, float]:
    """Theil T total, between (groups replaced by their means) and within (= total - between)."""
    xs, ws = _weights(x, w)
    total = theil_t(xs, ws)
    labels = list(groups)
    means: dict[object, float] = {}
    for g in set(labels):
        gx = [xi for xi, lab in zip(xs, labels, strict=True) if lab == g]
        gw = [wi for wi, lab in zip(ws, labels, strict=True) if lab == g]
        means[g] = _mean(gx, gw)
    between = theil_t([means[lab] for lab in labels], ws)
    return {"total": total, "between": between, "within": total - between}
