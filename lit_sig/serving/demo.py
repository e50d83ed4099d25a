"""The offline LIT demo as a console script: `lit-sig-demo [--data dev.tsv] [--port 5432]`.

The SST-2 sentiment model (or `--model`), a data set and the four lit_sig
interpreters, served by `lit_sig.serving.server`. This is the installed twin of
`python -m demos.glue_demo` (which works from a checkout only: `demos` is not
installed); both take the same flags.

Flags are defined when `main()` runs, not on import, so importing this module
next to `demos.glue_demo` does not clash in absl's global flag registry.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import app, flags
from lit_nlp import server_flags
from lit_nlp.api import components as lit_components
from lit_nlp.api import layout
from lit_nlp.components import core

from lit_sig import models
from lit_sig.lit import interpreters, registry
from lit_sig.models import datasets
from lit_sig.serving import server


@dataclasses.dataclass(frozen=True)
class ServerFlags:
    """The flags every lit_sig demo shares: where the model runs, datapoints, and the server's work bounds."""

    device: flags.FlagHolder[str | None]
    precision: flags.FlagHolder[str]
    datapoints_dir: flags.FlagHolder[str | None]
    max_inputs: flags.FlagHolder[int]
    max_request_cost: flags.FlagHolder[int]
    max_heavy_requests: flags.FlagHolder[int]
    max_queued_requests: flags.FlagHolder[int]
    request_deadline_s: flags.FlagHolder[float]
    read_timeout_s: flags.FlagHolder[float]

    def limits(self) -> server.Limits:
        """The server's work bounds that the flags give."""
        return server.Limits(
            max_inputs=self.max_inputs.value,
            max_request_cost=self.max_request_cost.value,
            max_heavy_requests=self.max_heavy_requests.value,
            max_queued_requests=self.max_queued_requests.value,
            request_deadline_s=self.request_deadline_s.value,
            read_timeout_s=self.read_timeout_s.value,
        )


@dataclasses.dataclass(frozen=True)
class _Flags:
    """The demo's own flags (LIT's server flags come from `lit_nlp.server_flags`)."""

    model: flags.FlagHolder[str | None]
    labels: flags.FlagHolder[list[str]]
    data: flags.FlagHolder[str | None]
    max_examples: flags.FlagHolder[int | None]
    allow_loading: flags.FlagHolder[bool]
    server: ServerFlags


def define_server_flags() -> ServerFlags:
    """Defines `ServerFlags` in absl's global registry; call once per process."""
    defaults = server.Limits()
    defined = ServerFlags(
        device=flags.DEFINE_enum(
            "device", None, list(server.DEVICES), "Where the model runs (default: cuda when available)."
        ),
        precision=flags.DEFINE_enum(
            "precision", "float32", list(models.PRECISIONS), "Run the model under autocast at this precision (GPU)."
        ),
        datapoints_dir=flags.DEFINE_string(
            "datapoints_dir", None, "Folder where the UI may save and load datapoints (default: off)."
        ),
        max_inputs=flags.DEFINE_integer(
            "max_inputs",
            defaults.max_inputs,
            "Inputs per prediction or interpretation request (raised to the data set's size).",
            lower_bound=1,
        ),
        max_request_cost=flags.DEFINE_integer(
            "max_request_cost",
            defaults.max_request_cost,
            "Token-rows per interpretation request: the sum over inputs of tokens x model rows"
            " (IG: steps; SIG: tokens x steps).",
            lower_bound=1,
        ),
        max_heavy_requests=flags.DEFINE_integer(
            "max_heavy_requests",
            defaults.max_heavy_requests,
            "Interpretations running at once (default: the CPU cores).",
            lower_bound=1,
        ),
        max_queued_requests=flags.DEFINE_integer(
            "max_queued_requests",
            defaults.max_queued_requests,
            "Interpretations waiting for a slot; more are answered 503 with Retry-After.",
            lower_bound=1,
        ),
        request_deadline_s=flags.DEFINE_float(
            "request_deadline_s",
            defaults.request_deadline_s,
            "Seconds after which a request's work is abandoned (503).",
            lower_bound=0.001,
        ),
        read_timeout_s=flags.DEFINE_float(
            "read_timeout_s",
            defaults.read_timeout_s,
            "Seconds a connection may stay silent while a request is read.",
            lower_bound=0.001,
        ),
    )
    flags.register_validator(
        "datapoints_dir",
        lambda path: path is None or os.path.isdir(path),
        "--datapoints_dir must be an existing folder.",
    )
    return defined


def flag_holders(defined: Any) -> list[flags.FlagHolder]:
    """Every flag of a flags dataclass, nested ones (`ServerFlags`) included."""
    holders = []
    for value in (getattr(defined, field.name) for field in dataclasses.fields(defined)):
        holders += flag_holders(value) if dataclasses.is_dataclass(value) else [value]
    return holders


def register_key_flags(defined: Any) -> None:
    """`--help` lists the main module's key flags; under a console script that module is pip's wrapper."""
    for holder in flag_holders(defined):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[holder.name])


def define_flags() -> _Flags:
    """Defines the demo's flags in absl's global registry; call once per process."""
    defined = _Flags(
        model=flags.DEFINE_string(
            "model", None, "Hugging Face name or local path (default: the embedded SST-2 model)."
        ),
        labels=flags.DEFINE_list("labels", ["0", "1"], "Class names of --model, in logit order."),
        data=flags.DEFINE_string(
            "data", None, "GLUE-style TSV with a header and sentence, label columns (default: built-in sentences)."
        ),
        max_examples=flags.DEFINE_integer("max_examples", None, "Serve at most this many examples.", lower_bound=1),
        allow_loading=flags.DEFINE_bool("allow_loading", False, "Let the UI load new models and data sets."),
        server=define_server_flags(),
    )
    flags.register_validator(
        "labels",
        lambda labels: bool(labels) and all(labels) and len(set(labels)) == len(labels),
        "--labels must name at least one class, each once.",
    )
    return defined


_modules = layout.LitModuleName
SALIENCE_LAYOUT = layout.LitCanonicalLayout(
    upper={"Examples": [_modules.DataTableModule, _modules.DatapointEditorModule]},
    lower={
        "Salience": [_modules.ClassificationModule, _modules.SalienceMapModule],
        "Metrics": [_modules.MetricsModule, _modules.ConfusionMatrixModule],
        "Embeddings": [_modules.EmbeddingsModule],
    },
    layoutSettings=layout.LayoutSettings(mainHeight=45),
    description="Examples on top; predictions and token salience below, on the first screen.",
)


def lit_sig_interpreters() -> dict[str, lit_components.Interpreter]:
    """Ours, named apart from LIT's ("Integrated Gradients") so both can be compared, then captum's.

    IG (n rows) runs on every selection, SIG (T x n rows, or T + 1 forward passes
    with `Integration method: exact`) and the captum methods ("captum ...") on
    request. Completeness deltas go to the server log: LIT's salience module
    can't show them.
    """
    ui = registry.display_name
    return {
        ui("grad_norm"): interpreters.GradientNorm(),
        ui("grad_dot_input"): interpreters.GradientDotInput(),
        ui("ig"): interpreters.IntegratedGradients(autorun=True, report_completeness=False),
        ui("sig"): interpreters.SequentialIntegratedGradients(autorun=False, report_completeness=False),
    } | registry.captum_interpreters()


def serve(demo_flags: _Flags, argv: Sequence[str]) -> None:
    """Loads the model and data that the flags name and serves them until Ctrl-C.

    Raises:
        app.UsageError: positional arguments.
        ValueError: `--labels` without `--model`, or a bad file, model or device.
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    device = demo_flags.server.device.value
    server.check_device(device)
    max_examples = demo_flags.max_examples.value
    if demo_flags.data.value is None:
        dataset = datasets.builtin(max_examples)
    else:
        try:
            dataset = datasets.glue_tsv(demo_flags.data.value, max_examples)
        except ValueError as error:
            raise ValueError(f"--data: {error}") from error
    name = demo_flags.model.value
    precision = demo_flags.server.precision.value
    if name is None:
        if demo_flags.labels.present:
            raise ValueError("--labels applies to --model only; the embedded model's classes are 0 and 1.")
        model = models.minilm_sst2(device, precision=precision)
    else:
        model = models.HFSequenceClassifier.from_pretrained(
            name, labels=demo_flags.labels.value, device=device, precision=precision
        )
    lit_models: dict[str, Any] = {"sst2_minilm" if name is None else name: model}
    server.serve(
        lit_models,
        {"sentences": dataset},
        interpreters=lit_sig_interpreters() | core.default_interpreters(lit_models),  # Ours on top.
        layouts=layout.DEFAULT_LAYOUTS | {"lit_sig": SALIENCE_LAYOUT},
        allow_loading=demo_flags.allow_loading.value,
        datapoints_dir=demo_flags.server.datapoints_dir.value,
        limits=demo_flags.server.limits(),
        **(server_flags.get_flags() | {"default_layout": "lit_sig"}),
    )


def main() -> None:
    """The `lit-sig-demo` console script: parses sys.argv and serves (set-up errors: one line, status 2)."""
    demo_flags = define_flags()
    register_key_flags(demo_flags)
    server.run(lambda argv: serve(demo_flags, argv))


if __name__ == "__main__":
    main()
