"""Fuzzing the run config: every mutated config either trains or fails with one line naming
a key or file, never a traceback (seeded, bounded to well under a minute)."""

from __future__ import annotations

import copy
import os
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


# ----------------------------------------------------------------------------- file-level mutations
# The files a run reads back (checkpoint, partition, warm-up state) and the final.json that
# `fipa collect` reads, each mutated at one place: a key deleted, a value of another type, a tensor
# of another shape or dtype, an index moved out of range or given twice, the file truncated. Each
# mutated file is refused with one line, or accepted and then gives exactly the numbers of the
# intact file (wall_s aside). A different finite number of the right type (a forged loss) is not
# among the mutations: no check short of a checksum could tell it from the real one.

FILE_BASE = tiny(rounds=1, task={"n_train": 32, "hidden": [4]}, client={"local_epochs": 1},
                 aggregator={"name": "fedadam", "server_lr": 0.01})
NOT_NUMBERS = [None, "x", "", [], {}, [1, 2], {"a": 1}, True]
ANY_VALUE = [*NOT_NUMBERS, -1, 0, 1, 2**64, 0.5, float("nan"), float("inf")]


def _tensor_mutations(t, rng: random.Random):
    """A tensor of another shape, dtype or type, or with a NaN."""
    import torch

    if t.dim() == 0 or t.numel() == 0:
        return rng.choice([t.reshape(1).repeat(2), "x", None, [1.0]])
    flat = t.flatten()
    nan = flat.clone().to(torch.float64)
    nan[rng.randrange(len(nan))] = float("nan")
    other_dtype = flat.float() if flat.dtype == torch.float64 else flat.double()
    return rng.choice([flat[:-1], other_dtype, flat.tolist(), torch.cat([flat, flat[:1]]),
                       nan.to(t.dtype) if t.is_floating_point() else nan, t.reshape(1, -1)])


def _paths(obj, prefix=()) -> list[tuple]:
    """Every key path into nested dicts and lists (tensors are leaves)."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out.append((*prefix, k))
        if isinstance(v, dict | list) and len(out) < 400:
            out += _paths(v, (*prefix, k))
    return out


def _mutate_tree(obj, rng: random.Random, numbers_ok: bool) -> str:
    """Change ``obj`` in place at one random path: delete the key, or set another type's value
    (a tensor: another shape, dtype or type). ``numbers_ok``: numbers may replace numbers (the
    file's checks must then catch any value of the right type that does not fit)."""
    import torch

    path = rng.choice(_paths(obj))
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    old = parent[path[-1]]
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"delete {path}"
    if isinstance(old, torch.Tensor):
        parent[path[-1]] = _tensor_mutations(old, rng)
    elif isinstance(old, int | float) and not isinstance(old, bool) and not numbers_ok:
        parent[path[-1]] = rng.choice(NOT_NUMBERS)
    else:
        parent[path[-1]] = rng.choice(ANY_VALUE)
    return f"set {path}"


def _truncate(path, rng: random.Random) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(len(data))])
    return "truncate"


def _numbers(run_dir) -> list[list[str]]:
    """metrics.csv without its wall_s column."""
    return [line.split(",")[:-1] for line in (run_dir / "metrics.csv").read_text().splitlines()]


def _one_line_or_same(rc: int, err: str, how: str, got, want) -> str:
    if rc == 0:
        assert got() == want, f"{how}: accepted, but the numbers differ from the intact file's"
        return "ran"
    lines = [line for line in err.splitlines() if line.startswith("fipa ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, f"{how}: exit {rc}: {err}"
    return "error"


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    """A finished 1-round run, the uninterrupted 2-round run it resumes to, a partition file, a
    warm-up state and the 1-round run that starts from it, and a final.json to collect."""
    import shutil

    root = tmp_path_factory.mktemp("intact")

    def train(cfg, out):
        (root / "c.yaml").write_text(yaml.safe_dump(cfg))
        assert cli.main(["train", "-c", str(root / "c.yaml"), "-o", str(out), "-q", "--threads", "1"]) == 0

    train(FILE_BASE, root / "one")
    train({**FILE_BASE, "rounds": 2}, root / "two")
    (root / "c.yaml").write_text(yaml.safe_dump(FILE_BASE))
    assert cli.main(["partition", "-c", str(root / "c.yaml"), "-o", str(root / "part.json")]) == 0
    assert cli.main(["export-warmup", str(root / "one"), "-o", str(root / "warm.pt")]) == 0
    train({**FILE_BASE, "warmup_checkpoint": str(root / "warm.pt")}, root / "warmed")
    shutil.copytree(root / "one", root / "collect" / "a")
    return root


def _checkpoint_case(root, work, rng):
    import shutil

    import torch

    out = work / "run"
    shutil.copytree(root / "one", out)
    (out / "final.json").unlink()  # a run killed after its checkpoint of round 1
    if rng.random() < 0.1:
        how = _truncate(out / "checkpoint.pt", rng)
    else:
        raw = torch.load(out / "checkpoint.pt", weights_only=True)
        how = _mutate_tree(raw, rng, numbers_ok=False)
        torch.save(raw, out / "checkpoint.pt")
    argv = ["train", "-c", str(work / "two.yaml"), "-o", str(out), "-q", "--threads", "1"]
    return f"checkpoint {how}", argv, lambda: _numbers(out), _numbers(root / "two")


def _partition_case(root, work, rng):
    import json

    part = json.loads((root / "part.json").read_text())
    path = work / "part.json"
    if rng.random() < 0.1:
        path.write_text(json.dumps(part))
        how = _truncate(path, rng)
    else:
        how = rng.choice([_mutate_tree, _move_index])(part, rng, numbers_ok=True)
        path.write_text(json.dumps(part))
    (work / "p.yaml").write_text(yaml.safe_dump({**FILE_BASE, "partition_file": str(path)}))
    argv = ["train", "-c", str(work / "p.yaml"), "-o", str(work / "run"), "-q", "--threads", "1"]
    return f"partition {how}", argv, lambda: _numbers(work / "run"), _numbers(root / "one")


def _move_index(part: dict, rng: random.Random, numbers_ok: bool) -> str:
    """An index out of range, given twice, dropped, or a client emptied."""
    parts, n = part["indices"], part["n"]
    m = rng.randrange(len(parts))
    what = rng.choice(["out of range", "twice", "drop", "empty"])
    if what == "out of range":
        parts[m][rng.randrange(len(parts[m]))] = rng.choice([n, n + 5, -1, 2**40])
    elif what == "twice":
        parts[(m + 1) % len(parts)].append(rng.choice(parts[m]))
    elif what == "drop":
        parts[m].pop(rng.randrange(len(parts[m])))
    else:
        parts[(m + 1) % len(parts)] += parts[m]
        parts[m] = []
    return f"{what} (client {m})"


def _warmup_case(root, work, rng):
    import torch

    warm = torch.load(root / "warm.pt", weights_only=True)
    path = work / "warm.pt"
    torch.save(warm, path)
    how = _truncate(path, rng) if rng.random() < 0.1 else _mutate_tree(warm, rng, numbers_ok=True)
    if how != "truncate":
        torch.save(warm, path)
    (work / "w.yaml").write_text(yaml.safe_dump({**FILE_BASE, "warmup_checkpoint": str(path)}))
    argv = ["train", "-c", str(work / "w.yaml"), "-o", str(work / "run"), "-q", "--threads", "1"]
    return f"warm-up {how}", argv, lambda: _numbers(work / "run"), _numbers(root / "warmed")


def _final_case(root, work, rng):
    import json
    import shutil

    shutil.copytree(root / "collect", work / "runs")
    path = work / "runs" / "a" / "final.json"
    final = json.loads(path.read_text())
    how = _mutate_tree(final, rng, numbers_ok=False)
    path.write_text(json.dumps(final))
    argv = ["collect", str(work / "runs"), "-o", str(work / "summary.csv")]
    return f"final.json {how}", argv, lambda: _typed_summary(work / "summary.csv"), True


def _typed_summary(path) -> bool:
    """Whether a collected summary's number columns hold numbers (what figures and the report need)."""
    import pandas as pd

    s = pd.read_csv(path)
    numeric = ["seed", "rounds_completed", "uplink_bytes_total", "wall_s", "num_params",
               *[c for c in s.columns if c.startswith(("final_", "best_"))]]
    return all(pd.api.types.is_numeric_dtype(s[c]) for c in numeric) and s["diverged"].dtype == bool


FILE_CASES = {"checkpoint": (_checkpoint_case, 130), "partition": (_partition_case, 80),
              "warm-up": (_warmup_case, 60), "final.json": (_final_case, 60)}


def test_mutated_files_are_refused_with_one_line_or_give_the_intact_numbers(intact, tmp_path, capsys):
    rng = random.Random(20270127)
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({**FILE_BASE, "rounds": 2}))
    t0, counts = time.perf_counter(), {}
    for kind, (make, n) in FILE_CASES.items():
        for i in range(n):
            work = tmp_path / f"{kind}{i}"
            work.mkdir()
            (work / "two.yaml").write_text((tmp_path / "two.yaml").read_text())
            how, argv, got, want = make(intact, work, rng)
            try:
                rc = cli.main(argv)
            except Exception as e:  # a traceback: the bug this test hunts
                pytest.fail(f"{how}: {type(e).__name__}: {e}")
            outcome = _one_line_or_same(rc, capsys.readouterr().err, how, got, want)
            if os.environ.get("FIPA_FUZZ_SHOW") and outcome == "ran":  # what was accepted, for review
                with capsys.disabled():
                    print("accepted:", how)
            counts[(kind, outcome)] = counts.get((kind, outcome), 0) + 1
    total = sum(counts.values())
    print(f"file fuzz: {total} mutated files in {time.perf_counter() - t0:.1f} s: {counts}")
    assert total >= 300 and all(counts.get((k, "error"), 0) > 0 for k in FILE_CASES)
