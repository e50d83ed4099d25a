"""LIT's Sequence Salience module, fed by lit_sig's interpreters on a causal LM.

LIT 1.3's module (`sequence_salience_module.ts`, the prompt-debugging UI) finds
two companion models by name: `_{model}_tokenizer`, whose `tokens` it shows,
and `_{model}_salience`, which it asks, once per target span the user selects,
for every `TokenScores` field of its output spec at once (with `target_mask`
marking the span). It has no config panel; its method buttons are those field
names. So:

* `SequenceSalienceModel` is that salience model: each field is one method of
  lit_sig's registry with a fixed config (`SalienceField`) run on the causal
  LM (`interpreter.run(inputs, lm, config=...)`, as in a notebook), the
  gradient methods sharing one gradient pass. Any registry method may be a
  field (`METHODS`); the default ones (`DEFAULT_FIELDS`: gradient norm,
  gradient x input, exact SIG) cost one forward+backward row and T + 1
  forward rows, seconds for a 60-token prompt on a CPU. Path IG and SIG
  (`ig`, `sig`: 50 or T x 50 rows) and the captum methods may be added to the
  set, and then make every click wait for them.
* Values are raw (Normalize off): gradient x input, IG and exact SIG are in
  units of the explained log-probability; positive supports the target (LIT's
  own `transformers_lms` differentiates the loss, so its signs are flipped).
* The module draws only a field named `grad_dot_input` with its signed colour
  map; `signed_fields()` lists ours (from each interpreter's own
  `TokenSalience.signed`), which `lit_sig.serving.offline_client` patches the
  client to draw signed too.
* `SequenceTokenizerModel` is the tokenizer model: the LM's own tokens, so
  `target_mask` aligns with what the salience model scores.

Methods with settings (steps, baseline, path SIG, captum's) stay with LIT's
Salience Maps module on the LM itself, where LIT shows each interpreter's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from lit_nlp.api import components as lit_components
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types
from lit_nlp.examples.prompt_debugging import constants as pd_constants
from lit_nlp.examples.prompt_debugging import utils as pd_utils

from lit_sig.lit import registry

JsonDict = lit_types.JsonDict
FieldNames = pd_constants.FieldNames
TOKENS_FIELD = FieldNames.TOKENS
TARGET_FIELD = FieldNames.TARGET
LM_BASELINE = "zero"  # An LM has no [MASK]; the zero vector is the baseline every LM has.
# The module's button names are the fields': LIT's own for the two gradient methods (it preselects
# `grad_l2` and draws `grad_dot_input` signed), the registry's name for every other method.
_LIT_NAMES = {FieldNames.GRAD_NORM: "grad_norm"}


@dataclasses.dataclass(frozen=True)
class SalienceField:
    """One `TokenScores` field of the salience model: a registry method and the config it runs with.

    Attributes:
        method: its `lit_sig.lit.registry` name (`exact_sig`, `ig`, `captum_kernelshap`, ...).
        steps: its steps (None: the method's default, 50 for IG and SIG).
    """

    method: str
    steps: int | None = None

    def interpreter(self) -> lit_components.Interpreter:
        return registry.get(self.method).make()

    def config(self) -> JsonDict:
        """Raw scores (Normalize off), from the zero baseline where the method takes one."""
        method = registry.get(self.method)
        return method.config(self.steps, LM_BASELINE if method.takes_baseline else None, normalize=False)

    @property
    def uses_gradients(self) -> bool:
        """It reads the LM's one gradient pass (`model_outputs`), which such fields of one call share."""
        return registry.get(self.method).reads_model_gradients


def _fields() -> dict[str, SalienceField]:
    names = {name: name for name in registry.list_methods()} | {lit: ours for lit, ours in _LIT_NAMES.items()}
    del names["grad_norm"]  # Served as LIT's `grad_l2`.
    return {field: SalienceField(method) for field, method in sorted(names.items(), key=lambda kv: _order(kv[0]))}


def _order(field: str) -> tuple[int, int]:
    first = (FieldNames.GRAD_NORM, FieldNames.GRAD_DOT_INPUT)
    return (0, first.index(field)) if field in first else (1, registry.list_methods().index(field))


METHODS: dict[str, SalienceField] = _fields()
DEFAULT_FIELDS: tuple[str, ...] = (FieldNames.GRAD_NORM, FieldNames.GRAD_DOT_INPUT, "exact_sig")


def is_signed(field: SalienceField) -> bool:
    """Whether the field's scores have a sign (its interpreter's `TokenSalience.signed`)."""
    return bool(field.interpreter().meta_spec()["saliency"].signed)


def signed_fields(methods: Mapping[str, SalienceField] = METHODS) -> tuple[str, ...]:
    """The fields of `methods` that the module should draw with its signed colour map."""
    return tuple(name for name, field in methods.items() if is_signed(field))


def check_fields(fields: Sequence[str], methods: Mapping[str, SalienceField] = METHODS) -> tuple[str, ...]:
    """`fields` as a tuple, validated.

    Raises:
        ValueError: none, a repeat, or a name not in `methods` (the message lists them).
    """
    fields = tuple(fields)
    unknown = [f for f in fields if f not in methods]
    if not fields or unknown or len(set(fields)) != len(fields):
        raise ValueError(
            f"Sequence Salience fields {list(fields)}: give each at least once and once only, from: {list(methods)}."
        )
    return fields


class SequenceTokenizerModel(lit_model.BatchedModel):
    """`_{model}_tokenizer`: the causal LM's tokens of `prompt` (chat template included) and `target`."""

    def __init__(self, lm: lit_model.Model):
        self._lm = lm

    def input_spec(self) -> lit_types.Spec:
        return dict(pd_constants.INPUT_SPEC)

    def output_spec(self) -> lit_types.Spec:
        return dict(pd_constants.OUTPUT_SPEC_TOKENIZER)

    def max_minibatch_size(self) -> int:
        return 64

    def predict_minibatch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        return [{TOKENS_FIELD: list(tokens)} for tokens in self._lm.tokenize(inputs)]


class SequenceSalienceModel(lit_model.BatchedModel):
    """`_{model}_salience`: one `TokenScores` field per lit_sig method, aligned to the LM's `tokens`.

    Args:
        lm: the causal LM (`lit_sig.HFCausalLM`, or a LIT wrapper of it).
        fields: the methods served, in the module's button order (default `DEFAULT_FIELDS`).
        methods: the methods by field name (default `METHODS`: every registry method).

    Raises:
        ValueError: an unknown or repeated field.
    """

    def __init__(
        self,
        lm: lit_model.Model,
        fields: Sequence[str] = DEFAULT_FIELDS,
        methods: Mapping[str, SalienceField] = METHODS,
    ):
        self._lm = lm
        self.fields = check_fields(fields, methods)
        self._methods = {name: methods[name] for name in self.fields}
        self._interpreters = {name: method.interpreter() for name, method in self._methods.items()}
        self._configs = {name: method.config() for name, method in self._methods.items()}
        for name, interpreter in self._interpreters.items():
            if hasattr(interpreter, "parse_config"):  # Fail at start-up, not on the first click.
                interpreter.parse_config(self._configs[name])

    def method(self, field: str) -> tuple[lit_components.Interpreter, JsonDict]:
        """The interpreter and config that compute `field` (to repeat it in a notebook)."""
        return self._interpreters[field], dict(self._configs[field])

    @property
    def signed_fields(self) -> tuple[str, ...]:
        return signed_fields(self._methods)

    @property
    def reads_gradients(self) -> bool:
        """Whether `predict` runs the LM's one gradient pass (a row per input), which the gradient fields read."""
        return any(m.uses_gradients for m in self._methods.values())

    def salience_runs(self) -> list[tuple[lit_components.Interpreter, JsonDict]]:
        """What `predict` runs on every input beside that pass: the interpreter and config of each other field."""
        return [self.method(name) for name, method in self._methods.items() if not method.uses_gradients]

    def token_counts(self, inputs: Sequence[JsonDict]) -> list[int]:
        """Tokens each input is scored on (prompt with its template, then target), without running the LM.

        An input without a target (which `predict` would first generate) counts its target as one token.
        """
        filled = [{**_model_input(e), TARGET_FIELD: e.get(TARGET_FIELD) or "."} for e in inputs]
        return [len(tokens) for tokens in self._lm.tokenize(filled)]

    def input_spec(self) -> lit_types.Spec:
        return pd_constants.INPUT_SPEC | pd_constants.INPUT_SPEC_SALIENCE

    def output_spec(self) -> lit_types.Spec:
        return dict(pd_constants.OUTPUT_SPEC_TOKENIZER) | {
            name: lit_types.TokenScores(align=TOKENS_FIELD) for name in self.fields
        }

    def max_minibatch_size(self) -> int:
        return 8

    @property
    def supports_concurrent_predictions(self) -> bool:
        return bool(getattr(self._lm, "supports_concurrent_predictions", False))

    def predict(self, inputs: Iterable[JsonDict], **unused_kw: Any) -> list[JsonDict]:
        """Every field for every input: each method runs once over all of them (rows of several per pass)."""
        inputs = [_model_input(example) for example in inputs]
        if not inputs:
            return []
        gradients = None
        if any(m.uses_gradients for m in self._methods.values()):
            gradients = list(self._lm.predict(inputs))
        results: list[JsonDict] = [{} for _ in inputs]
        for name, method in self._methods.items():
            outputs = self._interpreters[name].run(
                inputs,
                self._lm,
                None,
                model_outputs=gradients if method.uses_gradients else None,
                config=self._configs[name],
            )
            for result, output in zip(results, outputs):
                tokens, scores = _token_scores(output, name)
                if result.setdefault(TOKENS_FIELD, tokens) != tokens:
                    raise AssertionError(f"{name} scored other tokens than the methods before it.")
                result[name] = scores
        return results

    def predict_minibatch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        return self.predict(inputs)


def _model_input(example: JsonDict) -> JsonDict:
    """The example's LM inputs (LIT's `_id` and `_meta` dropped)."""
    return {key: value for key, value in example.items() if not key.startswith("_")}


def _token_scores(output: JsonDict, name: str) -> tuple[list[str], np.ndarray]:
    """The one `TokenSalience` of an interpreter's result: its tokens and `[T]` float32 scores."""
    saliences = [value for value in output.values() if hasattr(value, "salience") and hasattr(value, "tokens")]
    if len(saliences) != 1:
        raise AssertionError(f"{name}: expected one token salience per input, got {len(saliences)}.")
    return list(saliences[0].tokens), np.asarray(saliences[0].salience, dtype=np.float32)


def model_group(name: str, lm: lit_model.Model, fields: Sequence[str] = DEFAULT_FIELDS) -> dict[str, lit_model.Model]:
    """`{name: lm, _{name}_salience: ..., _{name}_tokenizer: ...}`, the names LIT's module looks for."""
    salience_name, tokenizer_name = pd_utils.generate_model_group_names(name)
    return {name: lm, salience_name: SequenceSalienceModel(lm, fields), tokenizer_name: SequenceTokenizerModel(lm)}
