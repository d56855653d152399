"""``report.md`` and its plots: what the search found and what each parameter did."""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from promptsearch.pipelines.data.writers import atomic_path, write_text
from promptsearch.search.driver import SearchResult, TrialRecord

log = logging.getLogger(__name__)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(result: SearchResult, run_dir: Path) -> list[str]:
    """PNG plots; returns the file names written. A plot that cannot be drawn is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    written = []
    _history_plot(result, run_dir / "optimization_history.png", plt)
    written.append("optimization_history.png")
    complete = sum(t.state == "complete" for t in result.trials)
    if complete >= MIN_TRIALS_FOR_IMPORTANCE:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=None, storage=result.study_storage)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental"
                axes = ovm.plot_param_importances(study)
            axes.set_title(f"Parameter importances ({complete} complete trials)")
            _save(axes.figure, run_dir / "param_importances.png")
            plt.close(axes.figure)
            written.append("param_importances.png")
        except Exception as exc:  # e.g. every complete trial has the same score
            log.info("skipped param_importances.png: %s", exc)
    for param, name in (("template", "score_by_template.png"), ("k", "score_by_k.png")):
        groups = _scores_by(result.trials, param)
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        labels = [str(v) for v in groups]
        ax.boxplot(list(groups.values()))
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20)
        ax.set_xlabel(param)
        ax.set_ylabel("validation score (running, all trials)")
        ax.set_title(f"Score by {param}")
        _save(fig, run_dir / name)
        plt.close(fig)
        written.append(name)
    return written


MIN_TRIALS_FOR_IMPORTANCE = 8
"""Below this many complete trials, parameter importances are noise: no plot is drawn."""


def history_points(trials: Sequence[TrialRecord]) -> dict[str, list[TrialRecord]]:
    """The trials the history plot draws, by how they ended: every trial that has a score."""
    ran = [t for t in trials if t.score is not None]
    return {"complete": [t for t in ran if t.state == "complete"],
            "pruned": [t for t in ran if t.state == "pruned"]}


def _history_plot(result: SearchResult, path: Path, plt: Any) -> None:
    """Every trial's score in suggestion order: complete trials filled, pruned ones hollow
    and labelled with the chunk they stopped at, the best so far as a step line, and the
    baseline's validation score as a dashed line. (Optuna's own plot draws complete trials
    only, which hides most of a halving search.)"""
    fig, ax = plt.subplots(figsize=(7, 4))
    points = history_points(result.trials)
    done, pruned = points["complete"], points["pruned"]
    ax.scatter([t.number for t in done], [t.score for t in done], color="tab:blue",
               label="complete", zorder=3)
    ax.scatter([t.number for t in pruned], [t.score for t in pruned], facecolors="none",
               edgecolors="tab:gray", label="pruned (chunks run)", zorder=3)
    for t in pruned:
        ax.annotate(str(len(t.chunk_scores)), (t.number, t.score), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color="tab:gray")
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = t.score if best is None else max(best, t.score)
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step([*xs, max(t.number for t in result.trials)], [*ys, ys[-1]], where="post",
                color="tab:red", label="best so far")
    if result.baseline.score is not None:
        ax.axhline(result.baseline.score, color="black", linestyle="--", linewidth=1,
                   label="baseline (trial 0)")
    ax.set_xlabel("trial (suggestion order)")
    ax.set_ylabel("validation score (running)")
    ax.set_title("Optimisation history: every trial")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    plt.close(fig)


def _scores_by(trials: Sequence[TrialRecord], param: str) -> dict[Any, list[float]]:
    groups: dict[Any, list[float]] = defaultdict(list)
    for t in trials:
        if t.score is not None:
            groups[t.params.get(param, 0 if param == "k" else None)].append(t.score)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_interval_plot(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    """``best_minus_baseline.png``: the difference on each split with its interval and the
    zero line, so that an interval across 0 is seen at a glance. [] when there is none."""
    intervals = {split: i for split, i in summary.get("best_minus_baseline", {}).items() if i}
    if not intervals:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.6 * len(intervals)))
    for y, i in enumerate(intervals.values()):
        color = "tab:blue" if i["separated"] else "tab:gray"
        ax.errorbar([i["difference"]], [y], xerr=[[i["difference"] - i["low"]],
                                                 [i["high"] - i["difference"]]],
                    fmt="o", color=color, capsize=4)
    ax.axvline(0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(intervals)),
                  [f"{split} (n={i['rows']})" for split, i in intervals.items()])
    ax.set_ylim(-0.6, len(intervals) - 0.4)
    confidence = next(iter(intervals.values()))["confidence"]
    ax.set_xlabel(f"best - baseline, {summary['metric']} ({confidence:.0%} paired bootstrap "
                  "interval)")
    _save(fig, run_dir / "best_minus_baseline.png")
    plt.close(fig)
    return ["best_minus_baseline.png"]


def confidence_lines(summary: dict[str, Any]) -> list[str]:
    """The report's "How sure is this" section: best - baseline with its interval per split,
    and, when validation cannot separate them, how many rows would."""
    intervals = summary.get("best_minus_baseline") or {}
    if not any(intervals.values()):
        return []
    lines = ["", "### How sure is this", "",
             f"Best - baseline on {summary['metric']}, paired bootstrap over the same rows "
             "(percentile interval, rows resampled together, seeded):", ""]
    for split in ("validation", "test"):
        i = intervals.get(split)
        if i is None:
            lines.append(f"- {split}: no references, no interval")
            continue
        verdict = "separated (the interval excludes 0)" if i["separated"] else \
            "**not separated** (the interval contains 0)"
        lines.append(f"- {split}: {i['difference']:+.2f}, {i['confidence']:.0%} interval "
                     f"[{i['low']:+.2f}, {i['high']:+.2f}] over {i['rows']} rows, "
                     f"{i['resamples']} resamples: {verdict}")
    validation = intervals.get("validation")
    if validation is not None and not validation["separated"]:
        lines += ["", not_separated_line(validation) + " " + ROWS_NEEDED_RULE]
    search = summary["baseline"].get("validation_search")
    if search is not None and summary["baseline"].get("validation") is not None \
            and abs(search - summary["baseline"]["validation"]) > 1e-9:
        lines += ["", f"The baseline's validation score above is over every validation row; "
                  f"in the search it stopped at {search:.2f} on the chunks it ran."]
    return lines


ROWS_NEEDED_RULE = ("(Rows needed: n x (w / |d|)^2, where n is the validation rows, w the "
                    "interval's half-width and d the observed difference: the half-width "
                    "shrinks as 1/sqrt(n), so at that size it would equal d; for a per-row "
                    "mean this is (1.96 sd / |d|)^2 with sd the rows' standard deviation of "
                    "differences. A rough guide, not a power calculation.)")


def not_separated_line(interval: dict[str, Any]) -> str:
    """One line (the report's and the run's last line) for a validation interval that
    contains 0."""
    needed = interval.get("rows_needed")
    rows = "—" if needed is None else f"about {needed}"
    return (f"The search could not separate best from baseline: on validation best - baseline "
            f"= {interval['difference']:+.2f}, {interval['confidence']:.0%} interval "
            f"[{interval['low']:+.2f}, {interval['high']:+.2f}] over {interval['rows']} rows "
            f"contains 0; validation rows needed for a difference this large: {rows}.")


def write_report(run_dir: Path, result: SearchResult, summary: dict[str, Any],
                 plots: Sequence[str]) -> None:
    metric = summary["metric"]
    lines = [f"# promptsearch: {summary['task']} on {summary['model']}", "",
             f"Primary metric: **{metric}** (x100). Data: {summary['data']}.", "",
             "## Baseline vs best", "",
             "| configuration | validation | test |", "|---|---|---|"]
    for name in ("baseline", "best"):
        scores = summary[name]
        lines.append(f"| {name} | {_fmt(scores.get('validation'))} | "
                     f"{_fmt(scores.get('test'))} |")
    if summary.get("gain_test") is not None:
        lines += ["", f"Gain on the held-out test split: **{summary['gain_test']:+.2f}**."]
    lines += confidence_lines(summary)
    if summary.get("judge"):
        from promptsearch.pipelines.judge.report import judge_report_lines

        lines += judge_report_lines(summary["judge"])
    best = yaml.safe_dump(result.best_config.to_dict(), allow_unicode=True, sort_keys=False)
    lines += ["", "Best configuration (`best.yaml`):", "", "```yaml", best.rstrip(), "```", "",
              "## Top trials", "", "| # | state | score | chunk scores | params |",
              "|---|---|---|---|---|"]
    ranked = sorted((t for t in result.trials if t.score is not None),
                    key=lambda t: (t.state != "complete", -(t.score or 0)))
    for t in ranked[:10]:
        chunks = ", ".join(f"{s:.1f}" for s in t.chunk_scores)
        params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        lines.append(f"| {t.number} | {t.state} | {_fmt(t.score)} | {chunks} | {params} |")
    lines += ["", "## What each parameter did", "",
              "Mean running validation score of the trials that took each value "
              "(pruned trials included at the score they were stopped with).", ""]
    for param in sorted({k for t in result.trials for k in t.params}):
        groups = _scores_by(result.trials, param)
        cells = ", ".join(f"{'n/a' if v is None else v}: {sum(s) / len(s):.2f} (n={len(s)})"
                          for v, s in groups.items())
        lines.append(f"- **{param}**: {cells}")
    trials = summary["trials"]
    repeats = trials.get("duplicate", 0)
    lines += ["", "## Cost", "",
              f"{trials['run']} trials ({trials['complete']} complete, {trials['pruned']} pruned "
              f"early, {trials['error']} failed; {repeats} repeated suggestions not run); "
              f"{summary['generations']} generations, "
              f"{summary['cache']['hits']} cache hits; wall time {summary['wall_seconds']:.0f} s.",
              ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if "param_importances.png" not in plots:
        lines += [f"Parameter importances are not drawn: {trials['complete']} complete trials, "
                  f"fewer than the {MIN_TRIALS_FOR_IMPORTANCE} that make them more than noise.",
                  ""]
    lines += ["Open the Optuna study with `optuna-dashboard sqlite:///optuna.db` (from this "
              "directory); the Tune experiment is in `tune/search`.", ""]
    write_text(run_dir / "report.md", "\n".join(lines))
