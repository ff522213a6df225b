"""The paper's claims, each with its own evaluation on the runs; the claims table is a loop.

A claim names the aggregators it compares (grid names, data on the claim) and evaluates
itself to a row: evidence in this run, estimate with its 95% t interval over seeds, n seeds
and a verdict (fipa.report.stats). A new claim is one more entry of CLAIMS.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import pandas as pd

from fipa.report.ablations import TUNED_FEDAVG
from fipa.report.health import THRESHOLDS, learned
from fipa.report.runs import CELL, KNOBS
from fipa.report.stats import (
    INCONCLUSIVE,
    METRIC_LABELS,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    Interval,
    comparison_table,
    direction_of,
    format_ratio,
    paired_effects,
    pooled_interval,
    seeds_needed,
    verdict_of,
)

# "low rank is enough": the low rank's error at most this factor above the highest rank's
RANK_MARGIN = 1.25
# "communication is cheap": measured uplink at most this factor above the formula's count
UPLINK_TOLERANCE = 1.05
CLAIM_COLUMNS = ["claim", "evidence", "estimate", "n", "verdict", "ratio", "ratio_lo", "ratio_hi"]


def _ratio_fields(iv: Interval) -> dict:
    """exp of an interval of a log-ratio: the (geometric mean) ratio and its bounds."""
    return {"ratio": math.exp(iv.mean), "ratio_lo": math.exp(iv.lo) if iv.n > 1 else math.nan,
            "ratio_hi": math.exp(iv.hi) if iv.n > 1 else math.nan}


def _ratio_text(iv: Interval) -> str:
    return format_ratio(**dict(zip(("ratio", "lo", "hi"), _ratio_fields(iv).values(), strict=True)))


def _unmeasured(evidence: str, estimate: str = "", verdict: str = NOT_MEASURED) -> dict:
    return {"evidence": evidence, "estimate": estimate, "n": 0, "verdict": verdict}


@dataclass(frozen=True)
class Claim(ABC):
    """One claim of the paper: ``key`` (a stable handle), ``text`` (as the table shows it)."""

    key: str
    text: str

    @abstractmethod
    def evaluate(self, summary: pd.DataFrame, ablations: pd.DataFrame | None = None) -> dict:
        """evidence, estimate, n and verdict (ratio, ratio_lo, ratio_hi where the estimate is a
        ratio) from ``summary`` (with attach_knobs) and the ablation runs."""

    def rows(self, summary: pd.DataFrame, ablations: pd.DataFrame | None = None) -> list[dict]:
        """This claim's rows of the claims table: one, with the claim's text."""
        return [{"claim": self.text, **self.evaluate(summary, ablations)}]


@dataclass(frozen=True)
class PairedClaim(Claim):
    """``subject`` reaches a lower error than ``baseline``: the per-seed log-ratio of their
    errors, pooled over the cells (geometric mean per seed), must lie below 0.

    ``families``: task families whose runs are evidence (empty: all); ``local_only``: the plain
    client method only (False: every other method); ``per_task``: also one row per task, after
    the pooled row; ``subject_text``: how the evidence names the subject. Problems that no
    method learns (fipa.report.health.learned) are left out and named."""

    families: tuple[str, ...] = ()
    local_only: bool = True
    subject: str = "fipa"
    baseline: str = "fedavg"
    per_task: bool = False
    subject_text: str = "FIPA"

    def runs(self, summary: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
        """The runs that are evidence for this claim (of one task, when given)."""
        rows = summary if task is None else summary[summary["task"] == task]
        if self.families:
            rows = rows[rows["task_family"].isin(self.families)]
        is_local = rows["client_method"] == "local"
        return rows[is_local] if self.local_only else rows[~is_local & ~rows["client_method"].str.startswith(
            "warmup")]

    def evaluate(self, summary: pd.DataFrame, ablations: pd.DataFrame | None = None,
                 task: str | None = None) -> dict:
        rows = self.runs(summary, task)
        effects = paired_effects(rows, self.subject, self.baseline)
        if effects.empty:
            what = (f"{' or '.join(self.families)} runs" if self.families else "runs") + \
                (" with client methods other than local" if not self.local_only else "")
            return _unmeasured(f"no {what} pairing {self.subject_text} with {self.baseline}")
        ok = learned(rows)
        unlearned = [f"{t}/{p}" for (t, p), v in ok.items() if not v]
        used = effects[effects.apply(lambda r: ok.get((r["task"], r["partition"]), True), axis=1)]
        iv, _ = pooled_interval(used)
        kept = rows[rows.apply(lambda r: ok.get((r["task"], r["partition"]), True), axis=1)]
        evidence = self._evidence(used, comparison_table(kept, self.subject, self.baseline), unlearned)
        if used.empty or iv.n == 0:
            return _unmeasured(evidence, "no learned problem to compare" if unlearned else "",
                               INCONCLUSIVE if unlearned else NOT_MEASURED)
        verdict = verdict_of(iv, a_diverged=int(used["diverged_a"].sum()))
        if verdict == INCONCLUSIVE:
            need = seeds_needed(iv)
            evidence += (f"; sd of the per-seed log-ratio {iv.sd:.3g}: at this effect about {need} seeds "
                         "would decide it" if need else "; no effect measured that more seeds would resolve")
        return {"evidence": evidence, "estimate": f"{self.subject_text} / {self.baseline} error: "
                + _ratio_text(iv), "n": iv.n, "verdict": verdict, **_ratio_fields(iv)}

    def _evidence(self, used: pd.DataFrame, per_cell: pd.DataFrame, unlearned: list[str]) -> str:
        """The evidence sentence: tasks, metrics, client methods, the per-cell verdicts, the
        problems left out and the subject's divergences."""
        name = self.subject_text
        metrics = sorted(set(used["metric"]))
        evidence = (f"{', '.join(sorted(set(used['task'])))}; "
                    f"{', '.join(METRIC_LABELS.get(m, m) for m in metrics)}"
                    + (" (as error 1 - acc)" if any(direction_of(m) == "max" for m in metrics) else ""))
        if not self.local_only:
            evidence += f"; client methods {', '.join(sorted(set(used['client_method'])))}"
        cells = used.groupby(CELL, sort=False).ngroups
        if cells > 1:
            tally = per_cell["verdict"].value_counts() if not per_cell.empty else pd.Series(dtype=int)
            evidence += (f"; geometric mean over {cells} cells, paired by seed; per cell: "
                         f"{int(tally.get(SUPPORTED, 0))} {name} lower, {int(tally.get(NOT_SUPPORTED, 0))} "
                         f"{name} higher, {int(tally.get(INCONCLUSIVE, 0))} inconclusive")
        if unlearned:
            bar = ", ".join(f"{k} <= {v:g}" for k, v in THRESHOLDS.items())
            evidence += f"; left out (no method reaches {bar}): {', '.join(unlearned)}"
        ndiv = int(used["diverged_a"].sum())
        if ndiv:
            evidence += f"; {name} diverged in {ndiv} run(s)"
        return evidence

    def rows(self, summary: pd.DataFrame, ablations: pd.DataFrame | None = None) -> list[dict]:
        """The pooled row, then (``per_task``, more than one task measured) one row per task."""
        first = {"claim": self.text, **self.evaluate(summary, ablations)}
        if not self.per_task or first["verdict"] == NOT_MEASURED:
            return [first]
        tasks = paired_effects(self.runs(summary), self.subject, self.baseline)["task"].unique()
        return [first] + [{"claim": f"... on {task}", **self.evaluate(summary, ablations, task)}
                          for task in tasks if len(tasks) > 1]


def sweeps(summary: pd.DataFrame, kind: str = "fipa") -> list[tuple[tuple, str, pd.DataFrame]]:
    """Knob sweeps among the runs of aggregator kind ``kind`` (needs attach_knobs): for each
    (task, partition, client method) and knob, the runs that agree on every other knob while
    the knob takes two values or more. A list of ((task, partition, method), knob, runs)."""
    if "agg_kind" not in summary:
        return []
    runs = summary[summary["agg_kind"] == kind]
    found = []
    for cell, g in runs.groupby(CELL, sort=False):
        for knob in KNOBS:
            others = [k for k in KNOBS if k != knob]
            key = g[others].apply(lambda r: "|".join(map(str, r)), axis=1)
            for _, h in g.groupby(key, sort=False):
                if h[knob].map(str).nunique() >= 2:
                    found.append((cell, knob, h))
    return found


@dataclass(frozen=True)
class LowRankClaim(Claim):
    """A low rank is enough: over runs of ``subject`` that differ only in the rank (the main
    grid's and the ablation's), the error at the configured rank (the subject's own entry; the
    lowest swept rank without one) is at most ``margin`` times the highest rank's. ``subject``
    is both the grid name of that entry and the registered aggregator kind of the sweep."""

    subject: str = "fipa"
    margin: float = RANK_MARGIN
    subject_text: str = "FIPA"

    def _default_rank(self, summary: pd.DataFrame) -> float | None:
        """The rank the configuration's own ``subject`` entry runs (the rank one would use)."""
        if "rank" not in summary:
            return None
        used = summary.loc[summary["aggregator"] == self.subject, "rank"].dropna()
        return float(pd.Series(used).astype(float).mode().iloc[0]) if len(used) else None

    def evaluate(self, summary: pd.DataFrame, ablations: pd.DataFrame | None = None) -> dict:
        both = summary if ablations is None or ablations.empty else pd.concat([summary, ablations])
        found = [h for _, knob, h in sweeps(both, self.subject) if knob == "rank"]
        if not found:
            return _unmeasured(f"no runs that differ only in the {self.subject_text} rank")
        default_rank = self._default_rank(both)
        effects = []
        for h in found:
            h = h.assign(rank=h["rank"].astype(float))
            hi_r = h["rank"].max()
            lo_r = default_rank if default_rank in set(h["rank"]) and default_rank < hi_r else h["rank"].min()
            pair = pd.concat([h[h["rank"] == lo_r].assign(aggregator="low"),
                              h[h["rank"] == hi_r].assign(aggregator="high")])
            effects.append(paired_effects(pair, "low", "high").assign(ranks=f"{lo_r:g} vs {hi_r:g}"))
        eff = pd.concat(effects, ignore_index=True)
        iv, _ = pooled_interval(eff)
        evidence = (f"{', '.join(sorted(set(eff['task'])))}; rank {', '.join(sorted(set(eff['ranks'])))}; "
                    f"margin {self.margin:g}x")
        if iv.n == 0:
            return _unmeasured(evidence)
        verdict = verdict_of(iv, margin=math.log(self.margin), a_diverged=int(eff["diverged_a"].sum()))
        return {"evidence": evidence, "estimate": "low / high rank error: " + _ratio_text(iv), "n": iv.n,
                "verdict": verdict, **_ratio_fields(iv)}


def communication(summary: pd.DataFrame, subject: str, baseline: str) -> pd.DataFrame:
    """Per task x partition (plain client method): ``subject``'s uplink bytes over ``baseline``'s,
    median over seeds, against the count 1 + r (P + 1) / P of P + r (P + 1) numbers (needs
    attach_knobs for the subject's rank r)."""
    rows = []
    local = summary[summary["client_method"] == "local"]
    for (task, part), g in local.groupby(["task", "partition"], sort=False):
        f, a = g[g["aggregator"] == subject], g[g["aggregator"] == baseline]
        pairs = f.merge(a, on="seed", suffixes=("_f", "_a"))
        pairs = pairs[pairs["uplink_bytes_total_a"] > 0]
        if pairs.empty:
            continue
        r, p = float(pairs["rank_f"].iloc[0]), float(pairs["num_params_f"].iloc[0])
        ratio = pairs["uplink_bytes_total_f"] / pairs["uplink_bytes_total_a"]
        rows.append({"task": task, "partition": part, "P": int(p), "rank": int(r),
                     "measured": float(ratio.median()), "formula": 1 + r * (p + 1) / p, "dense": 1 + p,
                     "n": len(pairs)})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class CommunicationClaim(Claim):
    """Low-rank curvature keeps communication cheap: in every task, ``subject``'s measured
    uplink over ``baseline``'s is at most ``tolerance`` times the count 1 + r (P + 1) / P."""

    subject: str = "fipa"
    baseline: str = "fedavg"
    subject_text: str = "FIPA"
    baseline_text: str = "FedAvg"
    tolerance: float = UPLINK_TOLERANCE

    def evaluate(self, summary: pd.DataFrame, ablations: pd.DataFrame | None = None) -> dict:
        c = communication(summary, self.subject, self.baseline)
        if c.empty:
            return _unmeasured(f"no {self.subject_text} and {self.baseline_text} runs with uplink records")
        verdict = SUPPORTED if (c["measured"] / c["formula"] <= self.tolerance).all() else NOT_SUPPORTED
        est = "; ".join(f"{r.task}: {r.measured:.3g}x {self.baseline_text}'s bytes (formula {r.formula:.3g}x "
                        f"at r = {r.rank}, P = {r.P:,}; a dense Fisher would be {r.dense:,.0f}x)"
                        for r in c.itertuples())
        return {"evidence": f"measured uplink bytes of every run, {len(c)} task(s)", "estimate": est,
                "n": int(c["n"].min()), "verdict": verdict}


CLAIMS: tuple[Claim, ...] = (
    PairedClaim("regression", "FIPA reaches a lower error than FedAvg on nonlinear function regression",
                ("regression",)),
    PairedClaim("pde", "FIPA reaches a lower error than FedAvg on PDE learning with PINNs", ("pde",)),
    PairedClaim("vision", "FIPA reaches a higher accuracy than FedAvg on image classification (as a "
                "refinement after an averaging warm-up)", ("vision",), per_task=True),
    PairedClaim("vision_tuned", "... and than averaging at its best: FedAvg with a tuned server step "
                f"(`{TUNED_FEDAVG}`)", ("vision",), baseline=TUNED_FEDAVG, per_task=True),
    PairedClaim("client_methods", "FIPA combines with client-side methods (FedProx, SCAFFOLD, FedDyn, "
                "FedSAM, FedRCL): it still beats FedAvg under each of them", (), local_only=False),
    LowRankClaim("low_rank", f"A low rank is enough: the lowest rank's error is at most {RANK_MARGIN:g}x "
                 "the highest rank's"),
    CommunicationClaim("communication", "Low-rank curvature keeps communication cheap: a client uploads "
                       "P + r(P + 1) numbers (FedAvg: P), never a P x P matrix"),
)


def claims_table(summary: pd.DataFrame, ablations: pd.DataFrame | None = None,
                 claims: tuple[Claim, ...] = CLAIMS) -> pd.DataFrame:
    """One row per claim of the paper (and per task where a claim asks): evidence here, estimate
    with its 95% interval, n seeds and the verdict, each computed by the claim itself from
    ``summary`` (with attach_knobs for rank and communication) and the ``ablations`` runs."""
    rows = [row for claim in claims for row in claim.rows(summary, ablations)]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


VERDICT_CSS = {SUPPORTED: "background-color: #d9f0d3", NOT_SUPPORTED: "background-color: #f4cccc",
               INCONCLUSIVE: "background-color: #eeeeee", NOT_MEASURED: "color: #777777"}


def claims_html(claims: pd.DataFrame) -> str:
    """The claims table as HTML: verdicts shaded (green supported, red not supported, grey
    inconclusive or not measured), long text left-aligned."""
    t = claims.drop(columns=["ratio", "ratio_lo", "ratio_hi"], errors="ignore")
    t = t.rename(columns={"claim": "claim of the paper", "evidence": "evidence in this run",
                          "estimate": "estimate [95% t interval over seeds]", "n": "n seeds"})
    return (t.style.map(lambda v: VERDICT_CSS.get(v, ""), subset=["verdict"])
            .set_properties(**{"text-align": "left", "vertical-align": "top"})
            .hide(axis="index").to_html())
