"""PNG bar charts of benchmark results."""

from __future__ import annotations

from pathlib import Path


def bar_chart(labels: list[str], values: list[float | None], unit: str, path: Path) -> None:
    """A horizontal bar per label, its value written beside it; a missing value (a failed
    run) is drawn as an empty bar marked "failed"."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    height = 0.9 + 0.45 * len(labels)
    figure, axes = plt.subplots(figsize=(8, height))
    positions = list(range(len(labels)))[::-1]  # first cell on top
    measured = [v or 0.0 for v in values]
    bars = axes.barh(positions, measured, color="#3b7dd8")
    largest = max(measured, default=0.0) or 1.0
    for bar, value in zip(bars, values, strict=True):
        text = "failed" if value is None else f"{value:,.0f}"
        axes.text(
            bar.get_width() + largest * 0.01,
            bar.get_y() + bar.get_height() / 2,
            text,
            va="center",
            color="#b00020" if value is None else "black",
        )
    axes.set_yticks(positions, labels)
    axes.set_xlabel(unit)
    axes.set_xlim(0, largest * 1.18)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
