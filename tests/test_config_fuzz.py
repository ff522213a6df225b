"""Fuzzing the run config: every mutated config either trains or fails with one line naming
a key or file, never a traceback (seeded, bounded to well under a minute)."""

from __future__ import annotations

import copy
import random
import signal
import time

import pytest
import yaml

from fipa import cli
from tests.helpers import tiny

PINN = {"task": {"name": "pde", "problem": "poisson1d", "n_domain": 20, "hidden": [4], "test_points": 20},
        "partition": {"scheme": "domain_split", "clients": 2, "pieces": 1},
        "client": {"method": "local", "optimizer": "adam", "lr": 0.01, "local_steps": 2},
        "aggregator": {"name": "fipa", "rho": 1e-3, "rank": 2}, "rounds": 1, "seed": 0}
BASES = [tiny(rounds=1, task={"n_train": 32, "hidden": [4]}), PINN]
# values a hostile or careless user types
WEIRD = [None, True, -1, 0, 1, 2**64, -(2**63), 1e308, float("nan"), float("inf"), -float("inf"), "x", "",
         "1e-3", [], [1, 2], {}, {"a": 1}, 0.5, -0.5, 2**40]


def leaves(cfg: dict, prefix=()) -> list[tuple]:
    """Paths to every key of a nested config."""
    out = []
    for k, v in cfg.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += leaves(v, (*prefix, k))
    return out


def mutate(cfg: dict, rng: random.Random) -> tuple[dict, str]:
    cfg = copy.deepcopy(cfg)
    path = rng.choice(leaves(cfg))
    parent = cfg
    for k in path[:-1]:
        parent = parent[k]
    what = rng.choice(["value", "value", "value", "delete", "unknown"])
    if what == "delete":
        del parent[path[-1]]
    elif what == "unknown":
        parent[path[-1] + "x"] = 1
    else:
        parent[path[-1]] = rng.choice(WEIRD)
    return cfg, f"{what} {'.'.join(map(str, path))}"


CASE_SECONDS = 10  # a mutated config that would train for hours must be refused, not run


class _TooSlow(Exception):
    pass


def _too_slow(signum, frame):
    raise _TooSlow(f"ran past {CASE_SECONDS} s")


def test_mutated_configs_train_or_fail_with_one_line(tmp_path, capsys):
    rng = random.Random(20261203)
    t0, tried, outcomes = time.perf_counter(), 0, {"ran": 0, "error": 0}
    while time.perf_counter() - t0 < 25 and tried < 400:
        cfg, how = mutate(rng.choice(BASES), rng)
        path = tmp_path / f"c{tried}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        signal.signal(signal.SIGALRM, _too_slow)
        signal.alarm(CASE_SECONDS)
        try:
            rc = cli.main(["train", "-c", str(path), "-o", str(tmp_path / f"r{tried}"), "-q",
                           "--threads", "1"])
        except Exception as e:  # a traceback: the bug this test hunts
            pytest.fail(f"case {tried} ({how}): {type(e).__name__}: {e}")
        finally:
            signal.alarm(0)
        err = capsys.readouterr().err.strip()
        tried += 1
        if rc == 0:
            outcomes["ran"] += 1
            continue
        assert rc == 2, f"case {tried} ({how}): exit {rc}"
        lines = [line for line in err.splitlines() if line.startswith("fipa train: error:")]
        assert len(lines) == 1 and "Traceback" not in err, f"case {tried} ({how}): {err}"
        outcomes["error"] += 1
    print(f"fuzz: {tried} mutated configs, {outcomes['ran']} trained, {outcomes['error']} one-line errors")
    assert tried >= 50 and outcomes["error"] > 0 and outcomes["ran"] > 0
