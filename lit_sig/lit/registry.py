"""Every salience method lit_sig offers, by one name: the command lines, benchmarks, JSON rows and the demo.

    >>> from lit_sig.lit import registry
    >>> registry.list_methods()[:6]
    ['sig', 'exact_sig', 'adaptive_sig', 'ig', 'grad_norm', 'grad_dot_input']
    >>> registry.METHODS["sig"].display_name  # Its name in the LIT UI.
    'Sequential Integrated Gradients'

`sig`, `exact_sig`, `adaptive_sig`, `ig`, `grad_norm`, `grad_dot_input`, and every bridged
captum method as `captum_<name>` (lower case, spaces as underscores: `captum_kernelshap`,
`captum_noisetunnel_ig`). Each name gives an interpreter and its config for a number of steps, a
baseline and normalization, and the name the demo serves it under. Files written before the
names were unified (benchmark summaries with `sequential_integrated_gradients`, `captum:KernelShap`
...) read through `canonical`.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from lit_nlp.api import components as lit_components

from lit_sig.lit import captum_bridge, interpreters

CAPTUM_PREFIX = "captum_"


@dataclasses.dataclass(frozen=True)
class Method:
    """A salience method: its interpreter, how settings become its config, and its names.

    Attributes:
        name: the one name of the method in flags, rows and benchmark files.
        display_name: the interpreter's name in the LIT UI.
        description: one line for `--help` and tables.
        make: builds the interpreter (keyword arguments: the interpreter's own, e.g. `autorun`).
        steps_key: the config key of its steps (`Interpolation steps`, captum's `n_steps`), or None.
        takes_baseline: its config takes a baseline.
        extra: fixed config entries (exact SIG's integration method, adaptive steps).
        reads_model_gradients: its salience comes from `predict`'s gradients (no passes of its own).
        score_rows_only: all its rows are score-only (exact SIG): a `lit_sig.core.checkpoint` keeps every one.
    """

    name: str
    display_name: str
    description: str
    make: Callable[..., lit_components.Interpreter]
    steps_key: str | None = None
    takes_baseline: bool = False
    extra: tuple[tuple[str, Any], ...] = ()
    reads_model_gradients: bool = False
    score_rows_only: bool = False

    def config(self, steps: int | None, baseline: str | None, normalize: bool) -> dict[str, Any]:
        """The interpreter config for these settings (validate it with the interpreter's `parse_config`)."""
        config: dict[str, Any] = {interpreters.NORMALIZATION_KEY: normalize, **dict(self.extra)}
        if self.takes_baseline and baseline is not None:
            config[interpreters.BASELINE_KEY] = baseline
        if self.steps_key and steps is not None:
            config[self.steps_key] = steps
        return config


def captum_name(name: str) -> str:
    """The registry name of a captum method: "NoiseTunnel IG" -> "captum_noisetunnel_ig"."""
    return CAPTUM_PREFIX + name.lower().replace(" ", "_")


def _captum(name: str) -> Method:
    method = captum_bridge.METHODS[name]
    steps = "n_steps" if any(p.key == "n_steps" for p in method.params) else None
    return Method(
        captum_name(name),
        f"captum {name}",
        method.description,
        lambda **kwargs: captum_bridge.CaptumInterpreter(name, **kwargs),
        steps_key=steps,
        takes_baseline=True,
    )


_SIG = interpreters.SequentialIntegratedGradients
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "sig",
            "Sequential Integrated Gradients",
            "SIG: one IG path per token, the others fixed (T x steps gradient rows).",
            _SIG,
            interpreters.INTERPOLATION_KEY,
            takes_baseline=True,
        ),
        Method(
            "exact_sig",
            "Sequential Integrated Gradients (exact)",
            "SIG in closed form: occlusion of each token (T + 1 forward rows).",
            _SIG,
            takes_baseline=True,
            extra=((interpreters.METHOD_KEY, interpreters.EXACT_METHOD),),
            score_rows_only=True,
        ),
        Method(
            "adaptive_sig",
            "Sequential Integrated Gradients (adaptive steps)",
            "SIG with steps refined per token until its completeness error is under the tolerance.",
            _SIG,
            takes_baseline=True,
            extra=((interpreters.ADAPTIVE_KEY, True),),
        ),
        Method(
            "ig",
            "lit_sig Integrated Gradients",
            "Integrated Gradients over every word token at once (steps gradient rows).",
            interpreters.IntegratedGradients,
            interpreters.INTERPOLATION_KEY,
            takes_baseline=True,
        ),
        Method(
            "grad_norm",
            "lit_sig Gradient Norm",
            "L2 norm of the gradient at each token (from predict's gradients).",
            interpreters.GradientNorm,
            reads_model_gradients=True,
        ),
        Method(
            "grad_dot_input",
            "lit_sig Gradient x Input",
            "gradient . embedding at each token (from predict's gradients).",
            interpreters.GradientDotInput,
            reads_model_gradients=True,
        ),
    )
} | {captum_name(name): _captum(name) for name in captum_bridge.METHODS}

# Names used before there was one registry (benchmark files, caches), and the name each is now.
LEGACY_NAMES: dict[str, str] = {
    "integrated_gradients": "ig",
    "sequential_integrated_gradients": "sig",
    "exact_sequential_integrated_gradients": "exact_sig",
    "adaptive_sequential_integrated_gradients": "adaptive_sig",
    "integrated_gradients_batch": "ig_batch",  # benchmarks.speed: IG over many sentences in one run.
    "lit_integrated_gradients": "lit_ig",  # benchmarks.faithfulness: LIT's own IG.
} | {f"captum:{name}": captum_name(name) for name in captum_bridge.METHODS}


def list_methods() -> list[str]:
    """Every method's name, in the order the command lines list them."""
    return list(METHODS)


def get(name: str) -> Method:
    """The method called `name`; raises ValueError naming the accepted names."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; accepted: {', '.join(METHODS)}.")
    return METHODS[name]


def display_name(name: str) -> str:
    """The name the LIT UI shows for method `name` (the demo's interpreter name)."""
    return get(name).display_name


def captum_interpreters(**kwargs: Any) -> dict[str, lit_components.Interpreter]:
    """Every bridged captum method as the demos serve it: `{display name: interpreter}`."""
    return {m.display_name: m.make(**kwargs) for m in METHODS.values() if m.name.startswith(CAPTUM_PREFIX)}


def canonical(name: str) -> str:
    """`name` as it is called now (a name from before the registry is mapped; others pass through)."""
    return LEGACY_NAMES.get(name, name)


def interpreter_and_config(
    name: str, steps: int | None, baseline: str | None, normalize: bool
) -> tuple[lit_components.Interpreter, dict[str, Any]]:
    """The interpreter of method `name` and its validated config; raises ValueError naming what is accepted."""
    method = get(name)
    interpreter = method.make()
    config = method.config(steps, baseline, normalize)
    if hasattr(interpreter, "parse_config"):  # Gradient Norm and Gradient x Input check at `run`.
        interpreter.parse_config(config)
    return interpreter, config
