"""Equity charts as PNG files (matplotlib, Agg backend: no display, safe in workers and CI).

Each function takes plain data (no pipeline objects) and writes one PNG, returning its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110
COVERED = "#2b8cbe"
UNSUPPORTED = "#d7301f"
LINE = "#444444"


def lorenz_chart(path: Path, p: Sequence[float] | None, lorenz: Sequence[float] | None, *,
                 gini: float | None, title: str = "Care minutes in the last 7 days: Lorenz curve") -> Path:
    """The Lorenz curve (cumulative share of patients vs. of care minutes) and the equality line.

    Without points (a live snapshot reports only scalar measures) the chart says so and shows the
    Gini coefficient alone.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=DPI)
    ax.plot([0, 1], [0, 1], color=LINE, linestyle="--", linewidth=1, label="equal distribution")
    if p is not None and lorenz is not None and len(p) == len(lorenz) and len(p) > 1:
        ax.plot(p, lorenz, color=COVERED, linewidth=2, label="patients (sorted by care minutes)")
        ax.fill_between(p, lorenz, p, color=COVERED, alpha=0.15)
    else:
        ax.text(0.5, 0.3, "Lorenz points not available\n(scalar measures only)", ha="center",
                va="center", fontsize=10, color=LINE)
    if gini is not None:
        ax.text(0.04, 0.92, f"Gini = {gini:.3f}", transform=ax.transAxes, fontsize=11,
                bbox={"facecolor": "white", "edgecolor": LINE, "boxstyle": "round"})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("cumulative share of patients")
    ax.set_ylabel("cumulative share of care minutes")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def coverage_by_quintile_chart(path: Path, quintiles: Sequence[str], pct_covered: Sequence[float],
                               patients: Sequence[int], *, sii: float | None,
                               sii_label: str = "SII") -> Path:
    """Coverage per deprivation quintile (bars, width = population share) with the SII line.

    Bars sit at the quintiles' ridit midpoints (cumulative population share, most deprived first)
    with widths equal to their population shares, as in a slope-index-of-inequality plot. The line
    is the population-weighted least-squares fit of coverage on that rank; its rise from rank 0 to
    rank 1 is the linear SII, printed with the reported ``sii`` (HEAT's logit method may differ).
    """
    share = np.asarray(patients, dtype=float)
    share = share / share.sum() if share.sum() > 0 else share
    left = np.concatenate(([0.0], np.cumsum(share)[:-1]))
    mid = left + share / 2
    y = np.asarray(pct_covered, dtype=float)
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=DPI)
    ax.bar(left, y, width=share, align="edge", color=COVERED, alpha=0.8, edgecolor="white",
           label="patients covered (carer contact in 7 days)")
    for x, v, q in zip(mid, y, quintiles, strict=True):
        ax.text(x, v + 1, f"Q{q}\n{v:.0f}%", ha="center", va="bottom", fontsize=9)
    label = None
    if len(y) >= 2 and share.sum() > 0:
        xm = float(np.sum(share * mid))
        ym = float(np.sum(share * y))
        slope = float(np.sum(share * (mid - xm) * (y - ym)) / np.sum(share * (mid - xm) ** 2))
        xs = np.array([0.0, 1.0])
        label = f"linear fit: rise {slope:+.1f} points"
        if sii is not None:
            label += f"; reported {sii_label} {sii:+.1f}"
        ax.plot(xs, ym + slope * (xs - xm), color=UNSUPPORTED, linewidth=2, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(100.0, float(y.max()) + 15 if y.size else 100.0))
    ax.set_xlabel("population rank by deprivation (0 = most deprived, 1 = least deprived)")
    ax.set_ylabel("% of patients covered")
    ax.set_title("Coverage by deprivation quintile and the slope index of inequality", fontsize=11)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.95)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def unsupported_by_region_chart(path: Path, counts: Mapping[str, int],
                                patients: Mapping[str, int]) -> Path:
    """Patients without a support network per region (bars), annotated with the region's share."""
    regions = sorted(counts, key=lambda r: (-counts[r], r))
    n = [counts[r] for r in regions]
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=DPI)
    bars = ax.bar(regions, n, color=UNSUPPORTED, alpha=0.85)
    for bar, r in zip(bars, regions, strict=True):
        total = patients.get(r, 0)
        pct = f"{100 * counts[r] / total:.0f}% of {total}" if total else ""
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{counts[r]}\n{pct}",
                ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("patients without a support network")
    ax.set_ylim(0, max(n + [1]) * 1.3)
    ax.set_title("Patients without a support network, by region", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["coverage_by_quintile_chart", "lorenz_chart", "unsupported_by_region_chart"]
