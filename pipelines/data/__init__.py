"""Data in and out: reading tables (JSONL, Parquet, CSV, JSQuAD, M-IFEval), a task's splits,
predictions to score, and atomic writes of every file a command produces."""

from promptsearch.pipelines import lazy_exports
from promptsearch.pipelines.data.datasets import load_jsquad, load_mifeval, load_table
from promptsearch.pipelines.data.readers import read_records, read_yaml
from promptsearch.pipelines.data.writers import (
    atomic_path,
    refuse_overwrite,
    write_json,
    write_jsonl,
    write_table,
    write_text,
)

__getattr__ = lazy_exports(__name__, {
    "TaskData": "taskdata", "load_examples": "taskdata", "load_task_data": "taskdata",
    "match_predictions": "predictions"})

__all__ = ["TaskData", "atomic_path", "load_examples", "load_jsquad",
           "load_mifeval", "load_table", "load_task_data", "match_predictions", "read_records",
           "read_yaml", "refuse_overwrite", "write_json", "write_jsonl", "write_table",
           "write_text"]
