"""Tune and Optuna are imported only where a search runs: ``eval``, ``score``, ``generate`` and
``serve`` never load them (seconds of start-up, and the search's code, for nothing).

Each check is a fresh process, so that nothing another test imported counts; the commands run
as far as they can without an engine (``score`` to the end, the others to a check that
fails before Ray starts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from promptsearch.pipelines.data.writers import write_jsonl
from tests.conftest import REPO

DATA = REPO / "pipelines/tasks/data"

_SCRIPT = """
import json, sys
from click.testing import CliRunner
from promptsearch.search.cli import main

results = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, args)
    results.append([result.exit_code, result.output[-300:]])
search = sorted(m for m in sys.modules if m == "optuna" or m.startswith(("optuna.", "ray.tune")))
print(json.dumps({"results": results, "search_modules": search[:5]}))
"""


def _imports(*commands: list[str]) -> tuple[list[list], list[str]]:
    """Exit code and output of each command, run in one new process, and the Tune and
    Optuna modules loaded by the end."""
    out = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(commands)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return found["results"], found["search_modules"]


def test_eval_score_generate_and_serve_import_neither_tune_nor_optuna(tmp_path: Path) -> None:
    refs = DATA / "qa/validation.jsonl"
    rows = [json.loads(line) for line in refs.read_text(encoding="utf-8").splitlines()]
    write_jsonl(tmp_path / "preds.jsonl", [{"id": r["id"], "output": r["answers"][0]}
                                           for r in rows])
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "こんにちは"}])
    results, modules = _imports(
        ["eval", "--help"],
        ["score", "--task", "qa", "--predictions", str(tmp_path / "preds.jsonl"),
         "--references", str(refs)],
        # Tokenizer loaded, every prompt rendered and counted: too long for 16 tokens.
        ["eval", "--task", "qa", "--max-examples", "2", "--max-model-len", "16", "--out",
         str(tmp_path / "eval")],
        ["generate", str(tmp_path / "in.jsonl"), "--prompt-column", "nope"],
        ["serve", str(tmp_path / "no-run")],
    )
    codes = [code for code, _ in results]
    assert codes == [0, 0, 2, 2, 2], results
    assert "exact_match" in results[1][1] and "--max-model-len" in results[2][1], results
    assert "no column 'nope'" in results[3][1] and "no run.yaml" in results[4][1], results
    assert modules == [], modules


def test_run_does_import_them() -> None:
    """The check above can see them: ``run`` loads Tune as soon as it starts."""
    results, modules = _imports(["run", "--task", "qa", "--space", "no-such-space.yaml"])
    assert results[0][0] == 2, results
    assert any(m.startswith("ray.tune") for m in modules), modules
