"""The explain runs' files: examples read from GLUE TSV or JSON Lines, sorted into batches by
length; rows read back, checked before a run resumes them, and written whole.
"""

import io
import json
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import transformers

from lit_sig import storage
from lit_sig.cli import explain_lm
from lit_sig.cli.job import SCHEMA, SETTINGS_DEFAULTS
from lit_sig.models import datasets

DATA_SUFFIXES = (".tsv", ".jsonl")
PARTIAL_SUFFIX = ".partial.jsonl"
ROWS_CHECKPOINT_SUFFIX = ".rows.jsonl"


def read_examples(
    path: pathlib.Path, text_field: str, limit: int | None, labels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """`{"id", "sentence", "label"}` per example of a GLUE-style TSV or a JSONL file.

    Args:
        labels: the model's classes; every gold label given must be one of them (None: any).

    Raises:
        ValueError: an unknown suffix, a malformed file, an empty sentence, or a label not in `labels`.
    """
    if path.suffix == ".tsv":
        if text_field != "sentence":
            raise ValueError(f"--text_field {text_field!r}: GLUE TSV files always use 'sentence'.")
        records = [r | {"label": r["label"] or None} for r in datasets.read_glue_tsv(path, limit, labels=None)]
    elif path.suffix == ".jsonl":
        records = _read_jsonl_data(path, text_field, limit)
    else:
        raise ValueError(f"--data {path}: unknown suffix; accepted: {', '.join(DATA_SUFFIXES)}.")
    examples = []
    for i, record in enumerate(records):
        if not record["sentence"].strip():
            raise ValueError(f"{path}: example {i} has an empty {text_field!r}.")
        if labels is not None and record["label"] is not None and record["label"] not in labels:
            raise ValueError(
                f"{path}: example {i} has label {record['label']!r}, not one of the model's classes"
                f" {list(labels)}; --labels names them in logit order."
            )
        examples.append({"id": i, "sentence": record["sentence"], "label": record["label"]})
    return examples


def _read_jsonl_data(path: pathlib.Path, text_field: str, limit: int | None) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ValueError(f"--data: {path} is not a file.")
    records = []
    for line_number, record in datasets.json_lines(path, limit):
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"{path}:{line_number}: no string field {text_field!r} (see --text_field).")
        label = record.get("label")
        records.append({"sentence": text, "label": None if label is None else str(label)})
    return records


def partial_path(out: pathlib.Path) -> pathlib.Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def rows_checkpoint_path(out: pathlib.Path) -> pathlib.Path:
    """The model rows of the batch in progress (`lit_sig.core.checkpoint`), beside the partial rows."""
    return out.with_name(out.name + ROWS_CHECKPOINT_SUFFIX)


def read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
    """The rows of an output file (.parquet or .jsonl)."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_resumable(
    rows: Iterable[dict[str, Any]],
    examples: list[dict[str, Any]],
    wanted: dict[str, Any],
    source: pathlib.Path,
    text_key: str = "sentence",
) -> None:
    """Refuses rows made with other `wanted` fields (settings, model, labels, data) or from other texts
    (`text_key`: "sentence", or an LM's "prompt"; a target the data gives must match too)."""
    for row in rows:
        made = {k: row.get(k, SETTINGS_DEFAULTS.get(k)) for k in wanted}
        differ = [f"{k}={made[k]!r} (this run: {v!r})" for k, v in wanted.items() if made[k] != v]
        if differ:
            raise ValueError(
                f"{source} holds rows made with another {', '.join(differ)}; resume with"
                " the same flags, or write to another --out."
            )
        i = row["id"]
        if i >= len(examples):
            continue
        given = examples[i].get("target")
        differs = text_key if row[text_key] != examples[i][text_key] else None
        if differs is None and given and row.get("target") != given:
            differs = "target"
        if differs:
            raise ValueError(f"{source}: row {i} has another {differs} than the data; was it made from other data?")


def write_atomically(rows: list[dict[str, Any]], out: pathlib.Path, schema: pa.Schema = SCHEMA) -> None:
    if out.suffix == ".parquet":
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
        storage.write_atomically(out, buffer.getvalue())
    else:
        storage.write_atomically(out, "".join(json.dumps(row) + "\n" for row in rows))


def length_batches(
    examples: list[dict[str, Any]], tokenizer: transformers.PreTrainedTokenizerBase, batch_size: int
) -> list[list[dict[str, Any]]]:
    """Examples sorted by token count, longest first (ties by id), in batches."""
    texts = [e["sentence"] if "sentence" in e else explain_lm.text_of(e) for e in examples]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    order = sorted(range(len(examples)), key=lambda i: (-lengths[i], examples[i]["id"]))
    ordered = [examples[i] for i in order]
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]
