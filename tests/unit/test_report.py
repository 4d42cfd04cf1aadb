"""The equity report renders from a replay result and from a live snapshot: HTML + non-blank PNGs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from monitor.replay import replay
from monitor.report import CHARTS, build_report, from_file
from monitor.simulate import SimConfig, generate, write_ndjson

END = datetime(2026, 11, 1, tzinfo=UTC)
CFG = SimConfig(patients=250, days=14, seed=5, end=END)


@pytest.fixture(scope="module")
def ndjson(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "events.ndjson"
    with open(path, "w", encoding="utf-8") as fh:
        write_ndjson(CFG, fh)
    return path


@pytest.fixture(scope="module")
def replayed(ndjson: Path) -> dict:
    with open(ndjson, "rb") as fh:
        return replay(fh)


def identifiers() -> set[str]:
    ids: set[str] = set()
    for _typ, doc in generate(CFG):
        for key in ("patient_id", "carer_id"):
            if key in doc:
                ids.add(doc[key])
    return ids


def assert_rendered(html_path: Path) -> str:
    assert html_path.name == "index.html" and html_path.is_file()
    text = html_path.read_text(encoding="utf-8")
    srcs = set(re.findall(r'<img src="([^"]+)"', text))
    assert srcs == set(CHARTS.values()), srcs
    for name in CHARTS.values():
        png = html_path.parent / name
        assert png.is_file() and png.stat().st_size > 5000, name
        pixels = mpimg.imread(png)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200, name
        assert float(np.var(pixels[..., :3])) > 1e-3, f"{name} is blank"
    return text


def test_report_from_a_replay(replayed: dict, tmp_path: Path) -> None:
    path = build_report(tmp_path / "report", replay_result=replayed)
    text = assert_rendered(path)
    assert "Equity report" in text and "SII" in text and "gini" in text
    sii = replayed["equity"]["deprivation_quintile"]["pct_covered"]["SII"]
    assert f"{sii:.2f}" in text  # the measures table shows the replay's SII
    total = sum(g["patients"] for q, g in replayed["groups"]["deprivation_quintile"].items()
                if q != "unknown")
    assert f"<td>{total}</td>" in text
    for pid in identifiers():
        assert pid not in text, "the report must not contain identifiers"


def test_report_from_a_live_snapshot_without_patients(replayed: dict, tmp_path: Path) -> None:
    snapshot = {"as_of_day": 20758, "partitions_reported": 8, "partitions": 8,
                "groups": replayed["groups"], "equity": replayed["equity"]}
    text = assert_rendered(build_report(tmp_path / "live", equity_snapshot=snapshot))
    assert "8 of 8 partitions" in text and "As of 2026-11-01" in text


def test_lorenz_curve_differs_between_equal_and_unequal_care(replayed: dict, tmp_path: Path) -> None:
    """The chart is drawn from the data: an equal distribution gives a different image."""
    equal = dict(replayed)
    equal["patients"] = {pid: {**p, "care_minutes_7d": 60.0} for pid, p in replayed["patients"].items()}
    a = mpimg.imread(build_report(tmp_path / "a", replay_result=replayed).parent / CHARTS["lorenz"])
    b = mpimg.imread(build_report(tmp_path / "b", replay_result=equal).parent / CHARTS["lorenz"])
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_from_file_replays_and_renders(ndjson: Path, tmp_path: Path) -> None:
    assert_rendered(from_file(ndjson, tmp_path / "file"))


def test_no_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_report(tmp_path)
    with pytest.raises(ValueError):
        build_report(tmp_path, equity_snapshot={})
    with pytest.raises(ValueError):
        build_report(tmp_path, replay_result={"groups": {}, "equity": {}})
