"""One colour, marker and line style per aggregator, shared by every figure of the project.

The style of an aggregator is a pure function of its name: the same name gets the same
colour in every panel, figure and notebook, whatever else is drawn beside it. Known names
have hand-picked styles (Okabe-Ito colours for the baselines; FIPA variants in distinct warm
hues with distinct markers and dashes, so ``fipa`` and ``fipa_rho1e-3`` never look alike);
an unknown name gets one from a spare pool, chosen by a stable hash of the name.
"""

from __future__ import annotations

import zlib
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
    "fedavg": Style("#0072b2", "o"),          # blue: the reference every claim compares with
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
    "centralized": Style("#000000", "x", ":"),     # black, dotted: a reference, not a competitor
}

_FIPA_POOL = [Style("#a6761d", "p", "--"), Style("#e7298a", "8", "-."), Style("#fb9a99", "H", ":"),
              Style("#b15928", "d", "-"), Style("#ff7f00", "*", "-.")]
_OTHER_POOL = [Style("#666666", "o", "--"), Style("#1b9e77", "s", "-."), Style("#7570b3", "^", ":"),
               Style("#66a61e", "v", "--"), Style("#17becf", "P", "-.")]


def style(aggregator: str) -> Style:
    """The style of ``aggregator``: a fixed entry of STYLES, else a stable pick from a pool."""
    if aggregator in STYLES:
        return STYLES[aggregator]
    pool = _FIPA_POOL if aggregator.startswith("fipa") else _OTHER_POOL
    return pool[zlib.crc32(aggregator.encode()) % len(pool)]


def color(aggregator: str) -> str:
    """Hex colour of ``aggregator`` (lower case, '#rrggbb')."""
    return style(aggregator).color


def order(names) -> list[str]:
    """FedAvg first, other baselines, FIPA variants, the centralized reference last."""
    def rank(name: str) -> tuple[int, str]:
        return (0 if name.startswith("fedavg_") or name == "fedavg" else 3 if name == "centralized"
                else 2 if name.startswith("fipa") else 1, name)

    return sorted(dict.fromkeys(names), key=rank)
