"""What the hardened LIT server checks in a request's data before any handler runs: JSON and inputs.

* `check_json`: nesting depth, LIT's type markers (`__class__`, `__name__`:
  the client's JSON is taken as plain data, never decoded into arrays, tuples
  or LitTypes), lone surrogates, numbers that are not finite.
* `model_inputs`: each input a data set id or `{"id": str, "data": {...}}`;
  the id of a sent example is derived from its data (LIT's `input_hash`), so
  whatever id a client sends, cached results stay with the data they belong to.
* `new_examples`: the examples `/post_new_data` stores.

Components' configs and the work they run are checked in `server_work`. Every
problem raises ValueError naming it and the accepted values.
"""

import math
from typing import Any

from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import types as lit_types
from lit_nlp.lib import caching

MAX_JSON_DEPTH = 64
TYPE_MARKERS = ("__class__", "__name__")


# --- JSON ---


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"Text must be valid Unicode: {text[max(0, error.start - 20) : error.start + 1]!r} ends in a lone"
                f" surrogate ({ascii(text[error.start])})."
            ) from None


def check_json(value: Any) -> None:
    """Raises ValueError for JSON the server does not take (see the module doc)."""
    stack: list[tuple[Any, int, str | None]] = [(value, 1, None)]  # (value, depth, the key it is under)
    while stack:
        item, depth, key = stack.pop()
        where = f"{key!r}: " if key is not None else ""
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"Malformed JSON: nested more than {MAX_JSON_DEPTH} levels deep.")
        if isinstance(item, dict):
            if markers := [k for k in TYPE_MARKERS if k in item]:
                raise ValueError(
                    f"JSON objects with {markers[0]!r} (LIT's type markers for arrays, tuples and LitTypes) are not"
                    " accepted from clients; send plain JSON."
                )
            for child_key, child in item.items():
                _check_text(child_key)
                stack.append((child, depth + 1, child_key))
        elif isinstance(item, list):
            stack.extend((child, depth + 1, key) for child in item)
        elif isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where}numbers must be finite, got {item!r} (JSON numbers past 1.8e308 are infinite).")
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 1023:
            raise ValueError(f"{where}out of range: a number of {len(str(abs(item)))} digits.")


# --- Inputs ---


def model_inputs(inputs: list, dataset: lit_dataset.IndexedDataset | None, dataset_name: str | None) -> list[dict]:
    """The inputs as LIT handlers take them (`{"id", "data", "meta"}`), ids derived from the data.

    An id string is looked up in `dataset`; an example sent in full gets
    `id = data["_id"] = input_hash(data)` unless it came without an id (`""`: a
    new datapoint, which stays unindexed).
    """
    prepared = []
    for entry in inputs:
        if isinstance(entry, str):
            if dataset is None or entry not in dataset.index:
                raise ValueError(f"Unknown example id {entry[:80]!r} in data set {dataset_name!r}.")
            prepared.append(dict(dataset.index[entry]))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), dict):
            raise ValueError('Malformed request: each input must be an example id or {"id", "data": {...}}.')
        if not isinstance(entry.get("id"), str):
            raise ValueError(
                'Malformed request: each input sent in full needs an "id" string ("" for a new datapoint).'
            )
        data = dict(entry["data"])
        meta = entry.get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError('Malformed request: an input\'s "meta" must be a JSON object.')
        sent_id = entry["id"] or data.get("_id") or ""
        if not isinstance(sent_id, str):
            raise ValueError('Malformed request: "_id" must be a string.')
        example_id = caching.input_hash(data) if sent_id else ""
        data["_id"] = example_id
        prepared.append({**entry, "id": example_id, "data": data, "meta": meta})
    return prepared


def new_examples(inputs: Any, max_inputs: int, spec: lit_types.Spec) -> list[dict]:
    """`/post_new_data`'s inputs: at most `max_inputs` plain examples of the data set's `spec`.

    Each is an object of the spec's fields, its required fields present, text fields strings.
    """
    if not isinstance(inputs, list):
        raise ValueError('Malformed request: the body must be a JSON object with a list of "inputs" (examples).')
    if len(inputs) > max_inputs:
        raise ValueError(f"{len(inputs)} inputs; at most {max_inputs} can be posted at once (max_inputs).")
    required = [k for k, v in spec.items() if v.required]
    for example in inputs:
        if not isinstance(example, dict):
            raise ValueError('Malformed request: each input of /post_new_data is an example, {"field": value, ...}.')
        if unknown := sorted(set(example) - set(spec)):
            raise ValueError(f"Unknown field(s) {unknown[:5]} in a posted example; the data set's: {sorted(spec)}.")
        if missing := [k for k in required if k not in example]:
            raise ValueError(f"A posted example lacks the required field(s) {missing}.")
        for key, value in example.items():
            if isinstance(spec[key], lit_types.TextSegment) and not isinstance(value, str):
                raise ValueError(f"{key!r} must be a string, got {str(value)[:40]!r}.")
    return inputs
