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

# Help for each `server.Limits` field, which the demos offer as a flag of the same name.
LIMIT_FLAGS = {
    "max_inputs": "Inputs per prediction or interpretation request (raised to the data set's size).",
    "max_request_cost": "Token-rows per interpretation or generation: the sum over the examples it runs of tokens"
    " x model rows (IG: steps; SIG: tokens x steps; LIME: samples).",
    "light_request_cost": "Interpretations of at most this many token-rows run at once, without a heavy slot.",
    "max_heavy_requests": "Heavier interpretations, generations and priced predictions running at once (default:"
    " the CPU cores).",
    "max_queued_requests": "Heavy requests waiting for a slot; more are answered 503 with Retry-After.",
    "max_queue_wait_s": "A heavy request expected to wait longer for a slot gets 503 with Retry-After at once.",
    "request_deadline_s": "Seconds after its arrival at which a request's work is abandoned (503); a heavy request"
    " is admitted only if expected to finish within 80% of it (else 503 with Retry-After at once).",
    "read_timeout_s": "Seconds a connection may stay silent while a request is read.",
    "header_timeout_s": "Seconds in all to send a request's line and headers (408 beyond).",
    "body_timeout_s": "Seconds in all to send a request's body (408 beyond).",
    "max_connections": "Connections served at once; more are answered 503.",
    "max_new_data_bytes": "Bytes of posted data kept in all (with --allow_new_data).",
}


@dataclasses.dataclass(frozen=True)
class ServerFlags:
    """The flags every lit_sig demo shares: where the model runs, datapoints, and the server's work bounds."""

    device: flags.FlagHolder[str | None]
    precision: flags.FlagHolder[str]
    datapoints_dir: flags.FlagHolder[str | None]
    allow_new_data: flags.FlagHolder[bool]
    limit_flags: dict[str, flags.FlagHolder]  # One per `server.Limits` field.

    def limits(self) -> server.Limits:
        """The server's work bounds that the flags give."""
        return server.Limits(**{name: holder.value for name, holder in self.limit_flags.items()})


def _define_limit(name: str, default: int | float) -> flags.FlagHolder:
    if isinstance(default, int):
        return flags.DEFINE_integer(name, default, LIMIT_FLAGS[name], lower_bound=1)
    return flags.DEFINE_float(name, default, LIMIT_FLAGS[name], lower_bound=0.001)


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
        allow_new_data=flags.DEFINE_bool(
            "allow_new_data", False, "Let clients store examples on the server (/post_new_data) for a load link."
        ),
        limit_flags={
            field.name: _define_limit(field.name, getattr(defaults, field.name))
            for field in dataclasses.fields(server.Limits)
        },
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
        if dataclasses.is_dataclass(value):
            holders += flag_holders(value)
        else:
            holders += list(value.values()) if isinstance(value, dict) else [value]
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
        allow_new_data=demo_flags.server.allow_new_data.value,
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
