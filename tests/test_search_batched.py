"""The batched search on the real engine: rungs reach the engines together, repeats are not
run, and the Optuna study says what trials.parquet says."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from promptsearch.pipelines.engine.models import CACHE_ENV, cache_dir
from tests.conftest import run_cli

pytestmark = pytest.mark.engine

# 12 rows in 4 chunks of 3; one bracket of 9 trials runs its first rung together.
ARGS = ["run", "--task", "qa", "--trials", "9", "--chunks", "4", "--max-validation", "12",
        "--max-test", "4", "--seed", "1", "--max-model-len", "2048"]


def _empty_cache(directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True)
    (directory / "models").symlink_to(cache_dir() / "models")
    return {CACHE_ENV: str(directory)}


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("batched")
    result = run_cli(*ARGS, "--out", str(base / "run"), env=_empty_cache(base / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "run"


def test_a_rung_reaches_the_engines_as_one_batch(batched_run: Path) -> None:
    summary = json.loads((batched_run / "summary.json").read_text())
    use = summary["search_engines"]
    rows_per_chunk = 3
    # One trial alone never has more than its chunk in flight; the rung of 9 trials does.
    assert max(use["peak_in_flight"]) > 2 * rows_per_chunk, use
    assert sum(use["requests"]) == summary["cache"]["misses"] - \
        summary["final_run"]["generated"]
    assert all(0 < f <= 1 for f in use["busy_fraction"]), use


def test_the_final_run_was_generated_during_the_search(batched_run: Path) -> None:
    """The best configuration's test rows went with its last chunk, and the baseline's with
    the first last chunk: the final run generated nothing of its own."""
    summary = json.loads((batched_run / "summary.json").read_text())
    rows = pq.read_table(batched_run / "trials.parquet").to_pylist()
    searched = sum(r["generations"] - r["cached"] for r in rows)
    assert summary["final_run"] == {"rows": 2 * (12 + 4), "generated": 0}
    # Beyond its trials' chunks the search generated the early final work: the test rows
    # of the best (and of any survivor that could have been best), the baseline's validation
    # rows its trial did not run, and the baseline's test rows.
    early = summary["cache"]["misses"] - searched
    baseline_ran = 3 * len(rows[0]["chunk_scores"])
    assert early >= (12 - baseline_ran) + 4, (early, summary["cache"])


def test_the_study_says_what_trials_parquet_says(batched_run: Path) -> None:
    import optuna

    from promptsearch.search.driver import TrialRecord
    from promptsearch.search.report import history_points

    rows = pq.read_table(batched_run / "trials.parquet").to_pylist()
    study = optuna.load_study(study_name="promptsearch-qa",
                              storage=f"sqlite:///{batched_run / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [r["number"] for r in rows]
    expected = {"complete": "COMPLETE", "pruned": "PRUNED", "error": "FAIL", "duplicate": "FAIL"}
    for row, trial in zip(rows, trials, strict=True):
        assert trial.state.name == expected[row["state"]], (row, trial)
        if row["state"] in ("complete", "pruned"):
            assert trial.value == pytest.approx(row["score"])
            assert len(trial.intermediate_values) == len(row["chunk_scores"])
            assert trial.intermediate_values[len(row["chunk_scores"])] == \
                pytest.approx(row["score"])
        if row["state"] == "duplicate":
            assert trial.user_attrs["duplicate_of"] == row["duplicate_of"]
    states = [r["state"] for r in rows]
    assert "pruned" in states and "complete" in states
    # Halving: 9 trials run chunk 1, the best 3 go to chunk 3, the best of those to 4.
    ran = sorted(len(r["chunk_scores"]) for r in rows if r["state"] != "duplicate")
    assert ran == [1, 1, 1, 1, 1, 1, 3, 3, 4]
    # The history plot draws one point per trial that ran.
    records = [TrialRecord(**r) for r in rows]
    points = history_points(records)
    assert sum(len(v) for v in points.values()) == 9
    assert (batched_run / "optimization_history.png").stat().st_size > 0
    assert not (batched_run / "param_importances.png").exists()  # 1 complete trial: noise
    assert "Parameter importances are not drawn" in (batched_run / "report.md").read_text()


def test_repeated_suggestions_are_recorded_not_run(tmp_path: Path) -> None:
    # Three configurations in all (max_tokens 4, 8 or 16); ask for three. Random start-up
    # suggestions repeat them; each repeat is recorded, and only three are generated.
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "templates": ["jglue-extract"], "fewshot": {"k": [0]},
        "sampling": {"temperature": [0.0], "max_tokens": [32, 8, 16],
                     "stop": {"newline": ["\n"]}},
        "parse": {"extract": ["strip_prefix", "first_line", "until_period"]}}))
    env = _empty_cache(tmp_path / "cache")
    result = run_cli("run", "--task", "qa", "--space", str(space), "--trials", "3",
                     "--chunks", "1", "--max-validation", "4", "--max-test", "2", "--seed", "2",
                     "--max-model-len", "2048", "--out", str(tmp_path / "run"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pq.read_table(tmp_path / "run" / "trials.parquet").to_pylist()
    ran = [r for r in rows if r["state"] != "duplicate"]
    repeats = [r for r in rows if r["state"] == "duplicate"]
    assert len(ran) == 3
    assert len({json.dumps(r["config"], sort_keys=True) for r in ran}) == 3
    assert repeats, "seed 2 repeats a configuration; pick a seed that does"
    for r in repeats:
        original = next(o for o in rows if o["number"] == r["duplicate_of"])
        assert original["config"] == r["config"] and original["state"] != "duplicate"
        assert r["generations"] == 0 and r["score"] is None
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trials"]["run"] == 3
    assert summary["trials"]["duplicate"] == len(repeats)
    # 3 configurations x 4 validation rows, nothing twice (the final validation run is cached)
    search_generated = sum(r["generations"] - r["cached"] for r in ran)
    assert search_generated == 12


def test_more_chunks_than_validation_rows(tmp_path: Path) -> None:
    """--chunks 8 over 3 validation rows: three chunks of one row; a trial that scored all
    three is complete (not counted as pruned) and is the best."""
    result = run_cli("run", "--task", "qa", "--trials", "2", "--chunks", "8",
                     "--max-validation", "3", "--max-test", "2", "--max-model-len", "2048",
                     "--out", str(tmp_path / "run"), env=_empty_cache(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = pq.read_table(tmp_path / "run" / "trials.parquet").to_pylist()
    complete = [r for r in rows if r["state"] == "complete"]
    assert complete and all(len(r["chunk_scores"]) == 3 for r in complete)
    assert summary["trials"]["complete"] == len(complete)
    assert summary["best"]["trial"] in {r["number"] for r in complete}
