"""Interpreter config: the keys, one parser for their values, and the settings they make.

Every interpreter (lit_sig's and the captum bridge's) validates its keys with
`Param`, so a bad value gets the same kind of error everywhere: the key, the
accepted values, and what was given. A settings dataclass (`PathSettings`,
`GradientSettings`) lists an interpreter's keys, one field per key with its
`Param`: adding a key is adding a field there; `Schema` derives the defaults,
the parser and LIT's `config_spec` from it.
"""

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
from lit_nlp.api import types as lit_types

from lit_sig.core import quadrature
from lit_sig.core.adaptive import DEFAULT_TOLERANCE
from lit_sig.lit import protocol

CLASS_KEY = "Class to explain"
INTERPOLATION_KEY = "Interpolation steps"
METHOD_KEY = "Integration method"
BASELINE_KEY = "Baseline"
NORMALIZATION_KEY = "Normalize"
ADAPTIVE_KEY = "Adaptive steps"
TOLERANCE_KEY = "Tolerance"
LAYER_KEY = "Layer"
NEURON_KEY = "Neuron"
MIN_TOLERANCE, MAX_TOLERANCE = 1e-7, 1.0

# What a word token is replaced by at the start of a path. `zero`: the all-zeros embedding (every
# model has it; "no token"); the others: the embedding of that special token where the model's
# tokenizer has one ([MASK] for BERT-style encoders; an LM has none and uses pad, eos, bos or unk).
BASELINES = ("mask", "pad", "zero", "eos", "bos", "unk")
DEFAULT_STEPS = 50
DEFAULT_METHOD = "gausslegendre"
DEFAULT_BASELINE = "mask"
EXACT_METHOD = "exact"  # SIG's closed form: single-token occlusion, forward passes only.
EMBEDDINGS_LAYER = "embeddings"  # `Layer`: the word embeddings, as without the key.


@dataclasses.dataclass(frozen=True)
class Param:
    """One config key of an interpreter (for a bridged method, captum's own keyword where it has one)."""

    key: str
    default: Any
    low: float | None = None  # Numbers: the accepted range.
    high: float | None = None
    choices: tuple[str, ...] = ()  # Strings: the accepted values (none: any string).
    accepted: str = "a string"  # Free strings: what the error message asks for.
    convert: Callable[[Any], Any] | None = None  # Parses and validates a value the other rules don't cover.

    def parse(self, value: Any) -> Any:
        """Validates `value`; raises ValueError naming the accepted values."""
        if self.convert is not None:
            return self.convert(value)
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"Unknown {self.key} {value!r}; accepted: {', '.join(self.choices)}.")
            return value
        if isinstance(self.default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{self.key!r} must be true or false, got {value!r}.")
            return bool(value)
        if isinstance(self.default, str):
            value = "" if value is None else value
            if not isinstance(value, str):
                raise ValueError(f"{self.key!r} must be {self.accepted}, got {value!r}.")
            return value.strip()
        return self._number(value)

    def _number(self, value: Any) -> int | float:
        integer = isinstance(self.default, int)
        accepted = f"{'an integer' if integer else 'a number'} in [{self.low:g}, {self.high:g}]"
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, str) and not value.isascii()):
            raise ValueError(f"{self.key!r} must be {accepted}, got {value!r}.")  # Not full-width digits either.
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{self.key!r} must be {accepted}, got {value!r}.") from None
        if not self.low <= number <= self.high or (integer and not number.is_integer()):  # NaN fails too.
            raise ValueError(f"{self.key!r} must be {accepted}, got {value!r}.")
        return int(number) if integer else number

    def lit_type(self) -> lit_types.LitType:
        if self.choices:
            return lit_types.CategoryLabel(required=False, vocab=list(self.choices), default=self.default)
        if isinstance(self.default, bool):
            return lit_types.Boolean(required=False, default=self.default)
        if isinstance(self.default, str) or self.convert is not None:
            default = "" if self.default is None else str(self.default)
            return lit_types.TextSegment(required=False, default=default)
        step = 1 if isinstance(self.default, int) else 0.01
        return lit_types.Scalar(required=False, min_val=self.low, max_val=self.high, default=self.default, step=step)


def check_keys(config: Mapping[str, Any], accepted: list[str]) -> None:
    """Raises ValueError naming the accepted keys if `config` has any other."""
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown}; accepted: {accepted}.")


def setting(param: Param) -> Any:
    """A settings field read from the config key `param.key` (its default is the parsed default)."""
    return dataclasses.field(default=param.parse(param.default), metadata={"param": param})


_NUMBER = re.compile(r"[0-9]+")
_LAYER_ACCEPTED = (
    f"{EMBEDDINGS_LAYER!r} (the word embeddings) or a layer number i as in Hugging Face's hidden_states"
    " (0: the embedding module's output, i >= 1: block i's output)"
)
_NEURON_ACCEPTED = (
    "empty (off), 'L:U' (unit U of layer L's states, summed over the positions) or 'L:U:P' (at position P,"
    " counted over the whole tokenized sequence, [CLS] = 0)"
)


def parse_layer(value: Any) -> int | None:
    """`Layer`: None for the word embeddings ('embeddings' or empty), else a layer number."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", EMBEDDINGS_LAYER)):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 0:
        return int(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return int(value.strip())
    raise ValueError(f"{LAYER_KEY!r} must be {_LAYER_ACCEPTED}, got {value!r}.")


def parse_neuron(value: Any) -> protocol.Neuron | None:
    """`Neuron`: None (off) for an empty value, else `L:U` or `L:U:P`."""
    if isinstance(value, protocol.Neuron):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = value.strip().split(":") if isinstance(value, str) else []
    if 2 <= len(parts) <= 3 and all(_NUMBER.fullmatch(part.strip()) for part in parts):
        return protocol.Neuron(*(int(part) for part in parts))
    raise ValueError(f"{NEURON_KEY!r} must be {_NEURON_ACCEPTED}, got {value!r}.")


LAYER_PARAM = Param(LAYER_KEY, EMBEDDINGS_LAYER, accepted=_LAYER_ACCEPTED, convert=parse_layer)
NEURON_PARAM = Param(NEURON_KEY, "", accepted=_NEURON_ACCEPTED, convert=parse_neuron)


@dataclasses.dataclass(frozen=True)
class GradientSettings:
    """Validated config of Gradient Norm and Gradient x Input."""

    normalize: bool = setting(Param(NORMALIZATION_KEY, True))
    layer: int | None = setting(LAYER_PARAM)  # None: the gradients of `predict` (word embeddings)
    neuron: protocol.Neuron | None = setting(NEURON_PARAM)


@dataclasses.dataclass(frozen=True)
class PathSettings:
    """Validated IG/SIG config, one field per key (values cross-checked by the interpreter)."""

    class_to_explain: str = setting(Param(CLASS_KEY, "", accepted="a class name string"))
    steps: int = setting(Param(INTERPOLATION_KEY, DEFAULT_STEPS, quadrature.MIN_STEPS, quadrature.MAX_STEPS))
    method: str = setting(Param(METHOD_KEY, DEFAULT_METHOD, choices=(*quadrature.METHODS, EXACT_METHOD)))
    baseline: str = setting(Param(BASELINE_KEY, DEFAULT_BASELINE, choices=BASELINES))
    normalize: bool = setting(Param(NORMALIZATION_KEY, True))
    adaptive: bool = setting(Param(ADAPTIVE_KEY, False))
    tolerance: float = setting(Param(TOLERANCE_KEY, DEFAULT_TOLERANCE, MIN_TOLERANCE, MAX_TOLERANCE))
    layer: int | None = setting(LAYER_PARAM)  # None: the word embeddings
    neuron: protocol.Neuron | None = setting(NEURON_PARAM)  # None: the model's own score


def explains_inside(settings: GradientSettings | PathSettings) -> bool:
    """Whether the settings explain at a layer or explain a neuron (else: as without the keys)."""
    return settings.layer is not None or settings.neuron is not None


Settings = TypeVar("Settings")


class Schema:
    """An interpreter's keys (the fields of a settings dataclass), with its own defaults.

    Args:
        settings_type: `PathSettings` or another dataclass whose fields carry a `Param`.
        defaults: the interpreter's defaults, by field name (e.g. `steps=20`).
        choices: accepted values replacing a field's own, by field name (IG has no `exact`).
    """

    def __init__(
        self, settings_type: type[Settings], defaults: Mapping[str, Any], choices: Mapping[str, tuple[str, ...]]
    ):
        self._type = settings_type
        self._params = {f.name: f.metadata["param"] for f in dataclasses.fields(settings_type)}  # field -> Param
        if unknown := sorted(set(defaults) - set(self._params)):
            raise TypeError(f"Unknown setting(s) {unknown}; accepted: {list(self._params)}.")
        for name, value in defaults.items():
            self._params[name] = dataclasses.replace(self._params[name], default=value)
        for name, accepted in choices.items():
            self._params[name] = dataclasses.replace(self._params[name], choices=tuple(accepted))
        self.keys = [p.key for p in self._params.values()]

    def parse(self, config: Mapping[str, Any] | None) -> Settings:
        """Validates `config` over the defaults; raises ValueError naming accepted keys and values."""
        config = dict(config or {})
        check_keys(config, self.keys)
        values = {name: p.parse(config.get(p.key, p.default)) for name, p in self._params.items()}
        return self._type(**values)

    def spec(self) -> lit_types.Spec:
        """LIT's `config_spec`: every key with its default and accepted values."""
        return {p.key: p.lit_type() for p in self._params.values()}
