"""The typed contracts of the configuration files (issue 12 §4, issue 13 §1).

Each malformed value goes through the real CLI in-process (``run --resume`` with a crafted
``run.yaml``, ``run --space``, ``eval --config``) and must end, before any engine starts, in
one ``error:`` line naming the file and the field, exit code 2. None of these tests is marked
``engine``: conftest makes an engine start fail them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import typing
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from promptsearch.pipelines.errors import UserError
from tests.conftest import REPO, run_cli

FAST_SECONDS = 60


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _one_error_line(result: Any, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


# -- run.yaml through --resume ---------------------------------------------------------------

RUN_YAML_CASES = [
    ({"concurrency": 0, "scheduler": "asha"}, "run.yaml: concurrency must be >= 1, got 0"),
    ({"trial_retries": -1}, "run.yaml: trial_retries must be >= 0, got -1"),
    ({"trials": 0}, "run.yaml: trials must be >= 1, got 0"),
    ({"max_validation": 0}, "run.yaml: max_validation must be >= 1, got 0"),
    ({"max_test": -3}, "run.yaml: max_test must be >= 1, got -3"),
    ({"chunks": "4"}, "run.yaml: chunks must be an integer, got '4'"),
    ({"time_budget_s": math.nan}, "run.yaml: time_budget_s must be a finite number, got nan"),
    ({"time_budget_s": math.inf}, "run.yaml: time_budget_s must be a finite number, got inf"),
    ({"scheduler": "fast"}, "run.yaml: scheduler"),
    ({"concurrency": 2}, "run.yaml: concurrency applies to scheduler asha"),
    ({"max_model_len": 8}, "run.yaml: max_model_len must be >= 16, got 8"),
    ({"trails": 4}, "run.yaml: unknown field 'trails'; allowed: chunks, concurrency"),
    ({"task": ["qa"]}, "run.yaml: task must be a string, got ['qa']"),
    ({"fingerprints": {"model": "m", "data": [1]}},
     "run.yaml: fingerprints.data must be a mapping, got [1]"),
]


@pytest.mark.parametrize(("fields", "message"), RUN_YAML_CASES,
                         ids=[message.split(": ", 1)[1][:40] for _, message in RUN_YAML_CASES])
def test_resume_refuses_a_malformed_run_yaml(tmp_path: Path, fields: dict, message: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.yaml").write_text(_yaml({"task": "qa", **fields}), encoding="utf-8")
    result = run_cli("run", "--resume", str(run_dir))
    _one_error_line(result, message)


def test_resume_refuses_a_run_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("- task: qa\n", encoding="utf-8")
    result = run_cli("run", "--resume", str(tmp_path))
    _one_error_line(result, "run.yaml: expected a mapping with task, got [{'task': 'qa'}]")


@pytest.mark.parametrize("flag", [["--trials", "3"], ["--seed", "1"], ["--task", "qa"],
                                  ["--force"], ["--max-validation", "2"], ["--model", "x"],
                                  ["--out", "elsewhere"]])
def test_resume_refuses_flags_it_would_not_honour(tmp_path: Path, flag: list[str]) -> None:
    (tmp_path / "run.yaml").write_text(_yaml({"task": "qa"}), encoding="utf-8")
    result = run_cli("run", "--resume", str(tmp_path), *flag)
    _one_error_line(result, f"{flag[0]} cannot be given with --resume",
                    str(tmp_path / "run.yaml"), "start a new run", "only --engines may change")


# -- fingerprints ----------------------------------------------------------------------------

def _qa_rows(n: int) -> str:
    rows = [{"id": f"q{i}", "context": f"文書{i}: 山{i}は高い。", "question": f"山{i}は?",
             "answers": ["高い"]} for i in range(n)]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory whose run.yaml records the fingerprints of its data and model, as
    ``promptsearch run`` writes them (the search itself is not needed for these checks)."""
    from promptsearch.search.spec import RunSpec, input_fingerprints

    data = tmp_path / "qa.jsonl"
    data.write_text(_qa_rows(12), encoding="utf-8")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "space.yaml").write_text(_yaml({"templates": ["plain"], "fewshot": {"k": [0]}}),
                                        encoding="utf-8")
    spec = RunSpec(task="qa", data=str(data), trials=2, max_validation=2, max_test=2)
    spec.replace(fingerprints=input_fingerprints(spec)).save(run_dir)
    return run_dir, data


def test_run_yaml_records_fingerprints_and_check_run_inputs_accepts_unchanged_inputs(
        finished_run: tuple[Path, Path]) -> None:
    from promptsearch.search.spec import check_run_inputs

    run_dir, data = finished_run
    saved = yaml.safe_load((run_dir / "run.yaml").read_text(encoding="utf-8"))
    import hashlib

    assert saved["fingerprints"]["data"] == {str(data): hashlib.sha256(data.read_bytes())
                                             .hexdigest()}
    assert saved["fingerprints"]["model"].startswith("gemma-3-270m@")
    assert check_run_inputs(run_dir).data == str(data)


def test_resume_stops_when_the_data_changed(finished_run: tuple[Path, Path]) -> None:
    from promptsearch.search.spec import check_run_inputs

    run_dir, data = finished_run
    data.write_text(_qa_rows(13), encoding="utf-8")
    message = f"the data (--data) file {data} changed (sha256"
    with pytest.raises(UserError, match=r"changed \(sha256"):
        check_run_inputs(run_dir)  # what serve calls
    # --engines is the one flag a resume honours: it gets as far as the data check
    result = run_cli("run", "--resume", str(run_dir), "--engines", "1")
    _one_error_line(result, str(run_dir / "run.yaml"), message, "since the run started",
                    "start a new run")


def test_resume_stops_when_the_model_changed(finished_run: tuple[Path, Path]) -> None:
    run_dir, _ = finished_run
    saved = yaml.safe_load((run_dir / "run.yaml").read_text(encoding="utf-8"))
    saved["fingerprints"]["model"] = "gemma-3-270m@0000"
    (run_dir / "run.yaml").write_text(_yaml(saved), encoding="utf-8")
    result = run_cli("run", "--resume", str(run_dir))
    _one_error_line(result, "the model gemma-3-270m changed since the run started",
                    "gemma-3-270m@0000 then")


def test_a_run_yaml_without_fingerprints_is_not_compared() -> None:
    """Run directories of older versions carry no fingerprints: nothing to compare."""
    from promptsearch.search.spec import RunSpec, check_inputs_unchanged

    spec = RunSpec(task="qa")
    assert check_inputs_unchanged(spec, where="run.yaml").model.startswith("gemma-3-270m@")


# -- space.yaml through run --space ------------------------------------------------------------

SPACE_CASES = [
    ({"fewshot": [1]}, "space.yaml: fewshot must be a mapping, got [1]"),
    ({"sampling": [1]}, "space.yaml: sampling must be a mapping, got [1]"),
    ({"chat": "false"}, "space.yaml: chat[0] must be true or false"),
    ({"chat": [True, "false"]}, "space.yaml: chat[1] must be true or false"),
    ({"fewshot": {"k": ["2"]}}, "space.yaml: fewshot.k[0] must be an integer, got '2'"),
    ({"fewshot": {"k": [0, -1]}}, "space.yaml: fewshot.k[1] must be >= 0, got -1"),
    ({"fewshot": {"order": ["backwards"]}}, "space.yaml: unknown fewshot.order 'backwards'"),
    ({"sampling": {"temperature": [0.0, math.nan]}},
     "space.yaml: sampling.temperature[1] must be a finite number, got nan"),
    ({"sampling": {"top_p": [1.5]}}, "space.yaml: sampling.top_p[0] must be in (0, 1], got 1.5"),
    ({"sampling": {"max_tokens": [0]}}, "space.yaml: sampling.max_tokens[0] must be >= 1"),
    ({"sampling": {"stop": {"nl": "。\n"}}}, "space.yaml: sampling.stop.nl must be a list"),
    ({"sampling": {"stop": {"nl": [""]}}}, "space.yaml: sampling.stop.nl[0] must not be empty"),
    ({"sampling": {"stop": ["\n"]}}, "space.yaml: sampling.stop must be a mapping"),
    ({"parse": {"p": ["first_line", "nope"]}}, "space.yaml: unknown parse 'nope'; known:"),
    ({"templates": []}, "space.yaml: templates needs at least one value"),
    ({"template": ["plain"]}, "space.yaml: unknown field 'template'; allowed: chat,"),
    ({"sampling": {"temp": [0.5]}}, "space.yaml: unknown field 'temp' in sampling; allowed:"),
    ({"extra_templates": {"mine": {"example": "{{ question }}", "answer": None}},
      "templates": ["mine"]}, "space.yaml: template 'mine'"),
]


@pytest.mark.parametrize(("space", "message"), SPACE_CASES,
                         ids=[message.split(": ", 1)[1][:40] for _, message in SPACE_CASES])
def test_run_refuses_a_malformed_space(tmp_path: Path, space: dict, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(_yaml(space), encoding="utf-8")
    result = run_cli("run", "--task", "qa", "--space", str(path), "--out", str(tmp_path / "r"))
    _one_error_line(result, message)
    assert not (tmp_path / "r").exists()


# -- best.yaml through eval --config ------------------------------------------------------------

CONFIG_CASES = [
    ({"fewshot": [1]}, "best.yaml: fewshot must be a mapping, got [1]"),
    ({"sampling": [1]}, "best.yaml: sampling must be a mapping, got [1]"),
    ({"chat": "false"}, "best.yaml: chat must be true or false (unquoted), got 'false'"),
    ({"fewshot": {"k": "2"}}, "best.yaml: fewshot.k must be an integer, got '2'"),
    ({"fewshot": {"k": -1}}, "best.yaml: fewshot.k must be >= 0, got -1"),
    ({"fewshot": {"selector": "best"}}, "best.yaml: unknown fewshot.selector 'best'"),
    ({"sampling": {"stop": "。\n"}}, "best.yaml: sampling.stop must be a list, got '。\\n'"),
    ({"sampling": {"stop": ["。\n", 3]}}, "best.yaml: sampling.stop[1] must be a string, got 3"),
    ({"sampling": {"temperature": math.nan}},
     "best.yaml: sampling.temperature must be a finite number, got nan"),
    ({"sampling": {"top_p": math.inf}}, "best.yaml: sampling.top_p must be a finite number"),
    ({"sampling": {"max_tokens": 0}}, "best.yaml: sampling.max_tokens must be >= 1, got 0"),
    ({"sampling": {"max_tokens": 8.5}}, "best.yaml: sampling.max_tokens must be an integer"),
    ({"sampling": {"seed": "1"}}, "best.yaml: sampling.seed must be an integer, got '1'"),
    ({"parse": "first_line"}, "best.yaml: parse must be a list, got 'first_line'"),
    ({"parse": ["nope"]}, "best.yaml: unknown parse 'nope'"),
    ({"template": 3}, "best.yaml: template must be a string, got 3"),
    ({"template_version": "1"}, "best.yaml: template_version must be an integer"),
    ({"temperature": 0.5}, "best.yaml: unknown field 'temperature'; allowed: chat,"),
    ({"fewshot": {"kk": 1}}, "best.yaml: unknown field 'kk' in fewshot; allowed: k, order"),
    ({"template": "mine", "custom_template": {"example": "{{ question }}", "answer": None}},
     "best.yaml: custom_template: template 'mine'"),
    ({"template": "mine", "custom_template": ["{{ question }}"]},
     "best.yaml: custom_template must be a mapping"),
]


@pytest.mark.parametrize(("fields", "message"), CONFIG_CASES,
                         ids=[message.split(": ", 1)[1][:40] for _, message in CONFIG_CASES])
def test_eval_refuses_a_malformed_config(tmp_path: Path, fields: dict, message: str) -> None:
    path = tmp_path / "best.yaml"
    path.write_text(_yaml({"task": "qa", "template": "plain", **fields}), encoding="utf-8")
    result = run_cli("eval", "--task", "qa", "--config", str(path), "--out", str(tmp_path / "e"))
    _one_error_line(result, message)
    assert not (tmp_path / "e").exists()


def test_custom_template_answer_null_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "best.yaml"
    path.write_text(_yaml({"task": "qa", "template": "mine",
                           "custom_template": {"example": "{{ question }}", "answer": None}}))
    result = run_cli("eval", "--task", "qa", "--config", str(path))
    _one_error_line(result, "answer")


# -- the models themselves -----------------------------------------------------------------------

def test_a_config_round_trips_and_replace_validates(tmp_path: Path) -> None:
    from promptsearch.pipelines.prompting.config import FewShot, PromptConfig
    from promptsearch.pipelines.tasks import load_task

    task = load_task("qa")
    config = PromptConfig.baseline(task).replace(fewshot=FewShot(k=2, selector="similar"),
                                                 chat=True)
    config.save(tmp_path / "best.yaml")
    assert PromptConfig.load(tmp_path / "best.yaml") == config
    with pytest.raises(UserError, match=r"^chat must be true or false \(unquoted\), got 'no'$"):
        config.replace(chat="no")
    with pytest.raises(UserError, match=r"^unknown selector 'best'; known: first, random"):
        FewShot(selector="best")


def test_partial_sampling_in_best_yaml_keeps_the_tasks_other_defaults(tmp_path: Path) -> None:
    from promptsearch.pipelines.prompting.config import PromptConfig
    from promptsearch.pipelines.tasks import load_task

    path = tmp_path / "best.yaml"
    path.write_text(_yaml({"task": "qa", "template": "plain", "sampling": {"max_tokens": 8}}))
    config = PromptConfig.load(path)
    assert config.sampling.max_tokens == 8
    assert config.sampling.stop == load_task("qa").sampling.stop
    assert config.parse == load_task("qa").parse


def test_every_task_space_file_is_valid() -> None:
    from promptsearch.pipelines.tasks import TASK_NAMES, load_task
    from promptsearch.search.space import SearchSpace

    for name in TASK_NAMES:
        assert SearchSpace.load(load_task(name)).size() > 0


# -- the CLI's ranges are the model's ---------------------------------------------------------------

def _model_bounds(field: Any) -> tuple[Any, Any]:
    """(lowest allowed, whether the bound is strict) from a pydantic field's constraints."""
    import annotated_types
    from pydantic.fields import FieldInfo

    low, strict = None, False
    metadata = list(field.metadata)
    for arg in typing.get_args(field.annotation):  # X | None keeps X's constraints inside
        if typing.get_origin(arg) is typing.Annotated:
            metadata.extend(typing.get_args(arg)[1:])
    for item in metadata:
        for limit in item.metadata if isinstance(item, FieldInfo) else [item]:
            if isinstance(limit, annotated_types.Ge):
                low = limit.ge
            elif isinstance(limit, annotated_types.Gt):
                low, strict = limit.gt, True
    return low, strict


def test_run_options_have_the_same_ranges_as_run_yaml() -> None:
    from promptsearch.search.cli import run
    from promptsearch.search.spec import RunSpec

    aliases = {"time_budget": "time_budget_s", "task_name": "task"}
    checked = []
    for param in run.params:
        name = aliases.get(param.name, param.name)
        if name not in RunSpec.model_fields or not isinstance(param, click.Option):
            continue
        field = RunSpec.model_fields[name]
        low, strict = _model_bounds(field)
        if isinstance(param.type, click.types._NumberRangeBase):
            assert (param.type.min, bool(param.type.min_open)) == (low, strict), name
        else:
            assert low is None, f"--{name} takes any value, run.yaml's {name} only >= {low}"
        if isinstance(param.type, click.Choice) and typing.get_origin(field.annotation) \
                is typing.Literal:
            assert set(param.type.choices) == set(typing.get_args(field.annotation)), name
        if isinstance(param.default, int | float | str):
            assert param.default == field.default, name
        checked.append(name)
    assert {"trials", "chunks", "concurrency", "trial_retries", "time_budget_s",
            "max_validation", "max_test", "engines", "cpus_per_engine",
            "tensor_parallel_size", "max_model_len", "scheduler", "seed"} <= set(checked)


def test_generate_options_have_the_same_ranges_as_sampling() -> None:
    from promptsearch.pipelines.engine.sampling import Sampling
    from promptsearch.search.cli import generate

    for param in generate.params:
        if param.name not in Sampling.model_fields or param.name == "stop":
            continue
        if isinstance(param.default, int | float):
            assert param.default == Sampling.model_fields[param.name].default, param.name
    result = run_cli("generate", "in.jsonl", "--max-tokens", "0")
    assert result.returncode == 2 and "max_tokens must be >= 1, got 0" in result.stderr


# -- docs/formats.md ----------------------------------------------------------------------------

def test_formats_doc_is_generated_from_the_models() -> None:
    spec = importlib.util.spec_from_file_location("formats_doc", REPO / "scripts/formats_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    assert (REPO / "docs/formats.md").read_text(encoding="utf-8") == text, \
        "docs/formats.md is out of date: run .venv/bin/python scripts/formats_doc.py"
    from promptsearch.search.spec import RunSpec

    for name, field in RunSpec.model_fields.items():
        assert field.description, f"run.yaml field {name} has no description"
        assert f"| `{name}` |" in text
    assert "(docs/formats.md)" in (REPO / "README.md").read_text(encoding="utf-8")
