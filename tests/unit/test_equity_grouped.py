"""Group-level inequality measures against values published by WHO (healthequal 1.0.1 testthat).

Each expected value names its source. Inputs of the healthequal suite are materialised in
``tests/data/equity`` (see its README). Tolerance is relative 1e-6 unless a comment says otherwise.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core import equity_kernels as kernels
from monitor.core import equity_reference as reference
from monitor.equity import (
    GROUP_MEASURES,
    EquityInputError,
    grouped_from_csv,
    grouped_measures,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "equity"
REL = 1e-6

ORDERED_ONLY = {"ACI", "RCI", "SII", "RII", "WAGSTAFF", "ERREYGERS"}
NON_ORDERED_ONLY = {
    "BGV", "BGSD", "COV", "MDMU", "MDMW", "MDBU", "MDBW", "MDRU", "MDRW", "IDISU", "IDISW", "TI",
    "MLD",
}  # fmt: skip


def _load(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def ordered_example() -> dict[str, float | None]:
    rows = _load("healthequal_ordered.csv")
    return grouped_measures(
        [float(r["estimate"]) for r in rows],
        [float(r["population"]) for r in rows],
        order=[float(r["order"]) for r in rows],
        favourable=True,
        scale=100,
    )


@pytest.fixture(scope="module")
def nonordered_rows() -> list[dict[str, str]]:
    return _load("healthequal_nonordered.csv")


def _nonordered(rows: list[dict[str, str]], *, with_reference: bool) -> dict[str, float | None]:
    ref = next(i for i, r in enumerate(rows) if r["reference"] == "1")
    return grouped_measures(
        [float(r["estimate"]) for r in rows],
        [float(r["population"]) for r in rows],
        reference=ref if with_reference else None,
        favourable=True,
        scale=100,
    )


# --- published values: ordered example -------------------------------------------------------

ORDERED_PUBLISHED = [
    # (measure, expected, source: repo cran/healthequal)
    ("ACI", 7.3284202, "tests/testthat/test-aci.R"),
    ("RCI", 0.17776859, "tests/testthat/test-rci.R (healthequal asserts only 1e-3)"),
    ("SII", 44.44502, "tests/testthat/test-sii.R (logit GLM)"),
    ("RII", 3.159506, "tests/testthat/test-rii.R (logit GLM)"),
    ("PAR", 18.775509, "tests/testthat/test-parisk.R"),
    ("PAF", 45.544548, "tests/testthat/test-paf.R"),
]


@pytest.mark.parametrize(("measure", "expected", "source"), ORDERED_PUBLISHED)
def test_ordered_matches_healthequal(
    ordered_example: dict[str, float | None], measure: str, expected: float, source: str
) -> None:
    assert ordered_example[measure] == pytest.approx(expected, rel=REL), source


def test_ordered_example_simple_measures(ordered_example: dict[str, float | None]) -> None:
    # Favourable, ordered: most advantaged (60) vs most disadvantaged (20).
    assert ordered_example["D"] == pytest.approx(40.0)
    assert ordered_example["R"] == pytest.approx(3.0)
    for key in NON_ORDERED_ONLY:
        assert ordered_example[key] is None, key


# --- published values: non-ordered example ---------------------------------------------------

NONORDERED_PUBLISHED = [
    # (measure, expected, source: repo cran/healthequal)
    ("BGV", 46.198326, "tests/testthat/test-bgv.R"),
    ("BGSD", 6.7969351, "tests/testthat/test-bgsd.R"),
    ("IDISU", 8.7018175, "tests/testthat/test-idisu.R"),
    ("IDISW", 8.6178417, "tests/testthat/test-idisw.R"),
    ("MDBU", 16.360001, "tests/testthat/test-mdbu.R"),
    ("MDBW", 16.293156, "tests/testthat/test-mdbw.R"),
    ("MDMU", 5.891726, "tests/testthat/test-mdmu.R"),
    ("MDMW", 5.8348689, "tests/testthat/test-mdmw.R"),
    ("MDRU", 7.2399998, "tests/testthat/test-mdru.R"),
    ("MDRW", 7.2228465, "tests/testthat/test-mdrw.R"),
]


@pytest.mark.parametrize(("measure", "expected", "source"), NONORDERED_PUBLISHED)
def test_nonordered_matches_healthequal(
    nonordered_rows: list[dict[str, str]], measure: str, expected: float, source: str
) -> None:
    result = _nonordered(nonordered_rows, with_reference=True)
    assert result[measure] == pytest.approx(expected, rel=REL), source


@pytest.mark.parametrize(
    ("measure", "published", "healthequal_code"),
    [
        # published: cran/healthequal tests/testthat/test-ti.R (asserted there with tolerance 1e-4)
        # healthequal_code: healthequal's own formula (R/ti.R) evaluated in double precision with
        # R 4.2.2 on the same data; the published literal differs from it by 1.2e-5 relative.
        ("TI", 5.0359201, 5.03598030334592),
        # published: cran/healthequal tests/testthat/test-mld.R (tolerance 1e-3 there); formula of
        # R/mld.R evaluated with R 4.2.2 likewise.
        ("MLD", 5.0524006, 5.05235520719557),
    ],
)
def test_theil_and_mld_match_healthequal(
    nonordered_rows: list[dict[str, str]], measure: str, published: float, healthequal_code: float
) -> None:
    result = _nonordered(nonordered_rows, with_reference=True)
    assert result[measure] == pytest.approx(published, rel=1e-4)
    assert result[measure] == pytest.approx(healthequal_code, rel=1e-12)


def test_par_paf_healthequal_convention_ignores_reference(
    nonordered_rows: list[dict[str, str]],
) -> None:
    # healthequal 1.0.1 ignores the flagged reference: best subgroup (max, favourable) - mean.
    result = _nonordered(nonordered_rows, with_reference=False)
    # cran/healthequal tests/testthat/test-par-nonordered.R
    assert result["PAR"] == pytest.approx(16.293152, rel=REL)
    # cran/healthequal tests/testthat/test-paf-nonordered.R
    assert result["PAF"] == pytest.approx(24.06426, rel=REL)


def test_par_heat_convention_uses_flagged_reference(nonordered_rows: list[dict[str, str]]) -> None:
    # HEAT (WHOequity/HEAT-Measures R/calc-par.R): a flagged reference is the PAR reference. Here
    # the reference (62) is below the mean (67.7), so favourable PAR is clamped to 0.
    result = _nonordered(nonordered_rows, with_reference=True)
    assert result["PAR"] == 0.0
    assert result["PAF"] == 0.0


def test_nonordered_cov_and_simple_measures(nonordered_rows: list[dict[str, str]]) -> None:
    # No published COV in healthequal's suite: COV = BGSD / mu * 100 with the published BGSD and
    # mu = 67.706848 (from the published PAR: max 84 - PAR 16.293152).
    result = _nonordered(nonordered_rows, with_reference=True)
    assert result["COV"] == pytest.approx(6.7969351 / (84 - 16.293152) * 100, rel=REL)
    # Favourable with reference (62): D = reference - lowest other (55), R = 62 / 55.
    assert result["D"] == pytest.approx(7.0)
    assert result["R"] == pytest.approx(62 / 55)
    without = _nonordered(nonordered_rows, with_reference=False)
    assert without["D"] == pytest.approx(84 - 55)
    assert without["MDRU"] is None and without["MDRW"] is None
    for key in ORDERED_ONLY:
        assert result[key] is None, key


# --- SII / RII cross-checked with R's glm ----------------------------------------------------

# Computed with R 4.2.2 base stats::glm exactly as healthequal R/sii.R builds the model
# (ceiling(pop), round(est / scale * pop), midpoint rank, weights = pop, binomial logit). Not
# published values: an independent oracle for the IRLS, printed with sprintf("%.15g").
R_GLM_CASES = [
    ([1250.4, 980.2, 1530.7, 760.1, 2210.9], [35.5, 48.25, 52.125, 61.75, 80.5],
     57.6995992891751, 3.06634657653297),
    ([5000, 5000, 5000, 5000, 5000], [92.1, 85.4, 80.2, 71.3, 60.8],
     -38.2548760975649, 0.588658020932256),
    ([123, 456, 789], [2.5, 3.5, 10.25], 17.1227177714953, 10.0161626273967),
    ([300.5, 410.2, 220.8, 515.3], [12.3, 17.8, 15.1, 25.6], 17.6464975144494, 2.51560976457164),
]  # fmt: skip


@pytest.mark.parametrize(("pop", "est", "sii", "rii"), R_GLM_CASES)
def test_logit_sii_matches_r_glm(pop: list[float], est: list[float], sii: float, rii: float) -> None:
    result = grouped_measures(est, pop, order=range(1, len(est) + 1))
    assert result["SII"] == pytest.approx(sii, rel=REL)
    assert result["RII"] == pytest.approx(rii, rel=REL)


def test_linear_sii_hand_computed() -> None:
    # Equal populations, X = 1/6, 1/2, 5/6: slope 10 / (1/3) = 30, b0 = 20 - 30 / 2 = 5.
    result = grouped_measures([10, 20, 30], [1, 1, 1], order=[1, 2, 3], sii_method="linear")
    assert result["SII"] == pytest.approx(30.0)
    assert result["RII"] == pytest.approx(35.0 / 5.0)


def test_sii_order_given_unsorted() -> None:
    rows = _load("healthequal_ordered.csv")[::-1]
    result = grouped_measures(
        [float(r["estimate"]) for r in rows],
        [float(r["population"]) for r in rows],
        order=[float(r["order"]) for r in rows],
    )
    assert result["SII"] == pytest.approx(44.44502, rel=REL)  # cran/healthequal test-sii.R


def test_sii_none_when_counts_out_of_range_or_no_mle() -> None:
    assert grouped_measures([20, 150, 60], [10, 10, 10], order=[1, 2, 3])["SII"] is None
    all_zero = grouped_measures([0, 0, 0], [10, 10, 10], order=[1, 2, 3])
    assert all_zero["SII"] is None and all_zero["RII"] is None
    assert all_zero["RCI"] is None and all_zero["R"] is None
    assert all_zero["ACI"] == 0.0 and all_zero["D"] == 0.0


# --- selection rules, corrections, applicability --------------------------------------------


def test_adverse_ordered_d_r_and_par() -> None:
    result = grouped_measures([40, 30, 20], [1, 1, 2], order=[1, 2, 3], favourable=False)
    assert result["D"] == pytest.approx(20.0)  # most disadvantaged - most advantaged
    assert result["R"] == pytest.approx(2.0)
    mu = (40 + 30 + 2 * 20) / 4
    assert result["PAR"] == pytest.approx(20 - mu)
    assert result["PAF"] == pytest.approx((20 - mu) / mu * 100)


def test_adverse_nonordered_with_reference() -> None:
    result = grouped_measures([10, 25, 5, 40], [1, 1, 1, 1], reference=0, favourable=False)
    assert result["D"] == pytest.approx(40 - 10)  # highest other - reference
    assert result["R"] == pytest.approx(4.0)
    assert result["MDBU"] == pytest.approx((5 + 20 + 0 + 35) / 4)  # best = lowest = 5
    assert result["PAR"] == pytest.approx(10 - 20.0)  # HEAT: the flagged reference


def test_par_clamped_to_zero() -> None:
    # Adverse ordered: most advantaged is worse than the mean, PAR > 0 clamped to 0.
    result = grouped_measures([10, 20, 30], [1, 1, 1], order=[1, 2, 3], favourable=False)
    assert result["PAR"] == 0.0 and result["PAF"] == 0.0


def test_wagstaff_erreygers_formulas() -> None:
    est, pop = [20.0, 45.0, 70.0, 80.0], [3.0, 2.0, 4.0, 1.0]
    result = grouped_measures(est, pop, order=[1, 2, 3, 4])
    p = np.array(pop) / sum(pop)
    mu = float(np.dot(p, est))
    c = result["RCI"]
    assert c is not None
    assert result["WAGSTAFF"] == pytest.approx(mu * 100 * c / ((100 - mu) * mu), rel=1e-12)
    assert result["ERREYGERS"] == pytest.approx(4 * mu * c / 100, rel=1e-12)
    assert grouped_measures([20, 150, 60], [1, 1, 1], order=[1, 2, 3])["WAGSTAFF"] is None


def test_two_subgroups_only_simple_measures() -> None:
    result = grouped_measures([30, 60], [5, 5])
    assert result["D"] == 30 and result["R"] == 2 and result["PAR"] == pytest.approx(15)
    assert all(result[k] is None for k in NON_ORDERED_ONLY | ORDERED_ONLY)


def test_single_subgroup_all_none() -> None:
    assert all(v is None for v in grouped_measures([30], [5]).values())


def test_keys_and_no_nan() -> None:
    result = grouped_measures([0.0, 12.0, 40.0], [1, 2, 3], order=[1, 2, 3])
    assert tuple(result) == GROUP_MEASURES
    assert not any(isinstance(v, float) and math.isnan(v) for v in result.values())


def test_zero_estimates_replaced_for_logs() -> None:
    result = grouped_measures([0.0, 10.0, 20.0], [1, 1, 1])
    ys = np.array([1e-6, 10.0, 20.0])
    r = ys / ys.mean()
    assert result["TI"] == pytest.approx(1000 * np.mean(r * np.log(r)), rel=1e-12)
    assert result["MLD"] == pytest.approx(1000 * np.mean(-np.log(r)), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"estimates": [1, 2], "populations": [1]}, "length mismatch"),
        ({"estimates": [1, 2], "populations": [1, -1]}, "populations must be >= 0"),
        ({"estimates": [1, float("nan")], "populations": [1, 1]}, "non-finite"),
        ({"estimates": [1, 2], "populations": [1, float("inf")]}, "non-finite"),
        ({"estimates": [], "populations": []}, "empty"),
        ({"estimates": [1, 2], "populations": [0, 0]}, "sum to 0"),
        ({"estimates": [1, 2], "populations": [1, 1], "order": [1, 1]}, "duplicate"),
        ({"estimates": [1, 2], "populations": [1, 1], "order": [1]}, "length mismatch"),
        ({"estimates": [1, 2], "populations": [1, 1], "reference": 2}, "out of range"),
        ({"estimates": [1, 2], "populations": [1, 1], "reference": True}, "reference"),
        ({"estimates": [1, 2], "populations": [1, 1], "scale": 0}, "scale"),
        ({"estimates": [1, 2], "populations": [1, 1], "sii_method": "probit"}, "sii_method"),
    ],
)
def test_validation(kwargs: dict, message: str) -> None:
    est = kwargs.pop("estimates")
    pop = kwargs.pop("populations")
    with pytest.raises(ValueError, match=message):
        grouped_measures(est, pop, **kwargs)
    with pytest.raises(EquityInputError):
        grouped_measures(est, pop, **kwargs)


# --- CSV -------------------------------------------------------------------------------------


def test_grouped_from_csv_published(tmp_path: Path) -> None:
    ordered = grouped_from_csv(DATA / "healthequal_ordered.csv", ordered=True)
    assert ordered["SII"] == pytest.approx(44.44502, rel=REL)  # cran/healthequal test-sii.R
    nonordered = grouped_from_csv(DATA / "healthequal_nonordered.csv")
    assert nonordered["MDRU"] == pytest.approx(7.2399998, rel=REL)  # cran/healthequal test-mdru.R
    adverse = grouped_from_csv(DATA / "healthequal_nonordered.csv", adverse=True)
    estimates = np.array([float(r["estimate"]) for r in _load("healthequal_nonordered.csv")])
    assert adverse["MDBU"] == pytest.approx(np.mean(estimates - estimates.min()))


def test_grouped_from_csv_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    missing.write_text("subgroup,estimate\na,1\n")
    with pytest.raises(ValueError, match="population"):
        grouped_from_csv(missing)
    no_order = tmp_path / "no_order.csv"
    no_order.write_text("subgroup,estimate,population\na,1,2\nb,2,2\n")
    with pytest.raises(ValueError, match="order"):
        grouped_from_csv(no_order, ordered=True)
    bad = tmp_path / "bad.csv"
    bad.write_text("subgroup,estimate,population\na,x,2\nb,2,2\n")
    with pytest.raises(ValueError, match="line 2"):
        grouped_from_csv(bad)
    two_refs = tmp_path / "two_refs.csv"
    two_refs.write_text("subgroup,estimate,population,reference\na,1,2,1\nb,2,2,1\nc,3,3,0\n")
    with pytest.raises(ValueError, match="more than one reference"):
        grouped_from_csv(two_refs)


# --- kernels against the plain reference implementation --------------------------------------


def _close(a: float | None, b: float, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    if a is None:
        return math.isnan(b)
    return not math.isnan(b) and math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


group_inputs = st.integers(min_value=2, max_value=8).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0.0, 100.0, allow_nan=False, allow_subnormal=False), min_size=n, max_size=n),
        st.lists(st.floats(1.0, 5000.0, allow_nan=False), min_size=n, max_size=n),
        st.permutations(list(range(1, n + 1))),
        st.one_of(st.none(), st.integers(0, n - 1)),
        st.booleans(),
        st.booleans(),
        st.sampled_from(["logit", "linear"]),
    )
)


@settings(max_examples=150, deadline=None)
@given(group_inputs)
def test_kernel_matches_reference(args: tuple) -> None:
    est, pop, order, ref, is_ordered, favourable, method = args
    got = grouped_measures(
        est,
        pop,
        order=order if is_ordered else None,
        reference=None if is_ordered else ref,
        favourable=favourable,
        sii_method=method,
    )
    want = reference.grouped_measures(
        est,
        pop,
        order=order if is_ordered else None,
        reference=None if is_ordered else ref,
        favourable=favourable,
        sii_method=method,
    )
    for key in GROUP_MEASURES:
        if key in {"SII", "RII"} and method == "logit":
            # Both fits stop at a tolerance; near-separated data converge more slowly.
            if got[key] is not None and not math.isnan(want[key]):
                assert math.isclose(got[key], want[key], rel_tol=1e-7, abs_tol=1e-7), key
            continue
        assert _close(got[key], want[key]), (key, got[key], want[key])


def test_batch_kernel_equals_single() -> None:
    rng = np.random.default_rng(7)
    sizes = [3, 5, 4, 6]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    est = rng.uniform(1, 99, offsets[-1])
    pop = rng.uniform(10, 1000, offsets[-1])
    order = np.concatenate([rng.permutation(k) + 1.0 for k in sizes])
    ordered = np.array([True, False, True, False])
    ref = np.array([-1, 2, -1, -1], dtype=np.int64)
    fav = np.array([True, True, False, False])
    scale = np.full(4, 100.0)
    batch = kernels.grouped_measures_batch(est, pop, order, offsets, ordered, ref, fav, scale, 0)
    for s in range(4):
        lo, hi = offsets[s], offsets[s + 1]
        single = kernels.grouped_measures(
            est[lo:hi], pop[lo:hi], order[lo:hi], ordered[s], ref[s], fav[s], 100.0, 0
        )
        np.testing.assert_array_equal(batch[s], single)


def test_wagstaff_is_undefined_when_every_estimate_is_at_the_bound() -> None:
    """Found by hypothesis in CI: four estimates of 100 (scale 100) gave a mean a rounding error
    either side of 100, and the kernel and the reference disagreed (0.25 vs -0.5) on an index that
    is undefined there."""
    args = ([100.0, 100.0, 100.0, 100.0], [1.0, 1.0, 1.0, 1.5])
    got = grouped_measures(*args, order=[1, 2, 3, 4], favourable=False, sii_method="logit")
    want = reference.grouped_measures(*args, order=[1, 2, 3, 4], favourable=False, sii_method="logit")
    assert got["WAGSTAFF"] is None and math.isnan(want["WAGSTAFF"])
