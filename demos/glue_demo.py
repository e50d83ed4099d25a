"""Offline LIT demo: an SST-2 sentiment model and the four lit_sig interpreters.

    python -m demos.glue_demo [--data ../shared/data/sst2/dev.tsv] [--port 5432]

Wiring only: flags, then the model, the data set and `lit_sig.server.serve`.
"""

import os
from collections.abc import Sequence

from absl import app, flags
from lit_nlp import server_flags
from lit_nlp.api import components as lit_components
from lit_nlp.api import layout
from lit_nlp.components import core

import lit_sig
from lit_sig import datasets, models, server

_MODEL = flags.DEFINE_string("model", None, "Hugging Face name or local path (default: the embedded SST-2 model).")
_LABELS = flags.DEFINE_list("labels", ["0", "1"], "Class names of --model, in logit order.")
_DATA = flags.DEFINE_string("data", None, "GLUE-style TSV with a header and sentence, label columns (default: built-in sentences).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Serve at most this many examples.", lower_bound=1)
_DEVICE = flags.DEFINE_enum("device", None, list(server.DEVICES), "Where the model runs (default: cuda when available).")
_PRECISION = flags.DEFINE_enum(
    "precision", "float32", list(models.PRECISIONS), "Run the model under autocast at this precision (GPU)."
)
_ALLOW_LOADING = flags.DEFINE_bool("allow_loading", False, "Let the UI load new models and data sets.")
_DATAPOINTS_DIR = flags.DEFINE_string(
    "datapoints_dir", None, "Folder where the UI may save and load datapoints (default: off)."
)
_DEFAULT_LIMITS = server.Limits()
_MAX_INPUTS = flags.DEFINE_integer(
    "max_inputs", _DEFAULT_LIMITS.max_inputs,
    "Inputs per prediction or interpretation request (raised to the data set's size).", lower_bound=1,
)
_MAX_REQUEST_COST = flags.DEFINE_integer(
    "max_request_cost", _DEFAULT_LIMITS.max_request_cost,
    "Token-rows per interpretation request: the sum over inputs of tokens x model rows"
    " (IG: steps; SIG: tokens x steps).", lower_bound=1,
)
_MAX_HEAVY_REQUESTS = flags.DEFINE_integer(
    "max_heavy_requests", _DEFAULT_LIMITS.max_heavy_requests,
    "Interpretations running at once (default: the CPU cores).", lower_bound=1,
)
_MAX_QUEUED_REQUESTS = flags.DEFINE_integer(
    "max_queued_requests", _DEFAULT_LIMITS.max_queued_requests,
    "Interpretations waiting for a slot; more are answered 503 with Retry-After.", lower_bound=1,
)
_REQUEST_DEADLINE_S = flags.DEFINE_float(
    "request_deadline_s", _DEFAULT_LIMITS.request_deadline_s,
    "Seconds after which a request's work is abandoned (503).", lower_bound=0.001,
)
_READ_TIMEOUT_S = flags.DEFINE_float(
    "read_timeout_s", _DEFAULT_LIMITS.read_timeout_s,
    "Seconds a connection may stay silent while a request is read.", lower_bound=0.001,
)
flags.register_validator(
    "datapoints_dir", lambda path: path is None or os.path.isdir(path), "--datapoints_dir must be an existing folder."
)
flags.register_validator(
    "labels", lambda labels: bool(labels) and all(labels) and len(set(labels)) == len(labels),
    "--labels must name at least one class, each once.",
)

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
    """Ours, named apart from LIT's ("Integrated Gradients") so both can be compared.

    IG (n rows) runs on every selection, SIG (T x n rows) on request. Completeness
    deltas go to the server log: LIT's salience module can't show them.
    """
    return {
        "lit_sig Gradient Norm": lit_sig.GradientNorm(),
        "lit_sig Gradient x Input": lit_sig.GradientDotInput(),
        "lit_sig Integrated Gradients": lit_sig.IntegratedGradients(autorun=True, report_completeness=False),
        "Sequential Integrated Gradients": lit_sig.SequentialIntegratedGradients(
            autorun=False, report_completeness=False
        ),
    }


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    server.check_device(_DEVICE.value)
    if _DATA.value is None:
        dataset = datasets.builtin(_MAX_EXAMPLES.value)
    else:
        dataset = datasets.glue_tsv(_DATA.value, _MAX_EXAMPLES.value)
    if _MODEL.value is None:
        if _LABELS.present:
            raise ValueError("--labels applies to --model only; the embedded model's classes are 0 and 1.")
        model = models.minilm_sst2(_DEVICE.value, precision=_PRECISION.value)
    else:
        model = models.HFSequenceClassifier.from_pretrained(
            _MODEL.value, labels=_LABELS.value, device=_DEVICE.value, precision=_PRECISION.value
        )
    lit_models = {"sst2_minilm" if _MODEL.value is None else _MODEL.value: model}
    server.serve(
        lit_models,
        {"sentences": dataset},
        interpreters=lit_sig_interpreters() | core.default_interpreters(lit_models),  # Ours on top.
        layouts=layout.DEFAULT_LAYOUTS | {"lit_sig": SALIENCE_LAYOUT},
        allow_loading=_ALLOW_LOADING.value,
        datapoints_dir=_DATAPOINTS_DIR.value,
        limits=server.Limits(
            max_inputs=_MAX_INPUTS.value, max_request_cost=_MAX_REQUEST_COST.value,
            max_heavy_requests=_MAX_HEAVY_REQUESTS.value, max_queued_requests=_MAX_QUEUED_REQUESTS.value,
            request_deadline_s=_REQUEST_DEADLINE_S.value, read_timeout_s=_READ_TIMEOUT_S.value,
        ),
        **(server_flags.get_flags() | {"default_layout": "lit_sig"}),
    )


if __name__ == "__main__":
    server.run(main)
