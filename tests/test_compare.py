"""How sure a comparison is (``pipelines/metrics/stats.py``) and ``promptsearch compare``: the metric
with its interval from saved outputs, the blind sheet for people and its ratings read back.

No engine: the runs compared are small run directories built here the way ``promptsearch
run`` leaves them (summary.json, predictions/ and predictions/baseline/). The run's own
summary.json and final line are checked end to end in tests/test_search.py."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from promptsearch.pipelines.metrics.stats import (
    metric_difference,
    paired_bootstrap,
    paired_bootstrap_statistic,
    win_tie_loss,
)
from tests.conftest import run_cli

# --- the statistics ---------------------------------------------------------------------


def test_paired_bootstrap_matches_the_normal_theory_of_a_known_case() -> None:
    # Differences: 50 rows +1, 50 rows 0. Mean 0.5, SD of the mean sqrt(0.25 / 100) = 0.05,
    # so the 95 % interval is about 0.5 +- 1.96 * 0.05 = [0.402, 0.598].
    first, second = [1.0] * 50 + [0.0] * 50, [0.0] * 100
    interval = paired_bootstrap(first, second, seed=3)
    assert interval.difference == pytest.approx(0.5)
    assert interval.low == pytest.approx(0.402, abs=0.015)
    assert interval.high == pytest.approx(0.598, abs=0.015)
    assert interval.separated and interval.rows == 100 and interval.resamples == 2000
    # Rows needed: n (w / d)^2 ~ (1.96 sd / d)^2 with the rows' SD of differences.
    sd = float(np.std(np.array(first) - np.array(second), ddof=1))
    assert interval.rows_needed == pytest.approx((1.96 * sd / 0.5) ** 2, rel=0.1)


def test_paired_bootstrap_pairs_rows_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(50, 20, 40)  # rows differ a lot, the pairs hardly
    better = base + 1 + rng.normal(0, 0.5, 40)
    paired = paired_bootstrap(better, base, seed=1)
    assert paired.separated and paired.low > 0.5  # unpaired, the row spread would hide it
    assert paired_bootstrap(better, base, seed=1) == paired
    assert paired_bootstrap(better, base, seed=2) != paired
    assert paired_bootstrap(base, better, seed=1).difference == pytest.approx(-paired.difference)


def test_identical_sides_cannot_be_separated_and_need_no_rows_estimate() -> None:
    same = paired_bootstrap([3.0, 1.0, 4.0], [3.0, 1.0, 4.0])
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert not same.separated and same.rows_needed is None
    constant = paired_bootstrap([2.0] * 5, [1.0] * 5)
    assert (constant.low, constant.high) == (1.0, 1.0) and constant.separated
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one row"):
        paired_bootstrap([], [])


def test_metric_difference_recomputes_a_ratio_metric_on_each_resample() -> None:
    # Instruction-level accuracy is passed / all instructions, not a mean over rows.
    def aggregate(rows: list[dict]) -> dict[str, float]:
        return {"acc": sum(r["passed"] for r in rows) / sum(r["count"] for r in rows)}

    rng = np.random.default_rng(5)
    counts = rng.integers(1, 5, 30)
    first = [{"passed": int(rng.integers(0, c + 1)), "count": int(c)} for c in counts]
    second = [{"passed": int(rng.integers(0, c + 1)), "count": int(c)} for c in counts]
    interval = metric_difference(first, second, metric="acc", aggregate=aggregate, seed=4)
    assert interval.difference == pytest.approx(aggregate(first)["acc"] - aggregate(second)["acc"])
    by_hand = paired_bootstrap_statistic(
        30, lambda idx: aggregate([first[i] for i in idx])["acc"]
        - aggregate([second[i] for i in idx])["acc"], seed=4)
    assert interval == by_hand
    # A per-row mean takes numpy's path and gives the plain paired bootstrap.
    mean_rows = [[{"m": float(v)} for v in rng.normal(0, 1, 30)] for _ in range(2)]

    def mean(rows: list[dict]) -> dict[str, float]:
        return {"m": sum(r["m"] for r in rows) / len(rows)}

    fast = metric_difference(*mean_rows, metric="m", aggregate=mean, seed=4)
    assert fast == paired_bootstrap([r["m"] for r in mean_rows[0]],
                                    [r["m"] for r in mean_rows[1]], seed=4)


def test_win_tie_loss_counts_and_interval() -> None:
    table = win_tie_loss(["win"] * 30 + ["tie"] * 10 + ["loss"] * 10, seed=0)
    assert (table.wins, table.ties, table.losses, table.rows) == (30, 10, 10, 50)
    assert table.interval.difference == pytest.approx(0.4)
    # Per-row +1/0/-1: SD ~ 0.8, so the half-width is about 1.96 * 0.8 / sqrt(50) ~ 0.22.
    half = (table.interval.high - table.interval.low) / 2
    assert half == pytest.approx(1.96 * np.std([1] * 30 + [0] * 10 + [-1] * 10) / math.sqrt(50),
                                 rel=0.15)
    assert table.interval.separated and "first is better" in table.table("first", "second")
    close = win_tie_loss(["win", "loss", "tie", "win"], seed=0)
    assert not close.interval.separated and "cannot tell" in close.table()
    assert win_tie_loss(["loss"] * 4).interval.high == -1.0
    with pytest.raises(ValueError, match="outcomes must be one of"):
        win_tie_loss(["win", "A"])  # type: ignore[list-item]


# --- promptsearch compare ----------------------------------------------------------------

CONTEXT = "富士山は日本で一番高い山で、標高は3776メートルである。"


def _rows(outputs: list[str]) -> list[dict]:
    return [{"id": f"q{i:02d}", "context": f"{CONTEXT} ({i})", "question": "一番高い山は?",
             "answers": ["富士山"], "output": out} for i, out in enumerate(outputs)]


def _fake_run(path: Path, best: list[str], baseline: list[str]) -> Path:
    """A finished qa run as ``promptsearch run`` leaves one, with only what compare reads."""
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"task": "qa", "metric": "char_f1"}))
    (path / "best.yaml").write_text("template: jsquad-extract\n")
    for folder, outputs in ((path / "predictions", best),
                            (path / "predictions" / "baseline", baseline)):
        folder.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r, ensure_ascii=False) for r in _rows(outputs)]
        (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return path


N = 12
GOOD = ["富士山"] * N
POOR = ["富士山"] * 3 + ["山"] * (N - 3)


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    return (_fake_run(tmp_path / "run-alpha", GOOD, POOR),
            _fake_run(tmp_path / "run-beta", POOR, POOR))


def test_compare_two_runs_rescores_the_saved_outputs(runs: tuple[Path, Path]) -> None:
    result = run_cli("compare", str(runs[0]), str(runs[1]))
    assert result.returncode == 0, result.stderr
    # char F1 of 富士山 vs 山 is 2*(1/1)(1/3)/(4/3) = 50: 9 rows differ by 50 -> mean 37.5.
    assert "on test char_f1: +37.50, 95% interval [+" in result.stdout
    assert ": separated" in result.stdout
    one = run_cli("compare", str(runs[0]))  # a run alone: its best against its baseline
    assert one.returncode == 0 and "(best) - " in one.stdout and "(baseline)" in one.stdout
    same = run_cli("compare", str(runs[1]))
    assert "+0.00" in same.stdout and "cannot separate them" in same.stdout


def _fill(sheet_csv: Path, key: dict, out: Path, verdict_for: dict[str, str]) -> None:
    """A rater's work: the rating column filled so that each row's named system wins."""
    text = sheet_csv.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        wanted = verdict_for[row["id"]]
        row["rating"] = "tie" if wanted == "tie" else (
            "A" if key["shown_as_a"][row["id"]] == wanted else "b")  # case is free
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    out.write_text(buffer.getvalue(), encoding="utf-8")


def test_blind_sheet_round_trip(runs: tuple[Path, Path], tmp_path: Path) -> None:
    sheet = tmp_path / "sheet"
    result = run_cli("compare", str(runs[0]), str(runs[1]), "--sheet", str(sheet),
                     "--seed", "7")
    assert result.returncode == 0, result.stderr
    key = json.loads((sheet / "key.json").read_text())
    page = (sheet / "sheet.html").read_text(encoding="utf-8")
    table = (sheet / "sheet.csv").read_text(encoding="utf-8-sig")

    # Blind: nothing in the page or the CSV names a run, a path, a configuration or a side.
    for secret in (*(str(r) for r in runs), *(r.name for r in runs), "alpha", "beta",
                   "best", "baseline", "jsquad-extract", "first", "second", "seed"):
        assert secret not in table and secret not in page, secret
    # Self-contained: no external stylesheet, script, image or link.
    assert "://" not in page and "<link" not in page and " src=" not in page
    # Sides shuffled per row by the seed: both systems appear as A, and the CSV shows on
    # each row the answers the key says.
    assert set(key["shown_as_a"].values()) == {"first", "second"}
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [r["id"] for r in rows] == list(key["shown_as_a"]) and len(rows) == N
    for row, good, poor in zip(rows, GOOD, POOR, strict=True):
        first_answer = row["answer_A"] if key["shown_as_a"][row["id"]] == "first" else \
            row["answer_B"]
        assert first_answer == good and {row["answer_A"], row["answer_B"]} == {good, poor}
        assert row["answer_A"] in page and row["input"].split(" ")[0][:10] in page
    again = tmp_path / "again"
    assert run_cli("compare", str(runs[0]), str(runs[1]), "--sheet", str(again),
                   "--seed", "7").returncode == 0
    assert json.loads((again / "key.json").read_text())["shown_as_a"] == key["shown_as_a"]

    # Filled: rows 0-5 the first system wins, 6-8 the second, 9-11 tie.
    ids = list(key["shown_as_a"])
    verdicts = {i: "first" if n < 6 else "second" if n < 9 else "tie" for n, i in enumerate(ids)}
    filled = tmp_path / "filled.csv"
    _fill(sheet / "sheet.csv", key, filled, verdicts)
    back = run_cli("compare", "--ratings", str(filled), "--key", str(sheet / "key.json"))
    assert back.returncode == 0, back.stderr
    assert re.search(r"first better\s+6\s+50\.0%", back.stdout), back.stdout
    assert re.search(r"tie\s+3\s+25\.0%", back.stdout)
    assert re.search(r"second better\s+3\s+25\.0%", back.stdout)
    assert "(wins - losses) / n = +0.25, 95% interval [" in back.stdout
    assert f"first:  {runs[0]} (best)" in back.stdout  # unblinded only here


def test_sheet_is_never_written_over(runs: tuple[Path, Path], tmp_path: Path) -> None:
    sheet = tmp_path / "sheet"
    assert run_cli("compare", str(runs[0]), "--sheet", str(sheet)).returncode == 0
    before = {p.name: p.read_bytes() for p in sheet.iterdir()}
    again = run_cli("compare", str(runs[1]), "--sheet", str(sheet), "--seed", "1")
    assert again.returncode == 2 and "already holds" in again.stderr
    assert {p.name: p.read_bytes() for p in sheet.iterdir()} == before


@pytest.fixture
def sheet(runs: tuple[Path, Path], tmp_path: Path) -> tuple[Path, dict, list[list[str]]]:
    out = tmp_path / "sheet"
    assert run_cli("compare", str(runs[0]), str(runs[1]), "--sheet", str(out)).returncode == 0
    key = json.loads((out / "key.json").read_text())
    filled = tmp_path / "ok.csv"
    _fill(out / "sheet.csv", key, filled, dict.fromkeys(key["shown_as_a"], "tie"))
    rows = list(csv.reader(io.StringIO(filled.read_text(encoding="utf-8"))))
    return out / "key.json", key, rows


def _write(path: Path, rows: list[list[str]]) -> Path:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def _rating(rows: list[list[str]], n: int, value: str) -> list[list[str]]:
    rows = [list(r) for r in rows]
    rows[n][rows[0].index("rating")] = value
    return rows


@pytest.mark.parametrize(("edit", "message"), [
    (lambda rows: _rating(rows, 3, "C"), "(spreadsheet row 4): unknown rating 'C' for id"),
    (lambda rows: _rating(rows, 2, " "), "(spreadsheet row 3): no rating for id"),
    (lambda rows: [*rows[:2], [f"zz{rows[2][0]}", *rows[2][1:]], *rows[3:]],
     "(spreadsheet row 3): unknown id 'zzq"),
    (lambda rows: [*rows, rows[5]], "(spreadsheet row 14): id 'q04' is rated twice (also on spreadsheet row 6)"),
    (lambda rows: rows[:-2], "no row for id 'q"),
    (lambda rows: [[*rows[0], "rater"], *[[*r, "x"] for r in rows[1:]]],
     "line 1: unknown column 'rater'"),
    (lambda rows: [[c for c in r[:4]] for r in rows], "line 1: no 'rating' column"),
    (lambda rows: rows[:1], "no row for id 'q00' (12 of 12 rows missing)"),
])
def test_bad_ratings_files_get_one_line_naming_file_and_line(
        sheet: tuple[Path, dict, list[list[str]]], tmp_path: Path, edit, message: str) -> None:
    key_path, _, rows = sheet
    bad = _write(tmp_path / "bad.csv", edit(rows))
    result = run_cli("compare", "--ratings", str(bad), "--key", str(key_path))
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}"), result.stderr
    assert message in lines[0], lines[0]
    if "spreadsheet row" in message:  # and the line a text editor shows: cells span lines
        assert re.search(r"bad\.csv line \d+ \(spreadsheet row", lines[0]), lines[0]


def test_bad_key_and_arguments(sheet: tuple[Path, dict, list[list[str]]], tmp_path: Path,
                               runs: tuple[Path, Path]) -> None:
    key_path, key, rows = sheet
    good = _write(tmp_path / "good.csv", rows)
    assert run_cli("compare", "--ratings", str(good), "--key", str(key_path)).returncode == 0
    broken = tmp_path / "key.json"
    broken.write_text(json.dumps({**key, "shown_as_a": {"q00": "left"}}))
    result = run_cli("compare", "--ratings", str(good), "--key", str(broken))
    assert result.returncode == 2 and f"error: {broken}: shown_as_a.q00" in result.stderr
    alone = run_cli("compare", "--ratings", str(good))
    assert alone.returncode == 2 and "go together" in alone.stderr
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    result = run_cli("compare", str(empty))
    assert result.returncode == 2 and "no summary.json" in result.stderr
    other = _fake_run(tmp_path / "short", GOOD[:5], GOOD[:5])
    result = run_cli("compare", str(runs[0]), str(other))
    assert result.returncode == 2 and "has no row 'q05'" in result.stderr


# --- the report's lines ------------------------------------------------------------------


def test_report_says_when_validation_cannot_separate(tmp_path: Path) -> None:
    from promptsearch.search.report import confidence_lines, write_interval_plot

    unsure = paired_bootstrap([1.0, 0.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    sure = paired_bootstrap([1.0] * 8, [0.0] * 8)
    summary = {"metric": "char_f1", "baseline": {"validation": 2.0, "validation_search": 0.0},
               "best_minus_baseline": {"validation": unsure.to_dict(), "test": sure.to_dict()}}
    text = "\n".join(confidence_lines(summary))
    assert "could not separate best from baseline" in text
    assert f"validation rows needed for a difference this large: about {unsure.rows_needed}" \
        in text
    assert "- test: +1.00" in text and "separated (the interval excludes 0)" in text
    assert "in the search it stopped at 0.00" in text
    assert write_interval_plot(tmp_path, summary) == ["best_minus_baseline.png"]
    assert (tmp_path / "best_minus_baseline.png").stat().st_size > 1000
    tie = paired_bootstrap([1.0, 0.0], [1.0, 0.0]).to_dict()
    text = "\n".join(confidence_lines({**summary, "best_minus_baseline": {
        "validation": tie, "test": None}}))
    assert "needed for a difference this large: —" in text and "- test: no references" in text
