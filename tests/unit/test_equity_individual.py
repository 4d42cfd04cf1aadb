"""Individual-level measures against PySAL ``inequality`` (published and computed in the test)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inequality.atkinson import atkinson as pysal_atkinson
from inequality.gini import Gini as PysalGini
from inequality.theil import Theil as PysalTheil
from inequality.theil import TheilD as PysalTheilD

from monitor.core import equity_reference as reference
from monitor.equity import (
    EquityInputError,
    concentration_index,
    individual_from_csv,
    individual_measures,
    theil_decomposition,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "equity"
REL = 1e-6
YEARS = list(range(1940, 2010, 10))


@pytest.fixture(scope="module")
def mexico() -> tuple[np.ndarray, np.ndarray]:
    with open(DATA / "mexico_pcgdp.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    y = np.array([[float(r[f"pcgdp{year}"]) for year in YEARS] for r in rows])
    regimes = np.array([int(float(r["hanson98"])) for r in rows])
    return y, regimes


# --- values published by PySAL inequality -----------------------------------------------------


def test_gini_published_by_pysal(mexico: tuple[np.ndarray, np.ndarray]) -> None:
    y, _ = mexico
    # pysal/inequality inequality/tests/test_gini.py::TestGini.test_gini (mexico pcgdp1940)
    assert individual_measures(y[:, 0])["gini"] == pytest.approx(0.35372371173452849, rel=REL)


# pysal/inequality inequality/tests/test_theil.py::TestTheil (mexico pcgdp1940..2000)
PUBLISHED_THEIL = [0.20894344, 0.15222451, 0.10472941, 0.10194725, 0.09560113, 0.10511256,
                   0.10660832]  # fmt: skip
# pysal/inequality inequality/tests/test_theil.py::TestTheilD (between groups, hanson98 regimes)
PUBLISHED_THEIL_BG = [0.0345889, 0.02816853, 0.05260921, 0.05931219, 0.03205257, 0.02963731,
                      0.03635872]  # fmt: skip


@pytest.mark.parametrize("col", range(len(YEARS)))
def test_theil_published_by_pysal(mexico: tuple[np.ndarray, np.ndarray], col: int) -> None:
    y, regimes = mexico
    # The published literals have 8 decimals: compare to their rounding (abs 5e-9).
    assert individual_measures(y[:, col])["theil_t"] == pytest.approx(PUBLISHED_THEIL[col], abs=5e-9)
    decomposition = theil_decomposition(y[:, col], regimes)
    assert decomposition["between"] == pytest.approx(PUBLISHED_THEIL_BG[col], abs=5e-9)
    # and to full precision against PySAL run here
    pysal = PysalTheilD(y[:, col], regimes)
    assert decomposition["total"] == pytest.approx(pysal.T, rel=1e-12)
    assert decomposition["between"] == pytest.approx(float(np.ravel(pysal.bg)[0]), rel=1e-10)
    assert decomposition["within"] == pytest.approx(float(np.ravel(pysal.wg)[0]), rel=1e-10)


def test_theil_decomposition_toy_published_by_pysal() -> None:
    # pysal/inequality inequality/tests/test_theil.py::TestTheilD: T = bg = ln 2, wg = 0
    result = theil_decomposition([0, 0, 0, 10, 10, 10], [0, 0, 0, 1, 1, 1])
    assert result["total"] == pytest.approx(0.6931471805599453, rel=1e-12)
    assert result["between"] == pytest.approx(0.6931471805599453, rel=1e-12)
    assert result["within"] == pytest.approx(0.0, abs=1e-15)


def test_atkinson_published_by_pysal() -> None:
    # pysal/inequality inequality/tests/test_atkinson.py::testatkinson_function, incomes 10..50;
    # published with 4-7 significant digits and asserted there with atol 1e-5.
    result = individual_measures([10, 20, 30, 40, 50])
    assert result["atkinson_0_5"] == pytest.approx(0.06315, abs=1e-5)
    assert result["atkinson_1"] == pytest.approx(0.1316096, abs=1e-7)


# --- PySAL computed in the test on the same data ----------------------------------------------

positive_values = st.lists(st.floats(0.01, 1e6, allow_nan=False), min_size=2, max_size=60)


@settings(max_examples=100, deadline=None)
@given(positive_values)
def test_matches_pysal_on_random_data(values: list[float]) -> None:
    x = np.array(values)
    result = individual_measures(x)
    assert result["gini"] == pytest.approx(PysalGini(x).g, rel=REL, abs=1e-12)
    assert result["theil_t"] == pytest.approx(PysalTheil(x).T, rel=REL, abs=1e-12)
    for eps, key in [(0.5, "atkinson_0_5"), (1, "atkinson_1"), (2, "atkinson_2")]:
        assert result[key] == pytest.approx(pysal_atkinson(x, eps), rel=REL, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(positive_values, st.data())
def test_theil_decomposition_matches_pysal(values: list[float], data: st.DataObject) -> None:
    x = np.array(values)
    groups = np.array(data.draw(st.lists(st.integers(0, 3), min_size=len(x), max_size=len(x))))
    pysal = PysalTheilD(x, groups)
    result = theil_decomposition(x, groups)
    assert result["total"] == pytest.approx(pysal.T, rel=REL, abs=1e-12)
    assert result["between"] == pytest.approx(float(np.ravel(pysal.bg)[0]), rel=REL, abs=1e-12)
    assert result["within"] == pytest.approx(float(np.ravel(pysal.wg)[0]), rel=REL, abs=1e-12)


# --- definitions checked by hand --------------------------------------------------------------


def test_hand_computed_small_example() -> None:
    x = [1.0, 2.0, 3.0, 6.0]
    result = individual_measures(x)
    mu = 3.0
    pairs = sum(abs(a - b) for a in x for b in x)
    assert result["gini"] == pytest.approx(pairs / (2 * 16 * mu))  # = 1/3
    assert result["gini_corrected"] == pytest.approx(pairs / (2 * 16 * mu) * 4 / 3)
    assert result["cv"] == pytest.approx(math.sqrt(np.var(x)) / mu)
    assert result["ge2"] == pytest.approx(np.var(x) / mu**2 / 2)
    assert result["mld"] == pytest.approx(np.mean(np.log(mu / np.array(x))))
    assert result["atkinson_2"] == pytest.approx(1 - len(x) / sum(1 / v for v in x) / mu)
    assert result["lorenz_p"] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert result["lorenz_l"] == pytest.approx([0, 1 / 12, 3 / 12, 6 / 12, 1.0])


def test_zero_rule() -> None:
    result = individual_measures([0.0, 1.0, 3.0])
    assert result["mld"] is None
    assert result["atkinson_1"] is None and result["atkinson_2"] is None
    assert result["theil_t"] == pytest.approx(reference.theil_t([0.0, 1.0, 3.0]))
    assert result["gini"] == pytest.approx(reference.gini_pairwise([0.0, 1.0, 3.0]))
    # A zero with zero weight does not count.
    weighted = individual_measures([0.0, 1.0, 3.0], weights=[0, 1, 1])
    assert weighted["mld"] == pytest.approx(reference.mld([1.0, 3.0]))


def test_all_zero_is_undefined() -> None:
    result = individual_measures([0.0, 0.0, 0.0])
    scalars = {k: v for k, v in result.items() if k != "lorenz_p"}
    assert all(v is None for v in scalars.values())
    assert result["lorenz_p"] == pytest.approx([0, 1 / 3, 2 / 3, 1])


def test_weighted_gini_correction_is_frequency_weights() -> None:
    result = individual_measures([1.0, 5.0], weights=[2, 3])
    expanded = individual_measures([1.0, 1.0, 5.0, 5.0, 5.0])
    assert result["gini_corrected"] == pytest.approx(expanded["gini_corrected"], rel=1e-12)
    assert result["gini_corrected"] == pytest.approx(result["gini"] * 5 / 4, rel=1e-12)


def test_concentration_index() -> None:
    # Ranked by itself (distinct values) the concentration index is the Gini coefficient.
    x = [3.0, 1.0, 7.0, 2.0, 10.0]
    assert concentration_index(x, x) == pytest.approx(individual_measures(x)["gini"], rel=1e-12)
    # Ties share a midpoint rank: h = [1, 3] on a tied rank gives C = 0.
    assert concentration_index([1.0, 3.0], [5.0, 5.0]) == pytest.approx(0.0, abs=1e-15)
    # Outcome concentrated on the top half: ranks 1/4, 3/4, C = 2 cov / mu = 0.5.
    assert concentration_index([0.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)
    assert concentration_index([0.0, 2.0], [2.0, 1.0]) == pytest.approx(-0.5)
    assert concentration_index([0.0, 0.0], [1.0, 2.0]) is None


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_concentration_index_matches_reference(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 30))
    h = data.draw(st.lists(st.floats(0.0, 100.0), min_size=n, max_size=n))
    r = data.draw(st.lists(st.integers(0, 5).map(float), min_size=n, max_size=n))
    w = data.draw(st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n))
    got = concentration_index(h, r, w)
    want = reference.concentration_index(h, r, w)
    if math.isnan(want):
        assert got is None
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_kernels_match_reference(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 40))
    x = data.draw(st.lists(st.floats(1e-3, 1e4) | st.just(0.0), min_size=n, max_size=n))
    w = data.draw(st.none() | st.lists(st.floats(0.01, 50.0), min_size=n, max_size=n))
    got = individual_measures(x, w)
    wants = {
        "gini": reference.gini_pairwise(x, w),
        "theil_t": reference.theil_t(x, w),
        "mld": reference.mld(x, w),
        "ge2": reference.ge(x, 2, w),
        "atkinson_0_5": reference.atkinson(x, 0.5, w),
        "atkinson_1": reference.atkinson(x, 1, w),
        "atkinson_2": reference.atkinson(x, 2, w),
        "cv": reference.cv(x, w),
    }
    for key, want in wants.items():
        if math.isnan(want):
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key
    if not math.isnan(wants["gini"]):
        assert reference.gini_sorted(x, w) == pytest.approx(wants["gini"], rel=1e-9, abs=1e-12)
    p, lc = reference.lorenz(x, w)
    assert got["lorenz_p"] == pytest.approx(p, rel=1e-12, abs=1e-15)
    if got["lorenz_l"] is not None:
        assert got["lorenz_l"] == pytest.approx(lc, rel=1e-9, abs=1e-12)


# --- input handling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "weights", "message"),
    [
        ([], None, "empty"),
        ([1.0, -1.0], None, "values must be >= 0"),
        ([1.0, float("inf")], None, "non-finite"),
        ([1.0, 2.0], [1.0], "length mismatch"),
        ([1.0, 2.0], [1.0, -1.0], "weights must be >= 0"),
        ([1.0, 2.0], [0.0, 0.0], "sum to 0"),
        ([[1.0, 2.0]], None, "one-dimensional"),
    ],
)
def test_validation(values: list, weights: list | None, message: str) -> None:
    with pytest.raises(EquityInputError, match=message):
        individual_measures(values, weights)


def test_other_validation() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        concentration_index([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="length mismatch"):
        theil_decomposition([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="hashable"):
        theil_decomposition([1.0, 2.0], [["a"], ["b"]])


def test_individual_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "values.csv"
    path.write_text("patient,coverage,w\na,1,2\nb,5,3\n")
    assert individual_from_csv(path, value="coverage", weights="w") == individual_measures(
        [1.0, 5.0], [2.0, 3.0]
    )
    with pytest.raises(ValueError, match="missing column"):
        individual_from_csv(path)
    bad = tmp_path / "bad.csv"
    bad.write_text("value\n1\nx\n")
    with pytest.raises(ValueError, match="line 3"):
        individual_from_csv(bad)
