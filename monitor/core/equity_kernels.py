"""Numba kernels of the inequality measures (group level, HEAT v6 conventions; individual level).

Pure functions on float64 arrays: no I/O, no validation of user input, no Python objects. The
public, validating wrappers live in :mod:`monitor.equity`; the definitions and conventions are
those of ``shared/notes/equity-measures.md`` (HEAT / HEAT Plus technical notes v6, WHO's R package
healthequal 1.0.1, PySAL ``inequality`` and R ``ineq``).

Conventions shared by every kernel:

- an undefined or not applicable measure is returned as ``nan`` (the wrappers turn it into
  ``None``); kernels never raise on data;
- inputs are assumed already validated: finite values, non-negative populations/weights with a
  positive total, non-negative individual values;
- every individual-level kernel is ``O(n log n)`` (one stable sort), so arrays of millions of values
  are fine;
- weights are *frequency* weights (counts): integer weights are exactly equivalent to repeating the
  values, which is what lets the monitor merge integer histograms from several workers.
"""

from __future__ import annotations

import math

import numpy as np

from monitor.core.jit import kernel

__all__ = [
    "GROUP_MEASURES",
    "INDIVIDUAL_SCALARS",
    "SII_LINEAR",
    "SII_LOGIT",
    "aci",
    "concentration_index",
    "gini",
    "grouped_measures",
    "grouped_measures_batch",
    "individual_measures",
    "lorenz",
    "midpoint_ranks",
    "sii_linear",
    "sii_logit",
    "theil_decomposition",
]

#: Order of the values returned by :func:`grouped_measures` (upper-case HEAT abbreviations).
GROUP_MEASURES: tuple[str, ...] = (
    "D", "R", "ACI", "RCI", "SII", "RII", "BGV", "BGSD", "COV", "MDMU", "MDMW", "MDBU", "MDBW",
    "MDRU", "MDRW", "IDISU", "IDISW", "TI", "MLD", "PAR", "PAF", "WAGSTAFF", "ERREYGERS",
)  # fmt: skip

#: Order of the scalar values returned by :func:`individual_measures`.
INDIVIDUAL_SCALARS: tuple[str, ...] = (
    "gini", "gini_corrected", "theil_t", "mld", "ge2", "atkinson_0_5", "atkinson_1",
    "atkinson_2", "cv",
)  # fmt: skip

#: ``method`` codes of :func:`sii_logit` / :func:`grouped_measures`.
SII_LOGIT = 0
SII_LINEAR = 1

# Indices into the result of grouped_measures (kept in step with GROUP_MEASURES).
_D, _R, _ACI, _RCI, _SII, _RII, _BGV, _BGSD, _COV = 0, 1, 2, 3, 4, 5, 6, 7, 8
_MDMU, _MDMW, _MDBU, _MDBW, _MDRU, _MDRW, _IDISU, _IDISW = 9, 10, 11, 12, 13, 14, 15, 16
_TI, _MLD, _PAR, _PAF, _WAGSTAFF, _ERREYGERS = 17, 18, 19, 20, 21, 22
_N_GROUP_MEASURES = 23

#: HEAT replaces zero estimates by this value before taking logarithms (TI, MLD).
_ZERO_ESTIMATE = 1e-6
_IRLS_MAX_ITER = 100
_IRLS_TOL = 1e-13


# --------------------------------------------------------------------------------------------
# group level
# --------------------------------------------------------------------------------------------


@kernel
def midpoint_ranks(pop_in_order: np.ndarray) -> np.ndarray:
    """Midpoint ranks ``X_j = sum_{k<j} p_k + p_j / 2`` of subgroups given in rank order.

    ``pop_in_order`` are populations sorted from the most disadvantaged subgroup to the most
    advantaged; the result is in [0, 1]. ``nan`` everywhere if the total population is 0.
    """
    n = pop_in_order.shape[0]
    total = 0.0
    for j in range(n):
        total += pop_in_order[j]
    out = np.empty(n)
    cum = 0.0
    for j in range(n):
        out[j] = (cum + 0.5 * pop_in_order[j]) / total
        cum += pop_in_order[j]
    return out


@kernel
def aci(est_in_order: np.ndarray, pop_in_order: np.ndarray) -> float:
    """Absolute concentration index ``sum p_j (2 X_j - 1) y_j`` in indicator units.

    Subgroups must be given in rank order (most disadvantaged first).
    """
    x = midpoint_ranks(pop_in_order)
    total = 0.0
    for j in range(pop_in_order.shape[0]):
        total += pop_in_order[j]
    acc = 0.0
    for j in range(est_in_order.shape[0]):
        acc += pop_in_order[j] / total * (2.0 * x[j] - 1.0) * est_in_order[j]
    return acc


@kernel
def _expit(t: float) -> float:
    if t >= 0.0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


@kernel
def sii_logit(est_in_order: np.ndarray, pop_in_order: np.ndarray, scale: float) -> tuple:
    """SII and RII from a binomial GLM with logit link exactly as HEAT v6 / healthequal fit it.

    Steps (aggregated data, subgroups in rank order): ``m_j = ceil(N_j)``; cases
    ``c_j = round(y_j / scale * m_j)`` (half to even, as R); midpoint ranks from ``m``; then the
    maximum-likelihood fit of ``glm(cbind(c, m - c) ~ X, weights = m, family = binomial)``. R
    multiplies the prior weights by the binomial totals, so a subgroup enters the likelihood with
    weight ``m_j`` times its own binomial log-likelihood (effective IRLS weight ``m_j ** 2``).
    Fitted by IRLS (Fisher scoring) to full convergence.

    Returns ``(SII, RII)`` with ``SII = scale * (expit(a + b) - expit(a))`` (indicator units) and
    ``RII = expit(a + b) / expit(a)``. Both ``nan`` when a count falls outside ``[0, m_j]``, when
    fewer than two subgroups have people, when all cases are 0 or all equal to ``m`` (no finite
    maximum-likelihood estimate), or when the fit does not give finite values.
    """
    n = est_in_order.shape[0]
    m = np.empty(n)
    s = np.empty(n)  # observed proportions
    for j in range(n):
        m[j] = math.ceil(pop_in_order[j])
        c = np.rint(est_in_order[j] / scale * m[j])
        if c < 0.0 or c > m[j]:
            return np.nan, np.nan
        s[j] = c / m[j] if m[j] > 0.0 else 0.0
    x = midpoint_ranks(m)
    n_pos = 0
    for j in range(n):
        if m[j] > 0.0:
            n_pos += 1
    if n_pos < 2:
        return np.nan, np.nan
    # Without a finite maximum-likelihood estimate (all cases 0, all cases m, or a separation of
    # 0 % and 100 % subgroups by rank) the iterations diverge and the fit reports no convergence.
    # Starting values as R's binomial()$initialize.
    eta = np.empty(n)
    for j in range(n):
        mu0 = (m[j] * s[j] + 0.5) / (m[j] + 1.0)
        eta[j] = math.log(mu0 / (1.0 - mu0))
    a = 0.0
    b = 0.0
    converged = False
    for _ in range(_IRLS_MAX_ITER):
        s00 = 0.0
        s01 = 0.0
        s11 = 0.0
        t0 = 0.0
        t1 = 0.0
        for j in range(n):
            if m[j] <= 0.0:
                continue
            mu = _expit(eta[j])
            var = mu * (1.0 - mu)
            if var <= 0.0:
                continue
            w = m[j] * m[j] * var
            z = eta[j] + (s[j] - mu) / var
            s00 += w
            s01 += w * x[j]
            s11 += w * x[j] * x[j]
            t0 += w * z
            t1 += w * x[j] * z
        det = s00 * s11 - s01 * s01
        if not det > 0.0:
            return np.nan, np.nan
        a_new = (s11 * t0 - s01 * t1) / det
        b_new = (s00 * t1 - s01 * t0) / det
        step = abs(a_new - a) + abs(b_new - b)
        a = a_new
        b = b_new
        for j in range(n):
            eta[j] = a + b * x[j]
        if step <= _IRLS_TOL * (1.0 + abs(a) + abs(b)):
            converged = True
            break
    if not converged or not (math.isfinite(a) and math.isfinite(b)):
        return np.nan, np.nan
    v1 = _expit(a + b)
    v0 = _expit(a)
    rii = v1 / v0 if v0 > 0.0 else np.nan
    return scale * (v1 - v0), rii


@kernel
def sii_linear(est_in_order: np.ndarray, pop_in_order: np.ndarray) -> tuple:
    """SII and RII by weighted least squares of the estimate on the midpoint rank (PHE ``phe_sii``).

    Weights are the population shares ``p_j`` (no ceiling of populations). Returns
    ``(SII, RII)`` with ``SII = b1`` (indicator units) and ``RII = (b0 + b1) / b0``; ``nan`` when
    the ranks are degenerate (fewer than two subgroups with people) or ``b0 == 0`` for RII.
    """
    n = est_in_order.shape[0]
    x = midpoint_ranks(pop_in_order)
    total = 0.0
    for j in range(n):
        total += pop_in_order[j]
    mx = 0.0
    my = 0.0
    for j in range(n):
        p = pop_in_order[j] / total
        mx += p * x[j]
        my += p * est_in_order[j]
    sxx = 0.0
    sxy = 0.0
    for j in range(n):
        p = pop_in_order[j] / total
        sxx += p * (x[j] - mx) ** 2
        sxy += p * (x[j] - mx) * (est_in_order[j] - my)
    if not sxx > 0.0:
        return np.nan, np.nan
    b1 = sxy / sxx
    b0 = my - b1 * mx
    rii = (b0 + b1) / b0 if b0 != 0.0 else np.nan
    return b1, rii


@kernel
def grouped_measures(
    est: np.ndarray,
    pop: np.ndarray,
    order: np.ndarray,
    ordered: bool,
    reference: int,
    favourable: bool,
    scale: float,
    method: int,
) -> np.ndarray:
    """All group-level measures of one stratum, in the order of :data:`GROUP_MEASURES`.

    Parameters
    ----------
    est, pop:
        Subgroup estimates (indicator units, e.g. percent when ``scale`` is 100) and populations
        (>= 0, positive total).
    order:
        Subgroup ranks for an ordered dimension (1 = most disadvantaged; distinct values); ignored
        when ``ordered`` is false.
    reference:
        Index of the flagged reference subgroup of a non-ordered dimension, or -1. Ignored for
        ordered dimensions (whose reference is the most advantaged subgroup).
    favourable:
        True when the goal is a maximum (coverage), false for adverse indicators.
    scale:
        Indicator scale (100 = percent); the bounds of the indicator are ``[0, scale]``.
    method:
        :data:`SII_LOGIT` (HEAT v6 default) or :data:`SII_LINEAR` (PHE ``phe_sii``).

    Returns a float64 array of length 23; ``nan`` where a measure does not apply to the dimension
    type or is undefined (see :mod:`monitor.equity` for the full list of rules).
    """
    res = np.full(_N_GROUP_MEASURES, np.nan)
    n = est.shape[0]
    if n < 2:
        return res
    total = 0.0
    for j in range(n):
        total += pop[j]
    if not total > 0.0:
        return res
    mu = 0.0
    for j in range(n):
        mu += pop[j] / total * est[j]
    complex_ok = n > 2

    # ---- D and R: choice of the two subgroups (y1 - y2, y1 / y2) ----
    if ordered:
        perm = np.argsort(order, kind="mergesort")
        lo = perm[0]  # most disadvantaged
        hi = perm[n - 1]  # most advantaged
        if favourable:
            y1 = est[hi]
            y2 = est[lo]
        else:
            y1 = est[lo]
            y2 = est[hi]
        y_ref = est[hi]
    else:
        perm = np.arange(n)
        i_max = 0
        i_min = 0
        for j in range(1, n):
            if est[j] > est[i_max]:
                i_max = j
            if est[j] < est[i_min]:
                i_min = j
        if reference >= 0:
            i_other_max = -1
            i_other_min = -1
            for j in range(n):
                if j == reference:
                    continue
                if i_other_max < 0 or est[j] > est[i_other_max]:
                    i_other_max = j
                if i_other_min < 0 or est[j] < est[i_other_min]:
                    i_other_min = j
            if favourable:
                y1 = est[reference]
                y2 = est[i_other_min]
            else:
                y1 = est[i_other_max]
                y2 = est[reference]
            # HEAT: a flagged reference subgroup is the PAR reference.
            y_ref = est[reference]
        else:
            y1 = est[i_max]
            y2 = est[i_min]
            y_ref = est[i_max] if favourable else est[i_min]
    res[_D] = y1 - y2
    if y2 != 0.0:
        res[_R] = y1 / y2

    # ---- PAR / PAF (any dimension) ----
    par = y_ref - mu
    if (favourable and par < 0.0) or ((not favourable) and par > 0.0):
        par = 0.0
    res[_PAR] = par
    if mu != 0.0:
        res[_PAF] = par / mu * 100.0

    if not complex_ok:
        return res

    if ordered:
        est_o = np.empty(n)
        pop_o = np.empty(n)
        for k in range(n):
            est_o[k] = est[perm[k]]
            pop_o[k] = pop[perm[k]]
        c_abs = aci(est_o, pop_o)
        res[_ACI] = c_abs
        if mu != 0.0:
            rci = c_abs / mu
            res[_RCI] = rci
            inside = True
            for j in range(n):
                if est[j] < 0.0 or est[j] > scale:
                    inside = False
            if inside:
                # Bounds [a, b] = [0, scale].
                res[_ERREYGERS] = 4.0 * mu * rci / scale
                # undefined at the bound; within 1e-9 of it, (scale - mu) is rounding noise
                # (four estimates of exactly 100 gave a mean 1 ulp either side of 100 and a
                # WAGSTAFF of 0.25 here against -0.5 in the reference)
                if scale - mu > 1e-9 * scale:
                    res[_WAGSTAFF] = mu * scale * rci / ((scale - mu) * mu)
        if method == SII_LINEAR:
            sii, rii = sii_linear(est_o, pop_o)
        else:
            sii, rii = sii_logit(est_o, pop_o, scale)
        res[_SII] = sii
        res[_RII] = rii
        return res

    # ---- non-ordered complex measures ----
    bgv = 0.0
    mdmu = 0.0
    mdmw = 0.0
    best = est[0]
    for j in range(1, n):
        if (favourable and est[j] > best) or ((not favourable) and est[j] < best):
            best = est[j]
    mdbu = 0.0
    mdbw = 0.0
    for j in range(n):
        p = pop[j] / total
        bgv += p * (est[j] - mu) ** 2
        mdmu += abs(est[j] - mu)
        mdmw += p * abs(est[j] - mu)
        mdbu += abs(est[j] - best)
        mdbw += p * abs(est[j] - best)
    mdmu /= n
    mdbu /= n
    res[_BGV] = bgv
    res[_BGSD] = math.sqrt(bgv)
    res[_MDMU] = mdmu
    res[_MDMW] = mdmw
    res[_MDBU] = mdbu
    res[_MDBW] = mdbw
    if mu != 0.0:
        res[_COV] = math.sqrt(bgv) / mu * 100.0
        res[_IDISU] = mdmu / mu * 100.0
        res[_IDISW] = mdmw / mu * 100.0
    if reference >= 0:
        mdru = 0.0
        mdrw = 0.0
        for j in range(n):
            d = abs(est[j] - est[reference])
            mdru += d
            mdrw += pop[j] / total * d
        res[_MDRU] = mdru / n
        res[_MDRW] = mdrw
    # TI and MLD: zero estimates replaced by 1e-6, setting average recomputed on them (HEAT).
    mu_nz = 0.0
    for j in range(n):
        y = est[j] if est[j] != 0.0 else _ZERO_ESTIMATE
        mu_nz += pop[j] / total * y
    if mu_nz > 0.0:
        ti = 0.0
        mld = 0.0
        ok = True
        for j in range(n):
            y = est[j] if est[j] != 0.0 else _ZERO_ESTIMATE
            r = y / mu_nz
            if r <= 0.0:
                ok = False
                break
            p = pop[j] / total
            ti += p * r * math.log(r)
            mld -= p * math.log(r)
        if ok:
            res[_TI] = 1000.0 * ti
            res[_MLD] = 1000.0 * mld
    return res


@kernel
def grouped_measures_batch(
    est: np.ndarray,
    pop: np.ndarray,
    order: np.ndarray,
    offsets: np.ndarray,
    ordered: np.ndarray,
    reference: np.ndarray,
    favourable: np.ndarray,
    scale: np.ndarray,
    method: int,
) -> np.ndarray:
    """:func:`grouped_measures` for many strata at once (CSR layout).

    Stratum ``s`` is ``est[offsets[s]:offsets[s + 1]]`` (same for ``pop`` and ``order``);
    ``ordered``, ``reference`` (index local to the stratum, -1 for none), ``favourable`` and
    ``scale`` have one entry per stratum. Returns an array of shape ``(n_strata, 23)``.
    """
    n_strata = offsets.shape[0] - 1
    out = np.empty((n_strata, _N_GROUP_MEASURES))
    for s in range(n_strata):
        lo = offsets[s]
        hi = offsets[s + 1]
        out[s, :] = grouped_measures(
            est[lo:hi],
            pop[lo:hi],
            order[lo:hi],
            ordered[s],
            reference[s],
            favourable[s],
            scale[s],
            method,
        )
    return out


# --------------------------------------------------------------------------------------------
# individual level
# --------------------------------------------------------------------------------------------


@kernel
def _gini_sorted(xs: np.ndarray, ws: np.ndarray) -> float:
    total_w = 0.0
    total_wx = 0.0
    for i in range(xs.shape[0]):
        total_w += ws[i]
        total_wx += ws[i] * xs[i]
    if not total_wx > 0.0:
        return np.nan
    cum = 0.0
    acc = 0.0
    for i in range(xs.shape[0]):
        f = (cum + 0.5 * ws[i]) / total_w
        acc += ws[i] * xs[i] * (2.0 * f - 1.0)
        cum += ws[i]
    return acc / total_wx


@kernel
def gini(x: np.ndarray, w: np.ndarray) -> float:
    """Weighted Gini coefficient in O(n log n): ``sum_i omega_i (2 F_i - 1) x_i / mu``.

    ``F_i`` is the weighted midpoint cumulative share of the i-th smallest value; this equals the
    pairwise definition ``sum_i sum_j omega_i omega_j |x_i - x_j| / (2 mu)`` exactly in real
    arithmetic (tied values cancel). ``nan`` when the weighted mean is 0.
    """
    idx = np.argsort(x, kind="mergesort")
    return _gini_sorted(x[idx], w[idx])


@kernel
def _lorenz_sorted(xs: np.ndarray, ws: np.ndarray) -> tuple:
    n = xs.shape[0]
    p = np.empty(n + 1)
    lc = np.empty(n + 1)
    p[0] = 0.0
    lc[0] = 0.0
    cw = 0.0
    cwx = 0.0
    for i in range(n):
        cw += ws[i]
        cwx += ws[i] * xs[i]
        p[i + 1] = cw
        lc[i + 1] = cwx
    for k in range(n + 1):
        p[k] = p[k] / cw
        lc[k] = lc[k] / cwx if cwx > 0.0 else np.nan
    return p, lc


@kernel
def lorenz(x: np.ndarray, w: np.ndarray) -> tuple:
    """Lorenz curve points ``(p, L)`` with (0, 0) prepended; values sorted ascending.

    ``p_k = cumsum(w) / sum w`` and ``L_k = cumsum(w x) / sum(w x)``. ``L`` is all ``nan`` when
    ``sum(w x) == 0``.
    """
    idx = np.argsort(x, kind="mergesort")
    return _lorenz_sorted(x[idx], w[idx])


@kernel
def individual_measures(x: np.ndarray, w: np.ndarray) -> tuple:
    """Individual-level measures with a single sort: ``(scalars, lorenz_p, lorenz_l)``.

    ``scalars`` follows :data:`INDIVIDUAL_SCALARS`. ``x >= 0`` values, ``w >= 0`` frequency
    weights with positive total (pass ones for unweighted data). Rules:

    - every scalar is ``nan`` when the weighted mean is 0 (all values 0);
    - ``gini_corrected = gini * N / (N - 1)`` with ``N = sum w`` (frequency weights; ``n / (n - 1)``
      unweighted, as ineq ``Gini(corr=TRUE)``), ``nan`` when ``N <= 1``;
    - ``theil_t`` uses ``0 ln 0 = 0``; ``mld``, ``atkinson_1`` and ``atkinson_2`` are ``nan`` if
      any value with positive weight is 0 (their limits are +inf, 1 and 1);
    - ``cv`` is the population (ddof = 0) weighted coefficient of variation; ``ge2 = cv**2 / 2``.
    """
    out = np.full(len(INDIVIDUAL_SCALARS), np.nan)
    idx = np.argsort(x, kind="mergesort")
    xs = x[idx]
    ws = w[idx]
    p, lc = _lorenz_sorted(xs, ws)
    n = xs.shape[0]
    sw = 0.0
    swx = 0.0
    has_zero = False
    for i in range(n):
        sw += ws[i]
        swx += ws[i] * xs[i]
        if xs[i] == 0.0 and ws[i] > 0.0:
            has_zero = True
    if not (sw > 0.0 and swx > 0.0):
        return out, p, lc
    mu = swx / sw
    g = _gini_sorted(xs, ws)
    out[0] = g
    if sw > 1.0:
        out[1] = g * sw / (sw - 1.0)
    theil = 0.0
    mld = 0.0
    sq = 0.0
    sqrt_mean = 0.0
    log_mean = 0.0
    inv_mean = 0.0
    for i in range(n):
        if ws[i] == 0.0:
            continue
        om = ws[i] / sw
        r = xs[i] / mu
        sq += om * (xs[i] - mu) ** 2
        sqrt_mean += om * math.sqrt(xs[i])
        if xs[i] > 0.0:
            theil += om * r * math.log(r)
            mld -= om * math.log(r)
            log_mean += om * math.log(xs[i])
            inv_mean += om / xs[i]
    out[2] = theil
    cv = math.sqrt(sq) / mu
    out[4] = 0.5 * cv * cv
    out[5] = 1.0 - sqrt_mean * sqrt_mean / mu
    if not has_zero:
        out[3] = mld
        out[6] = 1.0 - math.exp(log_mean) / mu
        out[7] = 1.0 - 1.0 / inv_mean / mu
    out[8] = cv
    return out, p, lc


@kernel
def concentration_index(h: np.ndarray, rank_var: np.ndarray, w: np.ndarray) -> float:
    """Concentration index ``C = 2 cov_w(h, R) / mu_h`` of outcome ``h`` over ``rank_var``.

    ``R`` is the weighted fractional rank in ascending ``rank_var``: the cumulative weight share
    below the observation plus half the weight share of its block of tied ``rank_var`` values (ties
    share one midpoint rank). ``nan`` when the weighted mean of ``h`` is 0.
    """
    n = h.shape[0]
    idx = np.argsort(rank_var, kind="mergesort")
    sw = 0.0
    swh = 0.0
    for i in range(n):
        sw += w[i]
        swh += w[i] * h[i]
    if swh == 0.0 or not sw > 0.0:
        return np.nan
    mh = swh / sw
    rank = np.empty(n)
    cum = 0.0
    k = 0
    while k < n:
        end = k
        block = 0.0
        while end < n and rank_var[idx[end]] == rank_var[idx[k]]:
            block += w[idx[end]]
            end += 1
        mid = (cum + 0.5 * block) / sw
        for t in range(k, end):
            rank[idx[t]] = mid
        cum += block
        k = end
    mr = 0.0
    for i in range(n):
        mr += w[i] / sw * rank[i]
    cov = 0.0
    for i in range(n):
        cov += w[i] / sw * (h[i] - mh) * (rank[i] - mr)
    return 2.0 * cov / mh


@kernel
def theil_decomposition(x: np.ndarray, codes: np.ndarray, n_groups: int, w: np.ndarray) -> tuple:
    """Theil T and its between/within-group decomposition (PySAL ``TheilD``), weighted.

    ``codes`` are group indices in ``[0, n_groups)``. ``between = sum_g W_g (mu_g / mu) ln(mu_g / mu)``
    (``W_g`` the weight share of group g, empty-outcome groups contribute 0) and
    ``within = sum_g W_g (mu_g / mu) T_g``, so ``total = between + within``. Returns
    ``(total, between, within)``, all ``nan`` when the overall mean is 0.
    """
    n = x.shape[0]
    gw = np.zeros(n_groups)
    gwx = np.zeros(n_groups)
    for i in range(n):
        gw[codes[i]] += w[i]
        gwx[codes[i]] += w[i] * x[i]
    sw = 0.0
    swx = 0.0
    for g in range(n_groups):
        sw += gw[g]
        swx += gwx[g]
    if not (sw > 0.0 and swx > 0.0):
        return np.nan, np.nan, np.nan
    mu = swx / sw
    total = 0.0
    within_g = np.zeros(n_groups)
    for i in range(n):
        if x[i] > 0.0 and w[i] > 0.0:
            r = x[i] / mu
            total += w[i] / sw * r * math.log(r)
            rg = x[i] * gw[codes[i]] / gwx[codes[i]]
            within_g[codes[i]] += w[i] * x[i] * math.log(rg)
    between = 0.0
    within = 0.0
    for g in range(n_groups):
        if gwx[g] > 0.0:
            mug = gwx[g] / gw[g]
            between += gw[g] / sw * (mug / mu) * math.log(mug / mu)
            within += within_g[g] / swx
    return total, between, within
