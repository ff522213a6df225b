"""The report: statistics against scipy and hand-computed oracles, health flags, one colour per
aggregator in every figure, and the executed notebook on the .test workflow's results."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fipa import palette, report
from fipa.errors import ConfigError
from fipa.report import draw, plots

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- statistics


def test_t_interval_is_scipys():
    x = np.array([0.3, -0.1, 0.7, 0.2, 0.45])
    iv = report.t_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (iv.n, iv.mean) == (5, pytest.approx(x.mean()))
    assert iv.lo == pytest.approx(lo, rel=1e-12) and iv.hi == pytest.approx(hi, rel=1e-12)
    # two seeds: t_{1, 0.975} = 12.706
    iv2 = report.t_interval([1.0, 2.0])
    assert iv2.hi - iv2.mean == pytest.approx(12.7062047 * 0.5, rel=1e-6)
    # non-finite values (diverged) are left out; fewer than two values give no interval
    assert report.t_interval([1.0, np.inf, np.nan, 3.0]).n == 2
    one = report.t_interval([2.0])
    assert one.n == 1 and one.mean == 2.0 and math.isnan(one.lo)
    assert report.t_interval([]).n == 0


@pytest.mark.parametrize(
    ("lo", "hi", "n", "margin", "div", "want"),
    [(-2.0, -0.1, 3, 0.0, 0, report.SUPPORTED), (0.1, 2.0, 3, 0.0, 0, report.NOT_SUPPORTED),
     (-1.0, 1.0, 3, 0.0, 0, report.INCONCLUSIVE), (-2.0, -0.1, 3, 0.0, 1, report.INCONCLUSIVE),
     (math.nan, math.nan, 1, 0.0, 0, report.INCONCLUSIVE),
     (math.nan, math.nan, 0, 0.0, 0, report.NOT_MEASURED),
     (-1.0, 0.2, 3, math.log(1.25), 0, report.SUPPORTED)],
)
def test_verdict_rules(lo, hi, n, margin, div, want):
    iv = report.Interval((lo + hi) / 2 if n else math.nan, lo, hi, n, 1.0)
    assert report.verdict_of(iv, margin=margin, a_diverged=div) == want


def row(task, agg, seed, value, family="regression", metric="test_mse", method="local", diverged=False,
        rank=10, uplink=1000, P=100, partition="p", rho=1e-4, role=report.FEDERATED):
    return {"task": task, "partition": partition, "client_method": method, "aggregator": agg, "seed": seed,
            "task_family": family, "primary_metric": metric, f"final_{metric}": value, "diverged": diverged,
            "agg_kind": agg.split("_")[0] if agg.startswith("fipa") else agg, "rank": rank, "rho": rho,
            "server_lr": 1.0, "complement": "fedavg", "damping": "fixed", "curvature_at": "broadcast",
            "curvature_samples": None, "num_params": P, "uplink_bytes_total": uplink, "role": role}


FEDAVG = [1.0, 2.0, 4.0]
FIPA = [0.1, 0.3, 0.2]
PDE_FEDAVG, PDE_FIPA = [0.05, 0.08, 0.06], [0.04, 0.09, 0.03]


def synthetic() -> pd.DataFrame:
    """Three seeds: regression (FIPA wins), two PINN problems (one unlearned), digits accuracy
    under two client methods, a centralized reference, a diverged FIPA variant, a rank sweep."""
    rows = []
    for s in range(3):
        rows += [row("reg", "fedavg", s, FEDAVG[s], uplink=800),
                 row("reg", "fipa", s, FIPA[s], uplink=800 * 11.01),
                 row("reg", "centralized", s, 5.0, uplink=0, role=report.REFERENCE),
                 row("reg", "fipa_rho1e-3", s, 0.5, diverged=s == 1, rho=1e-3),
                 row("reg", "fipa_r2", s, FIPA[s] * 1.1, rank=2)]
        rows += [row("pde_a", "fedavg", s, PDE_FEDAVG[s], "pde", "rel_l2"),
                 row("pde_a", "fipa", s, PDE_FIPA[s], "pde", "rel_l2"),
                 row("pde_b", "fedavg", s, 0.9, "pde", "rel_l2"),
                 row("pde_b", "fipa", s, 0.5, "pde", "rel_l2")]
        for m in ("local", "fedprox"):
            rows += [row("digits", "fedavg", s, 0.80 + 0.01 * s, "vision", "test_acc", m),
                     row("digits", "fipa", s, 0.90 + 0.01 * s, "vision", "test_acc", m)]
    return pd.DataFrame(rows)


def test_claims_are_computed_against_a_hand_oracle():
    claims = report.claims_table(synthetic())
    by = {c.key: claims.iloc[i] for i, c in enumerate(report.CLAIMS)}
    # regression: per-seed log(FIPA / FedAvg), t interval over the three seeds
    lr = np.log(np.array(FIPA) / np.array(FEDAVG))
    lo, hi = stats.t.interval(0.95, 2, loc=lr.mean(), scale=stats.sem(lr))
    r = by["regression"]
    assert r["ratio"] == pytest.approx(math.exp(lr.mean())) and r["n"] == 3
    assert (r["ratio_lo"], r["ratio_hi"]) == (pytest.approx(math.exp(lo)), pytest.approx(math.exp(hi)))
    assert r["verdict"] == report.SUPPORTED
    # PINNs: pde_b is not learned by any method (0.5 > 0.1) and is left out; pde_a alone
    r = by["pde"]
    lr = np.log(np.array(PDE_FIPA) / np.array(PDE_FEDAVG))
    assert r["ratio"] == pytest.approx(math.exp(lr.mean()))
    assert "pde_b/p" in r["evidence"] and r["verdict"] == report.INCONCLUSIVE
    # vision: error rates 1 - acc; the local client method only
    r = by["vision"]
    lr = np.log((1 - (0.90 + 0.01 * np.arange(3))) / (1 - (0.80 + 0.01 * np.arange(3))))
    assert r["ratio"] == pytest.approx(math.exp(lr.mean())) and r["verdict"] == report.SUPPORTED
    # client methods: fedprox only, named in the evidence
    assert by["client_methods"]["n"] == 3 and "fedprox" in by["client_methods"]["evidence"]
    # rank sweep (fipa_r2 has rank 2, fipa rank 10, all else equal): low / high = 1.1 < 1.25 margin
    r = by["low_rank"]
    assert r["ratio"] == pytest.approx(1.1) and r["verdict"] == report.SUPPORTED
    # communication: 11.01 x FedAvg's bytes against the formula 1 + 10 * 101 / 100 = 11.1
    assert by["communication"]["verdict"] == report.SUPPORTED and "11.1x" in by["communication"]["estimate"]
    assert len(claims) == len(report.CLAIMS)


def test_vision_claims_per_task_and_against_tuned_averaging():
    """Two vision tasks: the pooled row (geometric mean over both tasks' log-ratios per seed), one
    row per task, and the same against fedavg_tuned; an inconclusive row names the seeds an effect
    of its size would need (oracle: the smallest n with t_{n-1} sd / sqrt(n) < |mean|)."""
    rows = []
    acc = {"fedavg": [0.50, 0.60, 0.55, 0.52, 0.58], "fedavg_tuned": [0.56, 0.63, 0.60, 0.54, 0.64],
           "fipa": [0.60, 0.62, 0.63, 0.55, 0.62]}
    for task, shift in (("digits", 0.3), ("mnist1d", 0.0)):
        for agg, values in acc.items():
            rows += [row(task, agg, s, v + shift, "vision", "test_acc") for s, v in enumerate(values)]
    claims = report.claims_table(pd.DataFrame(rows))
    texts = claims["claim"].tolist()
    i, j = texts.index(report.CLAIMS[2].text), texts.index(report.CLAIMS[3].text)
    assert texts[i + 1: i + 3] == ["... on digits", "... on mnist1d"] == texts[j + 1: j + 3]

    def log_ratios(task_shift, base):
        return np.log((1 - np.array(acc["fipa"]) - task_shift) / (1 - np.array(acc[base]) - task_shift))

    pooled = (log_ratios(0.3, "fedavg") + log_ratios(0.0, "fedavg")) / 2
    assert claims.iloc[i]["ratio"] == pytest.approx(math.exp(pooled.mean()))
    assert claims.iloc[i + 2]["ratio"] == pytest.approx(math.exp(log_ratios(0.0, "fedavg").mean()))
    tuned = log_ratios(0.0, "fedavg_tuned")
    assert claims.iloc[j + 2]["ratio"] == pytest.approx(math.exp(tuned.mean()))
    assert "fedavg_tuned" in claims.iloc[j + 2]["estimate"]
    iv = report.t_interval(tuned)
    need = next(n for n in range(2, 1000)
                if stats.t.ppf(0.975, n - 1) * tuned.std(ddof=1) / math.sqrt(n) < abs(tuned.mean()))
    assert report.seeds_needed(iv) == need
    assert claims.iloc[j + 2]["verdict"] == report.INCONCLUSIVE and need > 5
    assert f"about {need} seeds" in claims.iloc[j + 2]["evidence"]
    assert claims.iloc[i + 2]["verdict"] == report.SUPPORTED  # every seed: FIPA above plain FedAvg


def test_missing_evidence_says_not_measured():
    only_reg = synthetic().query("task == 'reg' and aggregator in ['fedavg', 'fipa']")
    claims = report.claims_table(only_reg)
    verdicts = dict(zip([c.key for c in report.CLAIMS], claims["verdict"], strict=True))
    assert verdicts["pde"] == verdicts["vision"] == verdicts["low_rank"] == report.NOT_MEASURED
    assert verdicts["regression"] == report.SUPPORTED


def test_pivot_leaves_diverged_runs_out_and_marks_the_best():
    s = synthetic()
    flags = report.health_flags(s, pd.DataFrame())
    text, best = report.pivot(s, flags)
    col = "reg / p (test_mse \u2193)"
    assert text.at["fipa_rho1e-3", col] == "0.5 \u00b1 0 (1 div.)"  # the two finite seeds only
    assert text.at["fipa", col] == f"{np.mean(FIPA):.3g} \u00b1 {np.std(FIPA, ddof=1):.2g}"
    assert best.at["fipa", col] and not best.at["centralized", col]
    assert list(text.index)[0] == "fedavg" and list(text.index)[-1] == "centralized"
    assert "\u2717" in next(c for c in text.columns if c.startswith("pde_b"))
    acc = next(c for c in text.columns if c.startswith("digits"))
    assert "\u2191" in acc and best.at["fipa", acc]


def test_health_flags_from_metrics_and_finals():
    s = synthetic()
    curves = pd.DataFrame([{**{k: r[k] for k in [*report.ID_COLUMNS, "role"]}, "round": rnd, "test_mse": v}
                           for _, r in s[s["task"] == "reg"].iterrows()
                           for rnd, v in ((0, 0.2), (5, r["final_test_mse"]))])
    flags = report.health_flags(s, curves)
    kinds = flags.groupby("kind")["aggregator"].apply(set).to_dict()
    assert kinds["diverged"] == {"fipa_rho1e-3"}
    assert kinds["worse_than_start"] == {"fedavg", "fipa_rho1e-3", "centralized", "fipa", "fipa_r2"}
    assert kinds["centralized_worse"] == {"centralized"}  # 5.0 against fedavg's 2.3 and FIPA's 0.2
    assert set(flags.loc[flags["kind"] == "unlearned", "task"]) == {"pde_b"}


def test_the_reference_is_read_from_the_role_not_the_name():
    """A reference run under another label is last, never best, and flagged when federated runs
    beat it; a federated run labelled "centralized" is an ordinary competitor."""
    s = synthetic()
    s = s[s["task"] == "reg"].assign(aggregator=lambda d: d["aggregator"].replace("centralized", "oracle"))
    flags = report.health_flags(s, pd.DataFrame())
    (ref,) = flags[flags["kind"] == "centralized_worse"].itertuples()
    assert ref.aggregator == "oracle" and ref.detail.startswith("the oracle reference (5)")
    text, best = report.pivot(s, flags)
    assert list(text.index)[-1] == "oracle" and best.loc["fipa"].all() and not best.loc["oracle"].any()
    # the reference with the lowest error is still not the best federated mean
    low = s.assign(final_test_mse=s["final_test_mse"].where(s["aggregator"] != "oracle", 0.01))
    final = report.final_table(low).set_index("aggregator")
    assert final.at["fipa", "best"] and not final.at["oracle", "best"]
    assert report.health_flags(low, pd.DataFrame()).query("kind == 'centralized_worse'").empty
    # the same runs with every role federated: "oracle" (0.01) is now the best mean
    fed = low.assign(role=report.FEDERATED)
    assert report.final_table(fed).set_index("aggregator").at["oracle", "best"]
    assert list(report.pivot(fed)[0].index)[-1] != "oracle"
    styled = report.styled_pivot(*report.pivot(s, flags), references=report.reference_names(s)).to_html()
    assert "font-style: italic" in styled


def _final_json(d: Path, task: str, agg: str, metric: str, **extra) -> Path:
    """A run directory with the final.json keys `fipa collect` reads."""
    d.mkdir(parents=True)
    (d / "final.json").write_text(json.dumps({
        "task": task, "partition": "p", "client_method": "local", "aggregator": agg, "seed": 0,
        "rounds_completed": 1, "diverged": False, "primary_metric": metric, "final": {metric: 0.5},
        "best": {metric: 0.5}, "uplink_bytes_total": 0, "wall_s": 1.0, "num_params": 3, **extra}))
    return d


def test_collect_copies_the_role_into_the_last_column(tmp_path):
    """``role`` comes after every other column (the metric columns of every task included), so a
    summary keeps its columns byte for byte; a run written before roles existed is federated."""
    _final_json(tmp_path / "a", "reg", "centralized", "test_mse", role=report.REFERENCE)
    _final_json(tmp_path / "b", "reg", "fedavg", "test_mse", role=report.FEDERATED)
    _final_json(tmp_path / "c", "vis", "fedavg", "test_acc")  # an older run directory: no role
    s = report.collect([tmp_path], tmp_path / "summary.csv")
    assert list(s.columns)[-1] == "role" and list(s.columns).index("final_test_acc") < len(s.columns) - 1
    assert dict(zip(s["aggregator"] + "/" + s["task"], s["role"], strict=True)) == {
        "centralized/reg": "reference", "fedavg/reg": "federated", "fedavg/vis": "federated"}
    assert pd.read_csv(tmp_path / "summary.csv").columns[-1] == "role"
    assert report.reference_names(s) == ["centralized"]
    assert report.reference_names(s.drop(columns="role")) == []  # a summary.csv from before roles
    _final_json(tmp_path / "bad" / "d", "reg", "fipa", "test_mse", role="oracle")
    with pytest.raises(ConfigError, match="role is 'oracle'"):
        report.collect([tmp_path / "bad"])


def test_each_claim_evaluates_itself_on_the_aggregators_it_names():
    """The claims table is a loop over claims; a claim compares the aggregators it carries."""
    s = synthetic()
    own = report.PairedClaim("rank", "rank 2 is as good as rank 10", ("regression",), subject="fipa_r2",
                             baseline="fipa", subject_text="rank 2")
    table = report.claims_table(s, claims=(own,))
    lr = np.log(np.array(FIPA) * 1.1 / np.array(FIPA))
    assert table["claim"].tolist() == [own.text]
    assert table.at[0, "ratio"] == pytest.approx(math.exp(lr.mean()))
    assert table.at[0, "estimate"].startswith("rank 2 / fipa error: ")
    assert report.claims_table(s).equals(pd.DataFrame(
        [r for c in report.CLAIMS for r in c.rows(s)], columns=report.claims_table(s).columns))


def test_median_seed_is_the_middle_run(tmp_path):
    from fipa.plots_pde import median_seed

    dirs = []
    for i, v in enumerate([0.3, 0.1, 0.2, 0.05]):
        d = tmp_path / f"s{i}"
        d.mkdir()
        (d / "final.json").write_text(json.dumps({"final": {"rel_l2": v}, "diverged": i == 3}))
        dirs.append(d)
    assert median_seed(dirs) == dirs[2]  # 0.1, [0.2], 0.3, diverged last: the lower middle of four
    assert median_seed([dirs[0], dirs[1], dirs[3]]) == dirs[0]  # 0.1, [0.3], diverged


# ----------------------------------------------------------------------------- palette and figures


def test_palette_is_fixed_and_distinguishes_fipa_variants():
    from matplotlib.colors import to_rgb

    names = ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "diag_fisher", "fipa", "fipa_rho1e-3",
             "fipa_fixed", "fipa_adaptive", "fipa_pinv"]
    cols = [palette.color(n) for n in names] + [palette.color("centralized", reference=True)]
    assert len(set(cols)) == len(names) + 1
    styles = {(palette.style(n).marker, palette.style(n).linestyle) for n in names if n.startswith("fipa")}
    assert len(styles) == 5  # no two FIPA variants share marker and dashes
    rgb = {n: np.array(to_rgb(palette.color(n))) for n in names}
    for a in ("fipa", "fipa_rho1e-3", "fipa_fixed"):
        for b in ("fipa", "fipa_rho1e-3", "fipa_fixed", "fedyogi"):
            if a != b:
                assert np.abs(rgb[a] - rgb[b]).sum() > 0.3, (a, b)
    assert palette.color("fipa_new_variant") == palette.color("fipa_new_variant")  # stable for new names
    assert palette.order(["fipa", "centralized", "fedyogi", "fedavg"], references={"centralized"}) == [
        "fedavg", "fedyogi", "fipa", "centralized"]


def test_the_reference_style_follows_the_role_not_the_name():
    """Any aggregator whose runs are the reference is drawn in the one reference style and
    ordered last; a federated run named "centralized" is an ordinary aggregator."""
    assert palette.style("oracle", reference=True) == palette.style("centralized", reference=True) == \
        palette.REFERENCE
    assert palette.style("centralized") != palette.REFERENCE
    assert palette.order(["oracle", "fipa", "fedavg"], references=["oracle"]) == ["fedavg", "fipa", "oracle"]
    assert palette.parse_gid(palette.gid("oracle", reference=True)) == ("oracle", True)
    assert palette.parse_gid(palette.gid("fipa")) == ("fipa", False) and palette.parse_gid("other") is None


def test_an_unknown_aggregator_gets_a_default_style_with_no_palette_edit():
    """A new built-in aggregator (a name the palette has never seen) is drawn, checked and
    ordered among the baselines: a stable pool style, not the reference's, not an error."""
    name = "fedmedian"
    assert name not in palette.STYLES
    st = palette.style(name)
    assert st == palette.style(name) and st != palette.REFERENCE and st.color.startswith("#")
    assert palette.order(["fipa", name, "fedavg"]) == ["fedavg", name, "fipa"]
    s = synthetic().query("task == 'reg' and aggregator in ['fedavg', 'fipa']").assign(wall_s=1.0)
    s = pd.concat([s, s[s["aggregator"] == "fedavg"].assign(aggregator=name)], ignore_index=True)
    fig = plots.final_figure(s, "test_mse", "t")
    assert draw.check_colors(fig) == [] and draw.figure_colors(fig)[name] == {st.color}


def _reg_curves(reg: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{**{k: r[k] for k in [*report.ID_COLUMNS, "role"]}, "round": rnd,
                          "test_mse": v * (2 - rnd / 5), "uplink_bytes_total": rnd * 100}
                         for _, r in reg.iterrows()
                         for rnd, v in ((0, r["final_test_mse"]), (5, r["final_test_mse"]))])


def test_every_figure_draws_each_aggregator_in_its_palette_colour():
    s = synthetic().assign(wall_s=1.0)
    reg = s[s["task"] == "reg"]
    refs = set(report.reference_names(reg))
    curves = _reg_curves(reg)
    figs = [plots.convergence_figure(curves, "test_mse", "t"), plots.final_figure(reg, "test_mse", "t"),
            plots.cost_figure(curves, reg, "test_mse", "t"), plots.forest_figure(s, ["fipa", "fipa_rho1e-3"])]
    sweep = [h for _, knob, h in report.sweeps(reg) if knob == "rank"][0]
    figs.append(plots.sweep_figure(sweep, "rank", reg[reg["aggregator"] == "fedavg"], "test_mse", "t"))
    for fig in figs:
        drawn = draw.figure_colors(fig)
        assert drawn and draw.check_colors(fig) == []
        assert all(cs == {palette.color(a, a in refs)} for a, cs in drawn.items())
    assert set(draw.figure_colors(figs[0])) == set(reg["aggregator"])
    assert draw.figure_colors(figs[0])["centralized"] == {palette.REFERENCE.color}
    # the reference communicates nothing: the cost figure's uplink panel leaves it out
    assert "centralized" not in {t.get_text() for t in figs[2].legends[0].get_texts()}
    # a figure that breaks the palette is caught
    ax = figs[1].axes[0]
    ax.plot([0, 1], [1, 2], color="#123456", gid="agg:fipa")
    assert draw.check_colors(figs[1]) and "fipa" in draw.check_colors(figs[1])[0]


def test_library_never_switches_the_matplotlib_backend():
    for path in (ROOT / "fipa").rglob("*.py"):
        text = path.read_text()
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, path


def test_check_executed_flags_stderr_and_empty_figures():
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    fig = new_code_cell("show()", metadata={"tags": ["figure"]})
    skipped = new_code_cell("skip()", metadata={"tags": ["figure"]},
                            outputs=[new_output("display_data", {"text/markdown": "*none*"},
                                                metadata={draw.SKIP_KEY: True})])
    noisy = new_code_cell("import deepxde",
                          outputs=[new_output("stream", name="stderr", text="Using backend")])
    problems = report.check_executed(nbformat.from_dict(new_notebook(cells=[fig, skipped, noisy])))
    assert len(problems) == 2
    assert "produced no image" in problems[0] and "stderr" in problems[1]


# ----------------------------------------------------------------------------- the executed report


def _sections(nb) -> list[tuple[str, list]]:
    """(section heading, outputs of the code cells up to the next heading)."""
    out, current = [], None
    for c in nb.cells:
        if c.cell_type == "markdown" and c.source.startswith("## "):
            current = (c.source.splitlines()[0], [])
            out.append(current)
        elif c.cell_type == "code" and current is not None:
            current[1].extend(c.get("outputs", []))
    return out


def _add_synthetic_runs(results: Path) -> None:
    """Next to the real .test runs: a FIPA variant that diverged in seed 1, and an ablation
    (results/ablations) sweeping FIPA's rank, made from copies of the real FIPA runs."""
    cell = results / "runs" / "regression_1d" / "domain4" / "local"
    for seed in (0, 1):
        src = cell / "fipa" / f"seed{seed}"
        abl = results / "ablations" / "runs"
        for name, rank, root in (("fipa_rho1e-3", 10, results / "runs"), ("fipa_r2", 2, abl),
                                 ("fipa_r10", 10, abl)):
            dst = root / "regression_1d" / "domain4" / "local" / name / f"seed{seed}"
            dst.mkdir(parents=True)
            shutil.copy(src / "metrics.csv", dst)
            final = json.loads((src / "final.json").read_text())
            final["aggregator"] = dst.parent.name
            final["config"]["aggregator"].update(rank=rank, rho=1e-3 if "rho" in name else 1e-4)
            if name == "fipa_rho1e-3" and seed == 1:
                final["diverged"], final["final"]["test_mse"] = True, float("nan")
            if rank == 2:
                final["final"]["test_mse"] *= 1.05
            (dst / "final.json").write_text(json.dumps(final))
    report.collect([results / "runs"], results / "summary.csv")
    report.collect([results / "ablations" / "runs"], results / "ablations" / "summary.csv")


def _table_rows(html: str) -> list[list[str]]:
    """The text of each <th>/<td> cell, row by row, of an HTML table (stdlib parser)."""
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    p = Rows()
    p.feed(html)
    return [r for r in p.rows if r]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The .test workflow up to its summary (one core), plus synthetic runs, then the report."""
    import nbformat

    work = tmp_path_factory.mktemp("report")
    shutil.copytree(ROOT / ".test" / "config", work / "config")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory",
                          str(work), "--cores", "1", "results/summary.csv"], env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    _add_synthetic_runs(work / "results")
    cwd = os.getcwd()
    os.chdir(work)  # run directories in summary.csv are relative to the workflow directory
    try:
        report.execute_report(ROOT / "notebooks" / "report.ipynb", "results/report.ipynb",
                              "results/report.html", "results")
    finally:
        os.chdir(cwd)
    return work, nbformat.read(work / "results" / "report.ipynb", as_version=4)


def test_every_section_has_output_and_nothing_on_stderr(executed):
    work, nb = executed
    assert report.check_executed(nb) == []
    sections = _sections(nb)
    assert len(sections) == 10
    for title, outputs in sections:
        assert outputs, f"{title} is empty"
        assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"], title
    html = (work / "results" / "report.html").read_text()
    assert "Claims and evidence" in html and "<img" in html
    assert "results_dir = " not in html  # parameter cells are not in the HTML
    assert "Using backend" not in html and "np.int64" not in html


def test_claims_table_has_a_computed_verdict_per_claim(executed):
    work, nb = executed
    (cell,) = [c for c in nb.cells if "claims" in c.get("metadata", {}).get("tags", [])]
    html = "".join(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))
    rows = _table_rows(html)
    header, body = rows[0], rows[1:]
    claims = pd.DataFrame(body, columns=header)
    assert len(claims) == len(report.CLAIMS)
    assert claims["claim of the paper"].tolist() == [c.text for c in report.CLAIMS]
    summary = report.attach_knobs(pd.read_csv(work / "results" / "summary.csv").assign(
        run_dir=lambda d: [str(work / p) for p in d["run_dir"]]))
    abl = report.attach_knobs(pd.read_csv(work / "results" / "ablations" / "summary.csv").assign(
        run_dir=lambda d: [str(work / p) for p in d["run_dir"]]))
    expected = report.claims_table(summary, abl)
    assert claims["verdict"].tolist() == expected["verdict"].tolist()
    verdicts = dict(zip([c.key for c in report.CLAIMS], claims["verdict"], strict=True))
    assert verdicts["pde"] == verdicts["vision"] == report.NOT_MEASURED  # no such runs in .test
    assert verdicts["low_rank"] in (report.SUPPORTED, report.INCONCLUSIVE)  # the ablation is read
    assert verdicts["communication"] == report.SUPPORTED


def test_report_shows_the_ablation_and_the_diverged_variant(executed):
    _, nb = executed
    sections = dict(_sections(nb))
    abl = next(v for k, v in sections.items() if "Ablations" in k)
    assert any("image/png" in o.get("data", {}) for o in abl)
    health = next(v for k, v in sections.items() if "Health" in k)
    text = json.dumps([o.get("data", {}) for o in health])
    assert "diverged" in text and "fipa_rho1e-3" in text
