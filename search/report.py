"""``report.md`` and its plots: what the search found and what each parameter did."""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from promptsearch.pipelines.writers import atomic_path, write_text
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
