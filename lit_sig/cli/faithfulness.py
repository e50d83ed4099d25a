"""Which salience to trust on your own model: erasure faithfulness of each method, with intervals.

    python -m lit_sig.cli.faithfulness --data dev.tsv --out faithfulness.jsonl
    python -m lit_sig.cli.faithfulness --data reviews.jsonl --text_field review --model path/to/checkpoint \\
        --labels negative,positive --methods exact_sig,ig,grad_norm,random --out faithfulness.jsonl
    python -m lit_sig.cli.faithfulness --model smollm2 --chat_template --data prompts.jsonl \\
        --methods exact_sig,ig,grad_norm,grad_dot_input,random --out lm_faithfulness.jsonl

For every example and method: the word tokens ranked by the method's salience for the predicted
class c, and the top k = max(1, round(0.2 T)) of them erased (lit_sig.core.erasure): log-odds (replaced
by [MASK]; lower is better), comprehensiveness (deleted; higher is better), sufficiency (only they
kept; lower is better). `random` ranks at random, the floor every method should beat.

Writes one row per (example, method) to OUT (JSON Lines) and a summary (OUT.summary.json, or
`--summary`): each method's mean with a paired bootstrap 95% interval, and every pair's mean
difference with its interval and whether it excludes 0. Rows go to OUT.partial.jsonl after every
batch; a restart with the same flags skips the rows already there or in OUT, which is only ever
written whole (temporary file, then rename).

On a causal LM (`--model smollm2` or a `*ForCausalLM` checkpoint; JSON Lines of `prompt` and an
optional `target`) the metrics are the change of the target's log-probability when the top
20% of the prompt's movable tokens are replaced by the baseline, deleted, or alone kept
(`lit_sig.cli.faithfulness_lm`).
"""

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import tqdm
from lit_nlp.api import components as lit_components

from lit_sig import models, storage
from lit_sig.cli import explain, explain_lm, faithfulness_lm, rows_io
from lit_sig.cli import job as job_lib
from lit_sig.core import erasure, quadrature
from lit_sig.lit import interpreters, registry

METHODS = (*registry.list_methods(), erasure.RANDOM)  # The registry's, and the random control.
DEFAULT_METHODS = ("sig", "ig", "grad_norm", "grad_dot_input", erasure.RANDOM)
SETTINGS_FIELDS = ("steps", "baseline", "top_fraction")
SOURCE_FIELDS = job_lib.SOURCE_FIELDS
SUMMARY_SUFFIX = ".summary.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How salience is computed and erased; rows record these, and resuming must match them."""

    steps: int
    baseline: str
    top_fraction: float = erasure.OURS.top_fraction

    @property
    def protocol(self) -> erasure.Protocol:
        return dataclasses.replace(erasure.OURS, top_fraction=self.top_fraction)

    def config(self, method: str) -> dict[str, Any]:
        """The interpreter config of a method (raw salience)."""
        return registry.get(method).config(self.steps, self.baseline, normalize=False)


def _interpreter(method: str) -> lit_components.Interpreter:
    return registry.get(method).make()


def salience(
    model: models.HFSequenceClassifier,
    method: str,
    settings: Settings,
    examples: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
) -> list[tuple[np.ndarray, float | None]]:
    """Per example: raw word-token salience for its predicted class, and the completeness delta (or None)."""
    field = model.text_fields[0]
    if method == erasure.RANDOM:
        return [
            (erasure.random_scores(e["sentence"], len(o[f"tokens_{field}"])), None) for e, o in zip(examples, outputs)
        ]
    inputs = [{field: e["sentence"], "label": o["label"]} for e, o in zip(examples, outputs)]
    results = _interpreter(method).run(inputs, model, model_outputs=outputs, config=settings.config(method))
    out = []
    for result in results:
        delta = result.get(interpreters.COMPLETENESS_KEY)
        out.append((np.asarray(result[models.gradients_field(field)].salience), None if delta is None else abs(delta)))
    return out


def score_batch(
    model: models.HFSequenceClassifier,
    method: str,
    settings: Settings,
    examples: list[dict[str, Any]],
    source: dict[str, Any],
) -> list[dict[str, Any]]:
    """Rows of one method on a batch of examples `{"id", "sentence", "label"}`."""
    field = model.text_fields[0]
    outputs = model.predict([{field: e["sentence"]} for e in examples])
    ranked = salience(model, method, settings, examples, outputs)
    tok = model.tokenizer
    id_lists = [tok.convert_tokens_to_ids([tok.cls_token, *o[f"tokens_{field}"], tok.sep_token]) for o in outputs]
    special = [[True] + [False] * (len(ids) - 2) + [True] for ids in id_lists]
    metrics = erasure.erasure_metrics(model.model, tok, id_lists, special, [s for s, _ in ranked], settings.protocol)
    rows = []
    for e, o, (_, delta), m in zip(examples, outputs, ranked, metrics):
        rows.append(
            {
                "id": e["id"],
                "sentence": e["sentence"],
                "label": e["label"],
                "predicted": o["label"],
                "p": m["p"],
                "method": method,
                "k": m["k"],
                "truncated": bool(o["truncated"]),
                **{k: m[k] for k in erasure.METRICS},
                "completeness_delta": delta,
                **dataclasses.asdict(settings),
                **source,
            }
        )
    return rows


def summarize(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    resamples: int = 2000,
    seed: int = 0,
    metrics: Sequence[str] = erasure.METRICS,
) -> dict[str, Any]:
    """Each method's means with intervals, and every pair's differences on the examples both cover."""
    by_method = {m: {r["id"]: r for r in rows if r["method"] == m} for m in methods}
    return {"resamples": resamples, "seed": seed, **erasure.summarize(by_method, resamples, seed, metrics)}


def _read_done(
    out: pathlib.Path, examples: list[dict[str, Any]], wanted: dict[str, Any], text_key: str = "sentence"
) -> dict[tuple[int, str], dict]:
    done: dict[tuple[int, str], dict] = {}
    for path in (out, rows_io.partial_path(out)):
        rows = list(storage.read_jsonl(path))
        rows_io.check_resumable(rows, examples, wanted, path, text_key)
        done.update(((r["id"], r["method"]), r) for r in rows)
    return done


def evaluate(
    examples: list[dict[str, Any]],
    out: pathlib.Path,
    model: models.HFSequenceClassifier | models.HFCausalLM,
    methods: Sequence[str],
    settings: Settings,
    source: dict[str, Any],
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Scores the (example, method) pairs not yet in `out` or its sidecar; writes `out` whole.

    Returns:
        Every row of `out`, ordered by example and method.

    Raises:
        ValueError: `out` or its sidecar holds rows of other settings, model, labels or data.
    """
    partial = rows_io.partial_path(out)
    is_lm = isinstance(model, models.HFCausalLM)
    text_key = explain_lm.TEXT_FIELD if is_lm else "sentence"
    done = _read_done(out, examples, dataclasses.asdict(settings) | source, text_key)
    scorer = faithfulness_lm.score_batch if is_lm else score_batch
    pending = {m: [e for e in examples if (e["id"], m) not in done] for m in methods}
    total = sum(map(len, pending.values()))
    with tqdm.tqdm(total=total, unit="explanation", desc="faithfulness", dynamic_ncols=True) as progress:
        for method in methods:
            for batch in (
                rows_io.length_batches(pending[method], model.tokenizer, batch_size) if pending[method] else []
            ):
                progress.set_postfix_str(method)
                rows = scorer(model, method, settings, batch, source)
                storage.append_jsonl(partial, rows)
                done.update(((r["id"], r["method"]), r) for r in rows)
                progress.update(len(rows))
    order = {m: i for i, m in enumerate(methods)}
    rows = sorted(done.values(), key=lambda r: (r["id"], order.get(r["method"], len(order)), r["method"]))
    storage.write_atomically(out, "".join(json.dumps(r) + "\n" for r in rows))
    partial.unlink(missing_ok=True)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lit_sig.cli.faithfulness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="GLUE-style TSV (sentence, label) or JSONL file.")
    parser.add_argument("--out", required=True, help="Per-example rows: a .jsonl file.")
    parser.add_argument("--summary", default=None, help=f"Summary JSON (default: OUT with {SUMMARY_SUFFIX}).")
    parser.add_argument(
        "--model",
        default=job_lib.EMBEDDED_MODEL,
        help=f"{job_lib.EMBEDDED_MODEL!r} (the embedded SST-2 model), a Hugging Face classifier path or name,"
        f" or a causal LM: {explain_lm.SMOLLM2!r} or a *ForCausalLM checkpoint (JSON Lines of prompt, target).",
    )
    parser.add_argument("--labels", default=None, help=explain.LABELS_HELP)
    parser.add_argument(
        "--methods", default=",".join(DEFAULT_METHODS), help=f"Comma-separated, from {', '.join(METHODS)}."
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=interpreters.DEFAULT_STEPS,
        help=f"Interpolation steps of sig and ig, in [{quadrature.MIN_STEPS}, {quadrature.MAX_STEPS}].",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        choices=list(interpreters.BASELINES),
        help="Baseline embedding of sig, exact_sig and ig (default: mask for a classifier, zero for an LM).",
    )
    parser.add_argument(
        "--top_fraction",
        type=float,
        default=erasure.OURS.top_fraction,
        help="Fraction of the word tokens erased (at least one).",
    )
    parser.add_argument("--text_field", default="sentence", help="Text field of JSONL data.")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N examples.")
    parser.add_argument("--batch_size", type=int, default=32, help="Examples per batch (and per model pass).")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps; default: CUDA when available.")
    parser.add_argument(
        "--chat_template", action="store_true", help="LM: wrap each prompt in the tokenizer's chat template."
    )
    parser.add_argument("--max_new_tokens", type=int, default=32, help="LM: the longest generated target.")
    parser.add_argument("--resamples", type=int, default=2000, help="Bootstrap resamples of the intervals.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap.")
    return parser


def _parse_methods(value: str) -> list[str]:
    methods = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"--methods {value!r}: give distinct methods from {', '.join(METHODS)}.")
    return methods


def _check_flags(args: argparse.Namespace, out: pathlib.Path) -> None:
    if out.suffix != ".jsonl":
        raise ValueError(f"--out {out}: write .jsonl rows.")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist.")
    for flag in ("limit", "batch_size", "resamples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be a positive integer, got {value}.")
    if not 0 < args.top_fraction <= 1:
        raise ValueError(f"--top_fraction must be in (0, 1], got {args.top_fraction}.")
    if not quadrature.MIN_STEPS <= args.steps <= quadrature.MAX_STEPS:
        raise ValueError(f"--steps must be in [{quadrature.MIN_STEPS}, {quadrature.MAX_STEPS}], got {args.steps}.")


def _load(
    args: argparse.Namespace, labels: tuple[str, ...], is_lm: bool = False
) -> tuple[models.HFSequenceClassifier | models.HFCausalLM, dict[str, Any]]:
    """The model and what identifies it in rows (model, labels, data; an LM's generation settings)."""
    job = job_lib.Job(
        model=args.model,
        labels=labels,
        method="sig",
        steps=None,
        baseline=None,
        normalize=False,
        target="predicted",
        device=explain.parse_device(args.device, local=True),
        batch_size=args.batch_size,
        data=str(pathlib.Path(args.data).resolve()),
        kind="lm" if is_lm else "classifier",
        chat_template=args.chat_template,
        max_new_tokens=args.max_new_tokens,
    )
    try:
        model = job.build_model()
    except OSError as error:
        raise ValueError(f"--model {args.model!r}: can't load it ({error}).") from None
    source = job.source()
    if is_lm:
        source |= {"chat_template": args.chat_template, "max_new_tokens": args.max_new_tokens}
    return model, source


def _check_kind_flags(args: argparse.Namespace, is_lm: bool) -> None:
    if is_lm and (args.labels is not None or args.text_field != "sentence"):
        raise ValueError("--labels, --text_field: not for a causal LM, which reads 'prompt' and 'target'.")
    if not is_lm and (args.chat_template or args.max_new_tokens != 32):
        raise ValueError("--chat_template and --max_new_tokens are for causal LMs; --model is a classifier.")


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    summary_path = pathlib.Path(args.summary) if args.summary else out.with_name(out.stem + SUMMARY_SUFFIX)
    try:
        _check_flags(args, out)
        methods = _parse_methods(args.methods)
        is_lm = explain_lm.is_causal_lm(args.model)
        _check_kind_flags(args, is_lm)
        if is_lm:
            labels: tuple[str, ...] = ()
            examples = explain_lm.read_prompts(pathlib.Path(args.data), args.limit)
        else:
            labels = explain.resolve_labels(args.model, args.labels)
            examples = rows_io.read_examples(pathlib.Path(args.data), args.text_field, args.limit, labels)
        model, source = _load(args, labels, is_lm)
        if args.baseline is None:
            args.baseline = explain_lm.DEFAULT_BASELINE if is_lm else interpreters.DEFAULT_BASELINE
        settings = Settings(args.steps, args.baseline, args.top_fraction)
        rows = evaluate(examples, out, model, methods, settings, source, args.batch_size)
    except ValueError as error:
        parser.error(str(error))
    summary = {
        **dataclasses.asdict(settings),
        **source,
        "n_examples": len(examples),
        **summarize(rows, methods, args.resamples, args.seed, faithfulness_lm.METRICS if is_lm else erasure.METRICS),
    }
    storage.write_atomically(summary_path, json.dumps(summary, indent=2) + "\n")
    print(erasure.markdown(summary["methods"], headers=faithfulness_lm.HEADERS if is_lm else erasure.HEADERS))
    print(f"Wrote {len(rows)} rows to {out} and the summary to {summary_path}.", file=sys.stderr)


if __name__ == "__main__":
    main()
