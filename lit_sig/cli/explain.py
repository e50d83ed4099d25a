"""Explains a whole data set from the command line, on one machine or a Ray cluster.

    python -m lit_sig.cli.explain --data dev.tsv --method sig --steps 50 --out sig.parquet
    python -m lit_sig.cli.explain --data dev.tsv --out sig.jsonl --ray local --ray_workers 2
    python -m lit_sig.cli.explain --model smollm2 --chat_template --data prompts.jsonl --method exact_sig --out lm.jsonl

Writes one row per example: its `id` (0-based position in the data), sentence,
gold label, predicted class and probabilities, word-piece tokens, raw salience
(`--normalize` scales each row so that |salience| sums to 1) and completeness
delta (null for the gradient methods). Examples are sorted by length, longest first, and
explained `--batch_size` at a time. Finished rows go to `OUT.partial.jsonl` after
each batch; a restart with the same flags skips every row already there or in
OUT, and OUT itself is only ever written whole (temporary file, then rename).

`--ray ADDRESS` (or `local`) runs the batches on a Ray cluster through Ray Data,
one model actor per worker (one GPU each where the cluster has GPUs). It needs
`pip install 'lit_sig[ray]'`, with lit_sig installed on every node; the rows are
the same as on one machine.

A causal LM (`--model smollm2`, or any `*ForCausalLM` checkpoint) reads JSON Lines of
`prompt` and an optional `target` (the model's greedy response where absent, at most
`--max_new_tokens`); its rows hold the prompt, the target, whether it was generated, every
token, their salience, the target's log-probability (`score`) and the completeness delta
(see `lit_sig.cli.explain_lm`), with the same batches, resuming and Ray support.
"""

import argparse
import importlib
import pathlib
import sys
from collections.abc import Sequence

import torch
import transformers

from lit_sig import models
from lit_sig.cli import explain_lm, rows_io, runner
from lit_sig.cli.job import EMBEDDED_MODEL, TARGETS, Job
from lit_sig.core import quadrature
from lit_sig.lit import config as config_lib
from lit_sig.lit import interpreters, registry
from lit_sig.models import datasets, sst2_model

OUTPUT_SUFFIXES = (".parquet", ".jsonl")
LABELS_HELP = "Comma-separated class names in logit order (default: the model's id2label, or 0,1,...)."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lit_sig.cli.explain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="GLUE-style TSV (sentence, label) or JSONL file (an LM's: prompt, target)."
    )
    parser.add_argument("--out", required=True, help="Output file: .parquet or .jsonl.")
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help=f"{EMBEDDED_MODEL!r} (the embedded SST-2 model), a Hugging Face classifier path or name, or a"
        f" causal LM: {explain_lm.SMOLLM2!r} (SmolLM2-135M-Instruct) or a *ForCausalLM checkpoint.",
    )
    parser.add_argument("--labels", default=None, help=LABELS_HELP)
    parser.add_argument(
        "--method",
        default="sig",
        choices=registry.list_methods(),
        help="Salience method (captum_*: captum's, see the README).",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=interpreters.DEFAULT_STEPS,
        help=f"Interpolation steps of IG, SIG and captum's NoiseTunnel methods, in [{quadrature.MIN_STEPS},"
        f" {quadrature.MAX_STEPS}].",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        choices=list(interpreters.BASELINES),
        help="Baseline embedding of IG, SIG, exact SIG and the captum methods (default: mask for a classifier,"
        " zero for an LM, which has no [MASK]).",
    )
    parser.add_argument(
        "--normalize", action="store_true", help="Scale each row's salience so that |salience| sums to 1."
    )
    parser.add_argument(
        "--target",
        default="predicted",
        choices=list(TARGETS),
        help="Explain the predicted class, or the data's gold label.",
    )
    parser.add_argument(
        "--layer",
        default=config_lib.EMBEDDINGS_LAYER,
        help="Where path rows enter: 'embeddings' (the word embeddings), or a layer i as in Hugging Face's"
        " hidden_states (0: the embedding module's output, i: block i's output; every position moves).",
    )
    parser.add_argument(
        "--neuron",
        default="",
        help="Explain a neuron instead of the model's score: 'L:U' (unit U of layer L, summed over positions)"
        " or 'L:U:P' (at position P of the tokenized sequence, [CLS] = 0).",
    )
    parser.add_argument("--text_field", default="sentence", help="Text field of JSONL data.")
    parser.add_argument("--limit", type=int, default=None, help="Explain only the first N examples.")
    parser.add_argument("--batch_size", type=int, default=32, help="Examples per batch (and per model pass).")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps; default: CUDA when available.")
    parser.add_argument(
        "--precision",
        default="float32",
        choices=list(models.PRECISIONS),
        help="Run the model under autocast at this precision (recent GPUs; see the completeness deltas).",
    )
    parser.add_argument(
        "--torch_compile",
        action="store_true",
        help="Compile the model's gradient passes (torch.compile): the first batch compiles for minutes.",
    )
    parser.add_argument(
        "--chat_template", action="store_true", help="LM: wrap each prompt in the tokenizer's chat template."
    )
    parser.add_argument(
        "--max_new_tokens", type=int, default=32, help="LM: the longest response generated where a target is absent."
    )
    parser.add_argument("--ray", default=None, metavar="ADDRESS", help="Run on this Ray cluster, or 'local'.")
    parser.add_argument("--ray_workers", type=int, default=2, help="Model actors on the Ray cluster.")
    return parser


def parse_labels(value: str | None) -> tuple[str, ...] | None:
    """`--labels`: comma-separated class names in logit order (None: not given)."""
    if value is None:
        return None
    labels = tuple(label.strip() for label in value.split(","))
    if len(labels) < 2 or not all(labels) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels {value!r}: give two or more distinct comma-separated class names.")
    return labels


def model_labels(model: str) -> tuple[str, ...]:
    """The classes of `--model` in logit order: the embedded model's, else the config's `id2label`
    names, or "0", "1", ... where those are transformers' placeholders (LABEL_0, LABEL_1, ...)."""
    if model == EMBEDDED_MODEL:
        return datasets.LABELS
    try:
        config = transformers.AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {model!r}: can't load it ({error}).") from None
    count = config.num_labels
    if count < 2:
        raise ValueError(f"--model {model!r} has {count} output; the command lines explain classifiers.")
    names = [str(config.id2label.get(i, i)) for i in range(count)]
    return tuple(str(i) for i in range(count)) if names == [f"LABEL_{i}" for i in range(count)] else tuple(names)


def resolve_labels(model: str, value: str | None) -> tuple[str, ...]:
    """The classes a run uses: `--labels` where given (checked against the model's count), else the model's."""
    labels, own = parse_labels(value), model_labels(model)
    if labels is None:
        return own
    if model == EMBEDDED_MODEL and labels != own:
        raise ValueError(f"--labels: the embedded model's classes are {','.join(own)}.")
    if len(labels) != len(own):
        raise ValueError(f"--labels {value!r} names {len(labels)} classes; --model {model!r} has {len(own)}.")
    return labels


def parse_device(value: str | None, local: bool) -> str | None:
    """`--device`: a torch device name; CUDA must be there when the run is `local`."""
    if value is None:
        return None
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"--device {value!r}: accepted: cpu, cuda, cuda:N, mps.") from None
    if local and device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {value!r}: CUDA is not available here; use cpu.")
    return value


def parse_inside(layer: str, neuron: str) -> tuple[str, str]:
    """`--layer` and `--neuron`, checked and written as rows record them ("embeddings" or "3"; "" or "2:5:1").
    The model checks the range (its layers, units and positions) on the first batch."""
    try:
        parsed_layer, parsed_neuron = config_lib.parse_layer(layer), config_lib.parse_neuron(neuron)
    except ValueError as error:
        raise ValueError(f"--layer {layer!r} / --neuron {neuron!r}: {error}") from None
    layer = config_lib.EMBEDDINGS_LAYER if parsed_layer is None else str(parsed_layer)
    return layer, "" if parsed_neuron is None else str(parsed_neuron)


def _check_kind_flags(args: argparse.Namespace, kind: str) -> None:
    """Refuses flags of the other kind of model."""
    if kind == "lm":
        given = [
            flag
            for flag, value, default in (
                ("--labels", args.labels, None),
                ("--target", args.target, "predicted"),
                ("--text_field", args.text_field, "sentence"),
            )
            if value != default
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)}: not for a causal LM, which reads 'prompt' and 'target' from JSON Lines."
            )
    elif args.chat_template or args.max_new_tokens != 32:
        raise ValueError("--chat_template and --max_new_tokens are for causal LMs; --model is a classifier.")


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    try:
        if out.suffix not in OUTPUT_SUFFIXES:
            raise ValueError(f"--out {out}: unknown suffix; accepted: {', '.join(OUTPUT_SUFFIXES)}.")
        if not out.parent.is_dir():
            raise ValueError(f"--out {out}: the folder {out.parent} does not exist.")
        counts = {
            "--limit": args.limit,
            "--batch_size": args.batch_size,
            "--ray_workers": args.ray_workers,
            "--max_new_tokens": args.max_new_tokens,
        }
        for flag, value in counts.items():
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}.")
        kind = "lm" if explain_lm.is_causal_lm(args.model) else "classifier"
        _check_kind_flags(args, kind)
        labels = () if kind == "lm" else resolve_labels(args.model, args.labels)
        if args.baseline is None:
            args.baseline = explain_lm.DEFAULT_BASELINE if kind == "lm" else interpreters.DEFAULT_BASELINE
        method = registry.get(args.method)
        layer, neuron = parse_inside(args.layer, args.neuron)
        job = Job(
            model=args.model,
            labels=labels,
            method=args.method,
            steps=args.steps if method.steps_key else None,
            baseline=args.baseline if method.takes_baseline else None,
            normalize=args.normalize,
            target=args.target,
            device=parse_device(args.device, local=args.ray is None),
            batch_size=args.batch_size,
            data=str(pathlib.Path(args.data).resolve()),
            precision=args.precision,
            torch_compile=args.torch_compile,
            kind=kind,
            chat_template=args.chat_template,
            max_new_tokens=args.max_new_tokens,
            layer=layer,
            neuron=neuron,
        )
        try:
            job.interpreter()
        except ValueError as error:  # The message names the config key: steps or baseline.
            raise ValueError(f"--method {args.method} with --steps/--baseline: {error}") from None
        if args.ray is not None:
            try:
                importlib.import_module("ray")
            except ImportError:
                raise ValueError("--ray needs Ray: pip install 'lit_sig[ray]'.") from None
        if args.model == EMBEDDED_MODEL and not sst2_model.WEIGHTS_PATH.exists():
            raise ValueError(
                f"--model {EMBEDDED_MODEL}: {sst2_model.WEIGHTS_PATH} is missing; train it with"
                " `python -m lit_sig.models.train_sst2`, or give another --model."
            )
        try:
            tokenizer = job.load_tokenizer()
        except OSError as error:
            raise ValueError(f"--model {args.model!r}: can't load its tokenizer ({error}).") from None
        if job.is_lm:
            examples = explain_lm.read_prompts(pathlib.Path(args.data), args.limit)
        else:
            examples = rows_io.read_examples(pathlib.Path(args.data), args.text_field, args.limit, labels)
        if args.target == "label" and any(e["label"] is None for e in examples):
            raise ValueError("--target label: some examples have no label.")
        count = runner.explain_dataset(examples, out, job, tokenizer, args.ray, args.ray_workers)
    except ValueError as error:
        parser.error(str(error))
    print(f"Wrote {count} rows to {out}.", file=sys.stderr)


if __name__ == "__main__":
    main()
