"""One colour, marker and line style per aggregator, shared by every figure of the project.

The style of an aggregator is a pure function of its name and whether its runs are the
reference (their role in final.json, see fipa.report.roles): the same name gets the same
colour in every panel, figure and notebook, whatever else is drawn beside it. Known names
have hand-picked styles (Okabe-Ito colours for the baselines; FIPA variants in distinct warm
hues with distinct markers and dashes, so ``fipa`` and ``fipa_rho1e-3`` never look alike);
an unknown name gets one from a spare pool, chosen by a stable hash of the name, so a new
aggregator needs no edit here; the reference is drawn in black, whatever its name.

Every artist drawn for an aggregator carries ``gid(name, reference)``, so a figure can be
checked against this palette (fipa.report.draw.check_colors).
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Style:
    """How one aggregator is drawn: hex colour, marker, line style (matplotlib spellings)."""

    color: str
    marker: str
    linestyle: str = "-"

    def line_kw(self) -> dict:
        """Keyword arguments for ``Axes.plot``."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle}


STYLES: dict[str, Style] = {
    "fedavg": Style("#0072b2", "o"),          # blue: the baseline every claim compares with
    "fedavg_tuned": Style("#332288", "s", "-."),  # indigo, dash-dot: averaging at its best
    "fedavgm": Style("#56b4e9", "v"),         # sky blue
    "fedadam": Style("#009e73", "^"),         # green
    "fedyogi": Style("#999933", "<"),         # olive (not red: reds are FIPA's)
    "fedadagrad": Style("#44aa99", ">"),      # teal
    "diag_fisher": Style("#882e72", "P"),     # purple
    "fipa": Style("#d55e00", "D"),            # vermillion, solid
    "fipa_rho1e-3": Style("#e69f00", "s", "--"),   # orange, dashed
    "fipa_rho1e-2": Style("#f0c808", "h", "--"),   # gold, dashed
    "fipa_fixed": Style("#8b0000", "X", "-."),     # dark red, dash-dot
    "fipa_adaptive": Style("#cc3311", "*", "-"),   # brick red
    "fipa_pinv": Style("#ee3377", "d", ":"),       # magenta, dotted
}
REFERENCE = Style("#000000", "x", ":")  # black, dotted: a reference, not a competitor

_FIPA_POOL = [Style("#a6761d", "p", "--"), Style("#e7298a", "8", "-."), Style("#fb9a99", "H", ":"),
              Style("#b15928", "d", "-"), Style("#ff7f00", "*", "-.")]
_OTHER_POOL = [Style("#666666", "o", "--"), Style("#1b9e77", "s", "-."), Style("#7570b3", "^", ":"),
               Style("#66a61e", "v", "--"), Style("#17becf", "P", "-.")]


def style(aggregator: str, reference: bool = False) -> Style:
    """The style of ``aggregator``: REFERENCE for the reference runs, a fixed entry of STYLES,
    else a stable pick from a pool."""
    if reference:
        return REFERENCE
    if aggregator in STYLES:
        return STYLES[aggregator]
    pool = _FIPA_POOL if aggregator.startswith("fipa") else _OTHER_POOL
    return pool[zlib.crc32(aggregator.encode()) % len(pool)]


def color(aggregator: str, reference: bool = False) -> str:
    """Hex colour of ``aggregator`` (lower case, '#rrggbb')."""
    return style(aggregator, reference).color


GID, REFERENCE_GID = "agg:", "ref:"


def gid(aggregator: str, reference: bool = False) -> str:
    """The gid of an artist drawn for ``aggregator``: 'agg:<name>', or 'ref:<name>' for the reference."""
    return (REFERENCE_GID if reference else GID) + aggregator


def parse_gid(value: str | None) -> tuple[str, bool] | None:
    """(aggregator, reference) of a gid made by :func:`gid`; None for any other artist."""
    for prefix, reference in ((GID, False), (REFERENCE_GID, True)):
        if (value or "").startswith(prefix):
            return value[len(prefix):], reference
    return None


def order(names, references: Collection[str] = ()) -> list[str]:
    """FedAvg first, other baselines (any name not known here), FIPA variants, the
    ``references`` (the aggregators of the reference runs) last."""
    def rank(name: str) -> tuple[int, str]:
        return (3 if name in references else 0 if name.startswith("fedavg_") or name == "fedavg"
                else 2 if name.startswith("fipa") else 1, name)

    return sorted(dict.fromkeys(names), key=rank)
