"""The equity report: one static HTML page with PNG charts, for care coordinators and boards.

Sources (aggregates only - the report never contains a patient or carer identifier):

* a replay result (:func:`monitor.replay.replay`; :func:`from_file` runs it on an NDJSON file), or
* the live population snapshot of the merge-point worker (``GET /equity``, the
  ``monitor.stream.merge.population_snapshot`` shape; :func:`from_url` fetches it).

Charts: the Lorenz curve of care minutes (7 days), coverage by deprivation quintile with the slope
index of inequality, and patients without a support network by region. ``build_report`` writes
``index.html`` and the PNGs into ``out_dir`` and returns the HTML path.
"""

from __future__ import annotations

import html
import json
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHARTS", "build_report", "from_file", "from_url"]

CHARTS: dict[str, str] = {
    "lorenz": "lorenz_care_minutes.png",
    "coverage_by_quintile": "coverage_by_quintile.png",
    "unsupported_by_region": "unsupported_by_region.png",
}
"""Chart key -> file name inside the report folder."""

UNKNOWN = "unknown"
_MEASURES = ("SII", "RII", "ACI", "D", "R")
_INDICATORS = ("pct_covered", "pct_no_support_network", "mean_care_minutes_per_week",
               "pct_readings_received")


def _known(groups: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {g: v for g, v in groups.items() if g != UNKNOWN and v.get("patients")}


def _lorenz_points(source: Mapping[str, Any]) -> tuple[list[float] | None, list[float] | None]:
    """Lorenz points: from the per-patient care minutes of a replay, else those of the snapshot."""
    patients = source.get("patients")
    if isinstance(patients, Mapping) and patients:
        minutes = np.sort(np.array([float(p.get("care_minutes_7d") or 0.0) for p in patients.values()]))
        total = minutes.sum()
        if total > 0:
            p = np.arange(minutes.size + 1) / minutes.size
            lc = np.concatenate(([0.0], np.cumsum(minutes) / total))
            return p.tolist(), lc.tolist()
    ind = source.get("equity", {}).get("individual", {}).get("care_minutes_7d", {}) or {}
    return ind.get("lorenz_p"), ind.get("lorenz_l")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(out_dir: Path, *, replay_result: dict[str, Any] | None = None,
                 equity_snapshot: dict[str, Any] | None = None) -> Path:
    """Write ``index.html`` and the chart PNGs into ``out_dir`` (created); return the HTML path.

    Exactly one source is used: ``replay_result`` if given, else ``equity_snapshot``. Raises
    ``ValueError`` when neither is given or the source has no registered patient in any group.
    """
    from monitor.report import charts  # matplotlib is imported only when a report is built

    if replay_result is not None:
        source, kind = replay_result, "replay"
        as_of = replay_result.get("as_of")
    elif equity_snapshot:
        source, kind = equity_snapshot, "live"
        day = equity_snapshot.get("as_of_day")
        as_of = (datetime.fromtimestamp(int(day) * 86400, UTC).strftime("%Y-%m-%d")
                 if day is not None else None)
    else:
        raise ValueError("build_report needs a replay_result or a non-empty equity_snapshot")
    groups = source.get("groups") or {}
    equity = source.get("equity") or {}
    quint = _known(groups.get("deprivation_quintile", {}))
    region = _known(groups.get("region", {}))
    if not quint and not region:
        raise ValueError("the source has no registered patient in any group")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    gini = equity.get("individual", {}).get("care_minutes_7d", {}).get("gini")
    lp, ll = _lorenz_points(source)
    charts.lorenz_chart(out_dir / CHARTS["lorenz"], lp, ll, gini=gini)

    qs = sorted(quint, key=lambda g: int(g) if g.lstrip("-").isdigit() else 99)
    sii = equity.get("deprivation_quintile", {}).get("pct_covered", {}).get("SII")
    charts.coverage_by_quintile_chart(
        out_dir / CHARTS["coverage_by_quintile"], qs,
        [float(quint[q].get("pct_covered") or 0.0) for q in qs],
        [int(quint[q]["patients"]) for q in qs], sii=sii)

    unsupported = {r: round(float(v.get("pct_no_support_network") or 0.0) * int(v["patients"]) / 100)
                   for r, v in region.items()}
    charts.unsupported_by_region_chart(out_dir / CHARTS["unsupported_by_region"], unsupported,
                                       {r: int(v["patients"]) for r, v in region.items()})

    page = _html(kind, as_of, source, groups, equity, unsupported)
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _html(kind: str, as_of: str | None, source: Mapping[str, Any], groups: Mapping[str, Any],
          equity: Mapping[str, Any], unsupported: Mapping[str, int]) -> str:
    total = sum(int(v["patients"]) for v in _known(groups.get("deprivation_quintile", {})).values())
    n_unsupported = sum(
        round(float(v.get("pct_no_support_network") or 0.0) * int(v["patients"]) / 100)
        for v in _known(groups.get("deprivation_quintile", {})).values())
    origin = ("an offline replay of contract events" if kind == "replay" else
              f"the live population snapshot ({source.get('partitions_reported')} of "
              f"{source.get('partitions')} partitions reported)")
    facts = [["Registered patients", total], ["Without a support network", n_unsupported]]
    if kind == "replay":
        alerts = source.get("alerts") or []
        facts.append(["Open clinical alert episodes", sum(1 for a in alerts if a.get("status") == "firing")])
    sections = []
    for dim, title in (("deprivation_quintile", "Deprivation quintile (1 = most deprived)"),
                       ("region", "Region"), ("age_band", "Age band")):
        known = _known(groups.get(dim, {}))
        if not known:
            continue
        order = sorted(known, key=lambda g: (int(g) if g.isdigit() else 99, g))
        rows = [[g, known[g]["patients"], *(known[g].get(i) for i in _INDICATORS)] for g in order]
        sections.append(f"<h3>{html.escape(title)}</h3>" + _table(
            ["group", "patients", "% covered", "% no support network", "care min / week",
             "% readings received"], rows))
        meas = equity.get(dim, {})
        mrows = [[ind, *(meas.get(ind, {}).get(m) for m in _MEASURES)] for ind in _INDICATORS
                 if ind in meas]
        if mrows:
            sections.append(_table(["indicator", *_MEASURES], mrows))
    ind = equity.get("individual", {}).get("care_minutes_7d", {}) or {}
    ind_rows = [[m, ind.get(m)] for m in ("gini", "theil_t", "mld", "atkinson_0_5", "atkinson_1", "cv")
                if m in ind]
    fig = "".join(
        f'<figure><img src="{CHARTS[key]}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}'
        "</figcaption></figure>"
        for key, alt in (
            ("coverage_by_quintile", "Coverage by deprivation quintile with the slope index of inequality"),
            ("unsupported_by_region", "Patients without a support network by region"),
            ("lorenz", "Lorenz curve of care minutes in the last 7 days"),
        ))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Coproduction monitor - equity report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}}
table{{border-collapse:collapse;margin:.5rem 0 1.2rem}}
td,th{{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}}
th{{background:#f2f2f2}}td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:0 1rem 1rem 0}}img{{max-width:100%;border:1px solid #ddd}}
.note{{color:#555;font-size:.9rem}}
</style></head><body>
<h1>Equity report: support coverage</h1>
<p class="note">As of {_fmt(as_of)} (UTC day resolution), from {html.escape(origin)}. Generated
{datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}. Aggregates only: no patient or carer identifier.
Covered = a carer contact in the last 7 days; no support network = no registered carer and no
carer active in 28 days. Measures follow the WHO HEAT definitions (SII/ACI in percentage points;
RII and R are ratios).</p>
{_table(["", "value"], facts)}
<h2>Charts</h2>
{fig}
<h2>Groups and inequality measures</h2>
{"".join(sections)}
<h3>Care minutes per patient (individual level)</h3>
{_table(["measure", "value"], ind_rows)}
</body></html>
"""


def from_file(path: Path | str, out_dir: Path | str, *, as_of: datetime | None = None) -> Path:
    """Replay an NDJSON file of contract documents (:func:`monitor.replay.replay`) and build the
    report from the result; returns the HTML path."""
    from monitor.replay import replay

    with open(path, "rb") as fh:
        result = replay(fh, as_of=as_of, progress=True)
    return build_report(Path(out_dir), replay_result=result)


def from_url(base_url: str, out_dir: Path | str, *, timeout_s: float = 10.0) -> Path:
    """Fetch the merge point's population snapshot (``GET {base_url}/equity``, no token needed:
    aggregates only) and build the report; ``ValueError`` if the worker has no snapshot yet."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/equity", timeout=timeout_s) as resp:
        snapshot = json.loads(resp.read())
    if not snapshot:
        raise ValueError(f"{base_url} has no population snapshot (not the merge point, or no data yet)")
    return build_report(Path(out_dir), equity_snapshot=snapshot)
