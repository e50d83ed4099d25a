"""Faithfulness of token attributions on SST-2: the SIG paper's protocol (after DIG).

    python -m benchmarks.faithfulness --data ../shared/data/sst2/dev.tsv --limit 200 --steps 50 --json out.json

For each example: the predicted class c and its probability p; word tokens ranked
by attribution to c; k = 20% of them (at least 1).
- log-odds: top-k tokens replaced by [MASK]: log p'(c) - log p(c) (lower is better).
- comprehensiveness: top-k tokens deleted: p(c) - p'(c) (higher is better).
- sufficiency: only the top-k tokens kept: p(c) - p'(c) (lower is better).
Per-example results go to an append-only cache, so an interrupted run resumes.
"""

import argparse
import json
import math
import pathlib
import time
import zlib
from collections.abc import Callable

import numpy as np
import torch
import tqdm
from lit_nlp.api import components as lit_components
from lit_nlp.components import gradient_maps

import lit_sig
from benchmarks.common import CountingModel
from lit_sig import datasets, interpreters, models, storage

TOP_FRACTION = 0.2
METRICS = ("log_odds", "comprehensiveness", "sufficiency")
# (model, example, class, steps) -> (token scores [T], completeness delta or None)
Ranker = Callable[[models.HFSequenceClassifier, dict, str, int], tuple[np.ndarray, float | None]]


def _lit_sig_ranker(interpreter: lit_components.Interpreter, **config) -> Ranker:
    def rank(model, example, label, steps):
        settings = dict(config)
        if interpreters.INTERPOLATION_KEY in interpreter.config_spec():  # IG and SIG
            settings.setdefault(interpreters.INTERPOLATION_KEY, steps)
            settings[interpreters.BASELINE_KEY] = "mask"
            settings[interpreters.CLASS_KEY] = label
        result = interpreter.run([example], model, None, config={interpreters.NORMALIZATION_KEY: False, **settings})
        delta = result[0].get(interpreters.COMPLETENESS_KEY)
        return np.asarray(result[0][models.gradients_field("sentence")].salience), None if delta is None else abs(delta)
    return rank


def _lit_ig(model, example, label, steps):
    interpreter = gradient_maps.IntegratedGradients()
    config = {gradient_maps.INTERPOLATION_KEY: steps, gradient_maps.NORMALIZATION_KEY: False,
              gradient_maps.CLASS_KEY: label}
    return np.asarray(interpreter.run([example], model, None, config=config)[0][models.gradients_field("sentence")].salience), None


def _random(model, example, label, steps):
    """The control: a ranking seeded by the sentence, the same in every run."""
    del label, steps
    num_tokens = len(model.tokenizer.tokenize(example["sentence"]))
    return np.random.default_rng(zlib.crc32(example["sentence"].encode("utf-8"))).random(num_tokens), None


METHODS: dict[str, Ranker] = {
    "grad_norm": _lit_sig_ranker(lit_sig.GradientNorm()),
    "grad_dot_input": _lit_sig_ranker(lit_sig.GradientDotInput()),
    "integrated_gradients": _lit_sig_ranker(lit_sig.IntegratedGradients()),
    "sequential_integrated_gradients": _lit_sig_ranker(lit_sig.SequentialIntegratedGradients()),
    "exact_sequential_integrated_gradients": _lit_sig_ranker(
        lit_sig.SequentialIntegratedGradients(), **{interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    ),
    "adaptive_sequential_integrated_gradients": _lit_sig_ranker(
        lit_sig.SequentialIntegratedGradients(), **{interpreters.ADAPTIVE_KEY: True}
    ),
    "lit_integrated_gradients": _lit_ig,
    "random": _random,
}


@torch.no_grad()
def class_probabilities(model: models.HFSequenceClassifier, word_ids: list[list[int]], label: int) -> np.ndarray:
    """p(label) for each sequence of word-piece ids, wrapped in [CLS] ... [SEP]."""
    tok = model.tokenizer
    ids = [[tok.cls_token_id, *w, tok.sep_token_id] for w in word_ids]
    T = max(map(len, ids))
    input_ids = torch.tensor([i + [tok.pad_token_id] * (T - len(i)) for i in ids], device=model.device)  # [B, T]
    attention_mask = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids], device=model.device)
    logits = model.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # [B, C]
    return torch.softmax(logits, -1)[:, label].cpu().numpy()


def faithfulness(model: models.HFSequenceClassifier, word_ids: list[int], scores: np.ndarray, label: int,
                 p: float) -> dict[str, float]:
    """The three metrics for one example, from its word-piece ids and token scores."""
    T = len(word_ids)
    k = max(1, round(TOP_FRACTION * T))
    top = set(np.argsort(-scores, kind="stable")[:k].tolist())
    masked = [model.tokenizer.mask_token_id if t in top else w for t, w in enumerate(word_ids)]
    deleted = [w for t, w in enumerate(word_ids) if t not in top]
    kept = [w for t, w in enumerate(word_ids) if t in top]
    p_masked, p_deleted, p_kept = class_probabilities(model, [masked, deleted, kept], label)
    return {
        "log_odds": math.log(max(p_masked, 1e-12)) - math.log(p),
        "comprehensiveness": p - float(p_deleted),
        "sufficiency": p - float(p_kept),
    }


def run(args: argparse.Namespace, model: models.HFSequenceClassifier) -> dict:
    examples = datasets.read_glue_tsv(args.data, args.limit)
    methods = args.methods
    cache = pathlib.Path(
        args.cache or f"benchmarks/.cache/faithfulness-{pathlib.Path(args.data).stem}-s{args.steps}-{args.grad_wrt}.jsonl"
    )
    done = {(r["index"], r["method"]): r for r in storage.read_jsonl(cache)}
    todo = [(i, m) for i in range(len(examples)) for m in methods if (i, m) not in done]
    print(f"{len(examples)} examples x {len(methods)} methods; {len(done)} results cached in {cache}, {len(todo)} to go")
    predictions: dict[int, dict] = {}
    for i, method in tqdm.tqdm(todo, desc="faithfulness", unit="explanation", smoothing=0.05):
        example = examples[i]
        if i not in predictions:
            output = model.predict([{"sentence": example["sentence"]}])[0]
            predictions[i] = output
        output = predictions[i]
        if output["truncated"]:
            raise ValueError(f"example {i} is longer than the model's maximum length")
        label = output["label"]
        c = model.labels.index(label)
        word_ids = model.tokenizer.convert_tokens_to_ids(output["tokens_sentence"])
        query = {"sentence": example["sentence"], "label": label}
        counting = CountingModel(model)
        started = time.perf_counter()
        scores, delta = METHODS[method](counting, query, label, args.steps)
        seconds = time.perf_counter() - started
        assert scores.shape == (len(word_ids),), (method, scores.shape)
        record = {"index": i, "method": method, "seconds": seconds, "rows": counting.rows + counting.forward_rows,
                  "completeness_delta": delta, "correct": label == example["label"],
                  **faithfulness(model, word_ids, scores, c, float(output["probas"][c]))}
        storage.append_jsonl(cache, [record])
        done[(i, method)] = record
    return summarize(done, len(examples), methods, args.steps, args.grad_wrt)


def summarize(done: dict, n: int, methods: list[str], steps: int, grad_wrt: str) -> dict:
    correct = [done[(i, methods[0])]["correct"] for i in range(n)]
    summary = {"n_examples": n, "accuracy": float(np.mean(correct)), "steps": steps, "grad_wrt": grad_wrt,
               "methods": {}}
    for m in methods:
        records = [done[(i, m)] for i in range(n)]
        summary["methods"][m] = {k: float(np.mean([r[k] for r in records])) for k in METRICS}
        summary["methods"][m]["seconds"] = float(sum(r["seconds"] for r in records))
        summary["methods"][m]["rows"] = int(sum(r["rows"] for r in records))
        deltas = [r["completeness_delta"] for r in records if r["completeness_delta"] is not None]
        if deltas:
            summary["methods"][m]["max_completeness_delta"] = float(np.max(deltas))
            summary["methods"][m]["median_completeness_delta"] = float(np.median(deltas))
    return summary


def markdown(summary: dict) -> str:
    lines = [f"n = {summary['n_examples']}, steps = {summary['steps']}, accuracy = {summary['accuracy']:.3f}, "
             f"attributions of the predicted class's {summary['grad_wrt']}", "",
             "| method | log-odds ↓ | comprehensiveness ↑ | sufficiency ↓ | passes | max completeness error | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, m in summary["methods"].items():
        delta = f"{m['max_completeness_delta']:.1e}" if "max_completeness_delta" in m else ""
        lines.append(f"| {name} | {m['log_odds']:.3f} | {m['comprehensiveness']:.3f} | {m['sufficiency']:.3f} "
                     f"| {m['rows']} | {delta} | {m['seconds']:.0f} |")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(datasets.DEFAULT_SST2_DIR / "dev.tsv"), help="GLUE-style TSV")
    parser.add_argument("--limit", type=int, default=None, help="first N examples (default: all)")
    parser.add_argument("--steps", type=int, default=50, help="interpolation steps of IG, SIG and LIT's IG")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {list(METHODS)}")
    parser.add_argument("--json", default=None, help="write the summary here")
    parser.add_argument("--cache", default=None, help="per-example results (default under benchmarks/.cache/)")
    parser.add_argument("--grad_wrt", default="logit", choices=models.GRAD_WRT_OPTIONS,
                        help="explain the predicted class's logit (as DIG and SIG do) or its probability")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"unknown --methods {unknown}; accepted: {', '.join(METHODS)}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be a positive integer, got {args.limit}")
    if not 1 <= args.steps <= 500:
        parser.error(f"--steps must be in [1, 500], got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    summary = run(args, models.minilm_sst2(args.device, grad_wrt=args.grad_wrt))
    print(markdown(summary))
    if args.json:
        storage.write_atomically(pathlib.Path(args.json), json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
