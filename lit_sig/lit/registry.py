"""Salience methods by name, as the command lines and benchmarks take them.

`sig`, `exact_sig`, `ig`, `grad_norm`, `grad_dot_input`, and every bridged captum
method as `captum_<name>` (lower case, spaces as underscores: `captum_kernelshap`,
`captum_noisetunnel_ig`). Each name gives an interpreter and its config for a
number of steps, a baseline and normalization.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from lit_nlp.api import components as lit_components

from lit_sig.lit import captum_bridge, interpreters

CAPTUM_PREFIX = "captum_"


@dataclasses.dataclass(frozen=True)
class Method:
    """A salience method the command lines offer."""

    make: Callable[[], lit_components.Interpreter]
    steps_key: str | None = None  # The config key of its steps: `Interpolation steps`, captum's `n_steps`.
    takes_baseline: bool = False
    extra: tuple[tuple[str, Any], ...] = ()  # Fixed config entries.
    reads_model_gradients: bool = False  # Its salience comes from `predict`'s gradients (no passes of its own).

    def config(self, steps: int, baseline: str, normalize: bool) -> dict[str, Any]:
        """The interpreter config for these settings (validate it with the interpreter's `parse_config`)."""
        config: dict[str, Any] = {interpreters.NORMALIZATION_KEY: normalize, **dict(self.extra)}
        if self.takes_baseline:
            config[interpreters.BASELINE_KEY] = baseline
        if self.steps_key:
            config[self.steps_key] = steps
        return config


def captum_name(name: str) -> str:
    """The command-line name of a captum method: "NoiseTunnel IG" -> "captum_noisetunnel_ig"."""
    return CAPTUM_PREFIX + name.lower().replace(" ", "_")


def _captum(name: str) -> Method:
    steps = "n_steps" if any(p.key == "n_steps" for p in captum_bridge.METHODS[name].params) else None
    return Method(lambda: captum_bridge.CaptumInterpreter(name), steps_key=steps, takes_baseline=True)


METHODS: dict[str, Method] = {
    "sig": Method(interpreters.SequentialIntegratedGradients, interpreters.INTERPOLATION_KEY, takes_baseline=True),
    "exact_sig": Method(
        interpreters.SequentialIntegratedGradients,
        takes_baseline=True,
        extra=((interpreters.METHOD_KEY, interpreters.EXACT_METHOD),),
    ),
    "ig": Method(interpreters.IntegratedGradients, interpreters.INTERPOLATION_KEY, takes_baseline=True),
    "grad_norm": Method(interpreters.GradientNorm, reads_model_gradients=True),
    "grad_dot_input": Method(interpreters.GradientDotInput, reads_model_gradients=True),
} | {captum_name(name): _captum(name) for name in captum_bridge.METHODS}


def interpreter_and_config(
    name: str, steps: int, baseline: str, normalize: bool
) -> tuple[lit_components.Interpreter, dict[str, Any]]:
    """The interpreter of method `name` and its validated config; raises ValueError naming what is accepted."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; accepted: {', '.join(METHODS)}.")
    method = METHODS[name]
    interpreter = method.make()
    config = method.config(steps, baseline, normalize)
    if hasattr(interpreter, "parse_config"):  # Gradient Norm and Gradient x Input check at `run`.
        interpreter.parse_config(config)
    return interpreter, config
