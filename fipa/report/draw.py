"""What every report figure shares: theme, panels, legend, log axes, palette tags and checks, output.

Figures use matplotlib's object API (no pyplot, no backend switch: saving and showing work in
a notebook kernel, a headless job and a test alike). Every artist drawn for an aggregator
takes its style from fipa.palette and carries the palette's gid (``agg:<name>``, or
``ref:<name>`` for the reference runs), so :func:`check_colors` can verify that one aggregator
looks the same in every panel. Legends sit outside the data, to the right of the panels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fipa import palette
from fipa.report.notebook import SKIP_KEY
from fipa.report.roles import reference_names
from fipa.report.stats import METRIC_LABELS, direction_of


def theme() -> None:
    """seaborn's whitegrid theme at notebook scale, for every report figure."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")


class Styles:
    """How a figure draws the aggregators of a summary or curves frame: palette style, gid and
    order, with the aggregators of its reference runs (their role) in the reference style, last."""

    def __init__(self, frame: pd.DataFrame):
        self.references = set(reference_names(frame)) if "aggregator" in frame else set()

    def order(self, names) -> list[str]:
        """``names`` in palette order, the reference last."""
        return palette.order(names, self.references)

    def style(self, aggregator: str) -> palette.Style:
        """The palette style of ``aggregator`` (the reference style for a reference)."""
        return palette.style(aggregator, aggregator in self.references)

    def tag(self, artists, aggregator: str):
        """Mark ``artists`` (one or a list) as drawn for ``aggregator``; returns them."""
        gid = palette.gid(aggregator, aggregator in self.references)
        for a in artists if isinstance(artists, list | tuple) else [artists]:
            a.set_gid(gid)
        return artists


NO_REFERENCE = Styles(pd.DataFrame())  # for figures of federated aggregators only (ablations)


def ylabel(metric: str, log: bool) -> str:
    """A metric's axis label: plain words, the log scale if any, and the better direction."""
    better = "higher" if direction_of(metric) == "max" else "lower"
    return f"{METRIC_LABELS.get(metric, metric)}{' (log scale)' if log else ''}\n{better} is better"


def positive(values) -> bool:
    """Whether the finite ``values`` exist and are all > 0 (a log axis can show them)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return len(v) > 0 and bool((v > 0).all())


def plain_log(ax, axis: str = "y") -> None:
    """Log scale with ticks written as plain numbers (0.2, 1, 30), not as powers like 2 x 10^0."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo > 0 and hi / lo < 1e3:  # a few decades: ticks at 1, 2, 5 x 10^k; wider: decades only
        a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    a.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def panels(n: int, width: float = 4.6, height: float = 3.4, wrap: int = 3) -> tuple[Figure, list]:
    """A figure of ``n`` panels, ``wrap`` per row, room on the right for the legend."""
    ncol = min(n, wrap)
    nrow = -(-n // ncol)
    fig = Figure(figsize=(width * ncol + 1.8, height * nrow), layout="constrained")
    axs = fig.subplots(nrow, ncol, squeeze=False).ravel().tolist()
    for ax in axs[n:]:
        ax.set_axis_off()
    return fig, axs[:n]


def legend(fig: Figure, axs, title: str = "aggregator") -> None:
    """One legend for the figure, right of the panels, from every panel's labelled artists."""
    seen = {}
    for ax in axs:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), title=title, loc="outside right center",
                   frameon=False)


def errorbar_artists(eb) -> list:
    """The line, caps and bars of an ``Axes.errorbar`` container, to tag them together."""
    return [eb.lines[0], *eb.lines[1], *eb.lines[2]]


# ----------------------------------------------------------------------------- palette checks


def _artist_color(a):
    from matplotlib.collections import Collection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if isinstance(a, Line2D):
        return a.get_color()
    if isinstance(a, Collection):
        fc = a.get_facecolor()
        return fc[0] if len(fc) else (a.get_edgecolor()[0] if len(a.get_edgecolor()) else None)
    if isinstance(a, Patch):
        return a.get_facecolor()
    return None


def _tagged_colors(fig: Figure) -> dict[tuple[str, bool], set[str]]:
    """{(aggregator, reference): hex colours of its tagged artists} over every panel of ``fig``."""
    from matplotlib.colors import to_hex

    out: dict[tuple[str, bool], set[str]] = {}
    for a in fig.findobj(lambda o: palette.parse_gid(o.get_gid()) is not None):
        c = _artist_color(a)
        if c is not None:
            out.setdefault(palette.parse_gid(a.get_gid()), set()).add(to_hex(c, keep_alpha=False))
    return out


def figure_colors(fig: Figure) -> dict[str, set[str]]:
    """{aggregator: the set of hex colours its tagged artists have} over every panel of ``fig``."""
    out: dict[str, set[str]] = {}
    for (agg, _), cs in _tagged_colors(fig).items():
        out.setdefault(agg, set()).update(cs)
    return out


def check_colors(fig: Figure) -> list[str]:
    """Aggregators drawn in ``fig`` in a colour other than their palette colour (empty if none)."""
    return [f"{agg} drawn in {sorted(cs)}, palette says {palette.color(agg, ref)}"
            for (agg, ref), cs in _tagged_colors(fig).items() if cs != {palette.color(agg, ref)}]


# ----------------------------------------------------------------------------- output


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """``fig`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def show(fig: Figure | None) -> None:
    """Display ``fig`` as a PNG in the notebook, after checking its colours against the palette."""
    from IPython.display import Image, display

    if fig is None:
        return
    bad = check_colors(fig)
    if bad:
        raise ValueError("figure colours disagree with fipa.palette: " + "; ".join(bad))
    display(Image(data=png_bytes(fig)))


def skip(reason: str) -> None:
    """Display why a figure section is empty on purpose (no PDE runs, no ablations): the report
    check accepts a figure cell without an image only when it says so through this."""
    from IPython.display import Markdown, display

    display(Markdown(f"*{reason}*"), metadata={SKIP_KEY: True})


def save_figure(fig: Figure, path_stem: Path) -> list[Path]:
    """Write ``fig`` as PNG and PDF beside each other."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [path_stem.with_suffix(s) for s in (".png", ".pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=120)
    return paths
