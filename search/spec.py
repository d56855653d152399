"""``RunSpec``: every input of a run, saved as ``run.yaml``; what ``--resume`` and ``serve`` read.

Importing this module loads neither Tune nor Optuna, so ``serve`` and ``eval`` can use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StrictStr, model_validator

from promptsearch.pipelines.contract import Contract, load_contract
from promptsearch.pipelines.engine.models import DEFAULT_MODEL, file_sha256
from promptsearch.pipelines.errors import UserError

__all__ = ["Fingerprints", "RunSpec", "check_run_inputs", "input_fingerprints", "load_run_spec"]

_DATA_SUFFIXES = (".jsonl", ".parquet", ".csv", ".json")


class Fingerprints(Contract):
    """What the run's inputs were, so that a resume or a serve notices a changed input."""

    data: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    """SHA-256 of each data file read, by name (the file as given, or a file of the split
    directory / bundled data); empty for a Hugging Face dataset id, which is not fingerprinted."""
    model: StrictStr
    """Identity of the model's weights (``model_fingerprint``: embedded model name + GGUF
    SHA-256, a local directory's file contents, or a hub id)."""


PositiveInt = Annotated[StrictInt, Field(ge=1)]


class RunSpec(Contract):
    """Every input of a run (``run.yaml``), so that the run can be repeated.

    Each field has the ``promptsearch run`` option of the same name (``_`` for ``-``) and the
    same allowed values (``tests/test_contracts.py`` checks that they agree)."""

    task: StrictStr
    """Task name (``--task``)."""
    model: StrictStr = DEFAULT_MODEL
    """Embedded model name, local Hugging Face model directory or hub id (``--model``)."""
    data: StrictStr | None = None
    """Dataset file, directory of split files or hub id (``--data``); null: the bundled data."""
    space: StrictStr | None = None
    """Search space file (``--space``); null: the task's. A resume reads the run's own
    ``space.yaml``."""
    trials: PositiveInt = 16
    """Configurations to try (``--trials``), >= 1."""
    seed: StrictInt = 0
    """Seeds TPE and the split rule (``--seed``)."""
    chunks: PositiveInt = 4
    """Validation chunks, the rungs of early stopping (``--chunks``), >= 1."""
    concurrency: PositiveInt | None = None
    """With ``scheduler: asha``, trials at once (``--concurrency``, default 1), >= 1;
    halving runs each bracket's trials together."""
    scheduler: Literal["halving", "asha"] = "halving"
    """Early stopping: ``halving`` (synchronous successive halving) or ``asha``."""
    trial_retries: Annotated[StrictInt, Field(ge=0)] = 1
    """Retries of a failed trial (``--trial-retries``), >= 0."""
    time_budget_s: Annotated[float, Field(strict=True, ge=1)] | None = None
    """Seconds for the search (``--time-budget``), >= 1; null: no limit."""
    engines: PositiveInt | None = None
    """Engine actors (``--engines``); null: as many as the cluster holds. The one option a
    resume may change."""
    cpus_per_engine: PositiveInt = 1
    """CPU cores per engine on CPU machines (``--cpus-per-engine``), >= 1."""
    tensor_parallel_size: PositiveInt = 1
    """GPUs per engine (``--tensor-parallel-size``), >= 1."""
    max_model_len: Annotated[StrictInt, Field(ge=16)] = 4096
    """Context length in tokens (``--max-model-len``), >= 16."""
    max_validation: PositiveInt | None = None
    """Use the first N validation rows (``--max-validation``), >= 1; null: all."""
    max_test: PositiveInt | None = None
    """Use the first N test rows (``--max-test``), >= 1; null: all."""
    metric: StrictStr | None = None
    """The metric the search maximises (``--metric``), one of the task's metrics; null: the
    task's primary metric."""
    judge: StrictStr | None = None
    """A model promptsearch runs as the judge of a judged task (``--judge``: embedded name,
    local directory or hub id); the run's own engines when it is the run's model."""
    judge_url: StrictStr | None = None
    """Base URL of an OpenAI-compatible server that judges (``--judge-url``, e.g.
    ``http://localhost:8000/v1``); its key comes from ``$PROMPTSEARCH_JUDGE_API_KEY``."""
    judge_model: StrictStr | None = None
    """The judge model's name on the ``judge_url`` server (``--judge-model``)."""
    fingerprints: Fingerprints | None = None
    """Written by the run: the data and model it used. A resume or a serve stops if they
    changed; absent in run.yaml files of older versions (then nothing is compared)."""

    @model_validator(mode="after")
    def _concurrency_needs_asha(self) -> RunSpec:
        if self.concurrency is not None and self.scheduler != "asha":
            raise ValueError("concurrency applies to scheduler asha; halving runs each "
                             "bracket's trials together")
        return self

    @classmethod
    def load(cls, run_dir: Path) -> RunSpec:
        """The ``run.yaml`` of ``run_dir``, validated; an error names the file and field."""
        return load_run_spec(run_dir)

    def save(self, run_dir: Path) -> None:
        import yaml

        from promptsearch.pipelines.data.writers import write_text

        data = self.model_dump(exclude_none=False)
        if self.fingerprints is None:
            del data["fingerprints"]
        write_text(run_dir / "run.yaml", yaml.safe_dump(data, allow_unicode=True,
                                                        sort_keys=False))

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with ``changes``, validated like a new one."""
        return type(self)(**{**dict(self), **changes})


def load_run_spec(run_dir: Path) -> RunSpec:
    """``run_dir/run.yaml`` as a ``RunSpec`` (for ``--resume`` and ``serve``)."""
    run_dir = Path(run_dir)
    path = run_dir / "run.yaml"
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no run.yaml there; pass the directory of a "
                        "run started by 'promptsearch run'")
    return load_contract(RunSpec, path)


def data_files(spec: RunSpec) -> dict[str, Path]:
    """The data files a run reads, by the name its fingerprint is recorded under."""
    from promptsearch.pipelines.tasks import TASK_DIR

    if spec.data is None:
        folder = TASK_DIR / "data" / spec.task
    else:
        folder = Path(spec.data)
        if folder.is_file():
            return {spec.data: folder}
    if not folder.is_dir():
        return {}  # a hub dataset id
    return {f.name: f for f in sorted(folder.iterdir())
            if f.is_file() and f.suffix.lower() in _DATA_SUFFIXES}


def input_fingerprints(spec: RunSpec) -> Fingerprints:
    """Fingerprints of the run's data files and model, as they are now."""
    from promptsearch.pipelines.engine.models import model_fingerprint, resolve_model

    data = {name: file_sha256(path) for name, path in data_files(spec).items()}
    return Fingerprints(data=data, model=model_fingerprint(spec.model, resolve_model(spec.model)))


def check_inputs_unchanged(spec: RunSpec, *, where: str,
                           current: Fingerprints | None = None) -> Fingerprints:
    """The inputs' fingerprints now; a ``UserError`` naming the first input that changed
    since ``spec`` was recorded. A spec without fingerprints (an older run) is not compared."""
    current = current or input_fingerprints(spec)
    recorded = spec.fingerprints
    if recorded is None:
        return current
    what = "data (--data)" if spec.data is not None else "bundled data"
    for name in sorted(set(recorded.data) | set(current.data)):
        before, now = recorded.data.get(name), current.data.get(name)
        if before != now:
            change = ("is gone" if now is None else "is new" if before is None
                      else f"changed (sha256 {before[:12]} then, {now[:12]} now)")
            raise UserError(f"{where}: the {what} file {name} {change} since the run started; "
                            "restore it, or start a new run to use the new data")
    if recorded.model != current.model:
        raise UserError(f"{where}: the model {spec.model} changed since the run started "
                        f"({recorded.model} then, {current.model} now); restore it, or start a "
                        "new run with this model")
    return current


def check_run_inputs(run_dir: Path, *, data: bool = True) -> RunSpec:
    """A finished or interrupted run's spec, after checking that its data (unless ``data``
    is False: ``serve`` of a run that stored its few-shot pool needs no data) and model are
    the ones it was made with (for ``serve`` and ``--resume``)."""
    spec = load_run_spec(Path(run_dir))
    current = None
    if not data and spec.fingerprints is not None:
        from promptsearch.pipelines.engine.models import model_fingerprint, resolve_model

        current = Fingerprints(data=spec.fingerprints.data,
                               model=model_fingerprint(spec.model, resolve_model(spec.model)))
    check_inputs_unchanged(spec, where=str(Path(run_dir) / "run.yaml"), current=current)
    return spec
