"""Plugin: the Burgers viscosities between the registered two, for notes/pde-results.md's search.

``burgers`` (nu = 0.01/pi) and ``burgers_smooth`` (nu = 0.1/pi) are built in; the search that
chose ``burgers_smooth`` also tried nu = 0.02/pi and 0.05/pi, registered here as ``burgers_0.02pi``
and ``burgers_0.05pi`` (the same equation, initial and boundary data, Cole-Hopf reference).
Used through a run config's ``plugins`` key, e.g.

    python benchmarks/run_grid.py --plugin benchmarks/pde_problems.py --tasks pde_burgers_smooth \\
        --aggregators centralized --seeds 0 --set task.problem=burgers_0.05pi
"""

from __future__ import annotations

import math

from fipa.tasks.pde.problems import PROBLEMS, burgers

for _c in ("0.02", "0.05"):
    PROBLEMS.register(f"burgers_{_c}pi")(burgers(float(_c) / math.pi, f"{_c}/pi"))
