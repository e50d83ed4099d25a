"""Faithfulness of token attributions on SST-2, in our protocol or the SIG paper's.

    python -m benchmarks.faithfulness --data ../shared/data/sst2/dev.tsv --steps 50 --protocol ours --json out.json
    python -m benchmarks.faithfulness --data ../shared/data/sst2/dev.tsv --steps 50 --protocol paper --json out.json

For each example: the predicted class c and its probability p; positions ranked by their
attribution; the top k erased (lit_sig.core.erasure): log-odds (top k replaced), comprehensiveness
(top k deleted), sufficiency (only the top k kept).

- ours: word tokens attributed, ranked and erased ([CLS]/[SEP] fixed), [MASK] baseline, the
  predicted class's logit, k = max(1, round(0.2 T)), replaced by [MASK].
- paper (time-interpret's experiments/nlp, after DIG): every position attributed, ranked and
  erased, [CLS]/[SEP] included, captum's zero baseline, the largest logit of each path point,
  k = floor(0.2 (T + 2)), replaced by [PAD].

`--baseline` and `--replacement` override the protocol's. Attributions are computed here with
lit_sig's path engine (`lit_sig.core.engine`, the interpreters' own) over a Hugging Face model;
tests check them against the interpreters (ours) and captum / time-interpret (paper). Per-example
results go to an append-only cache, so an interrupted run resumes; the summary has paired
bootstrap 95% intervals for every mean and every difference of two methods.
"""

import argparse
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import tqdm
import transformers

from lit_sig import storage
from lit_sig.core import adaptive, attribution, engine, erasure, quadrature
from lit_sig.lit import registry
from lit_sig.models import datasets
from lit_sig.models.rows import piece_slices

BASELINES = ("mask", "pad", "zero")
DEFAULT_BASELINE = {"ours": "mask", "paper": "zero"}
TARGETS = {"ours": "predicted", "paper": "max"}  # The explained score: the predicted class's logit, or the max logit.


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a run computes: the protocol, its attribution baseline and the path steps."""

    protocol: erasure.Protocol
    baseline: str
    steps: int

    @property
    def target(self) -> str:
        return TARGETS[self.protocol.name]

    def key(self) -> str:
        p = self.protocol
        return f"{p.name}-{self.baseline}-{p.replacement}-s{self.steps}"


@dataclasses.dataclass(eq=False)
class Example:
    """One tokenized example on the model's device."""

    index: int
    sentence: str
    ids: list[int]  # with [CLS]/[SEP]
    special: list[bool]
    x: torch.Tensor  # [L, D] word embeddings of every position
    baseline: torch.Tensor  # [L, D]; equal to x where a position never moves
    movable: torch.Tensor  # [L] bool: the ranked positions
    predicted: int
    label: str


class HFScorer:
    """The engine's `RowScorer` over a Hugging Face classifier; rows are every position's word embeddings.

    A piece's key is the class to explain, or None for the largest logit of each row (the paper's code).
    """

    def __init__(self, module: torch.nn.Module, tokens_per_pass: int = 4096):
        self.module = module
        self.device = next(module.parameters()).device
        self.tokens_per_pass = tokens_per_pass
        self.rows = 0  # gradient rows
        self.forward_rows = 0

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        return max(1, self.tokens_per_pass * (1 if with_grads else 4) // max(1, num_tokens))

    def score_rows(
        self, pieces: Sequence[engine.Piece], with_grads: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        length = max(rows.shape[1] for _, rows in pieces)
        embs = torch.cat([torch.nn.functional.pad(rows, (0, 0, 0, length - rows.shape[1])) for _, rows in pieces])
        mask = torch.cat(
            [
                torch.nn.functional.pad(
                    torch.ones(rows.shape[:2], dtype=torch.long, device=self.device), (0, length - rows.shape[1])
                )
                for _, rows in pieces
            ]
        )  # [R, L]
        with torch.enable_grad() if with_grads else torch.no_grad():
            embs = embs.detach().requires_grad_(with_grads)
            logits = self.module(inputs_embeds=embs, attention_mask=mask).logits.float()  # [R, C]
            scores = torch.cat([_target(logits[part], key) for (key, _), part in zip(pieces, piece_slices(pieces))])
            grads = torch.autograd.grad(scores.sum(), embs)[0] if with_grads else None  # [R, L, D]
        count = len(embs)
        if with_grads:
            self.rows += count
        else:
            self.forward_rows += count
        return [
            (scores[part].detach(), None if grads is None else grads[part, : rows.shape[1]])
            for (_, rows), part in zip(pieces, piece_slices(pieces))
        ]


def _target(logits: torch.Tensor, key: int | None) -> torch.Tensor:
    return logits.max(-1).values if key is None else logits[:, key]


def prepare(
    module: torch.nn.Module, tokenizer, records: Sequence[dict], indices: Sequence[int], setting: Setting
) -> list[Example]:
    """Tokenizes, embeds and predicts the examples."""
    table = module.get_input_embeddings()
    device = table.weight.device
    baseline_row = _baseline_row(table, tokenizer, setting.baseline)
    examples = []
    encodings = tokenizer([records[i]["sentence"] for i in indices], truncation=False)["input_ids"]
    for i, ids in zip(indices, encodings):
        special = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
        special = [bool(s) for s in special]
        movable = torch.tensor([setting.protocol.rank_specials or not s for s in special], device=device)
        with torch.no_grad():
            x = table(torch.tensor(ids, device=device)).float()  # [L, D]
        baseline = torch.where(movable[:, None], baseline_row.expand_as(x), x)
        examples.append(
            Example(i, records[i]["sentence"], list(ids), special, x, baseline, movable, -1, records[i]["label"])
        )
    probs = erasure.probabilities(module, [e.ids for e in examples], tokenizer.pad_token_id)
    for e, p in zip(examples, probs):
        e.predicted = int(np.argmax(p))
    return examples


def _baseline_row(table: torch.nn.Embedding, tokenizer, kind: str) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros_like(table.weight[0]).float()
    return table.weight[getattr(tokenizer, f"{kind}_token_id")].detach().float()


def _problems(
    examples: Sequence[Example], setting: Setting, groups: Callable[[torch.Tensor], torch.Tensor]
) -> list[engine.PathProblem]:
    key = (lambda e: None) if setting.target == "max" else (lambda e: e.predicted)
    return [engine.PathProblem(key(e), e.x, e.baseline, groups(e.movable)) for e in examples]


Method = Callable[[HFScorer, Sequence[Example], Setting], list[tuple[np.ndarray, float | None]]]


def _gradients(scorer: HFScorer, examples: Sequence[Example], setting: Setting) -> list[torch.Tensor]:
    """d F / d x at the input, `[L, D]` each (one row per example)."""
    problems = _problems(examples, setting, attribution.ig_groups)
    grads = [torch.zeros_like(e.x) for e in examples]
    per_pass = scorer.rows_per_pass(max(e.x.shape[0] for e in examples), True)
    for start in range(0, len(problems), per_pass):
        chunk = problems[start : start + per_pass]
        for j, (_, g) in enumerate(scorer.score_rows([(p.key, p.x[None]) for p in chunk], True)):
            grads[start + j] = g[0]
    return grads


def grad_norm(scorer, examples, setting):
    return [
        (attribution.gradient_norm(g)[e.movable].cpu().numpy(), None)
        for e, g in zip(examples, _gradients(scorer, examples, setting))
    ]


def grad_dot_input(scorer, examples, setting):
    return [
        (attribution.gradient_dot_input(g, e.x)[e.movable].cpu().numpy(), None)
        for e, g in zip(examples, _gradients(scorer, examples, setting))
    ]


def _path(groups: Callable[[torch.Tensor], torch.Tensor]) -> Method:
    def run(scorer, examples, setting):
        alphas, weights = quadrature.quadrature("gausslegendre", setting.steps)
        results = engine.path_attributions(_problems(examples, setting, groups), scorer, alphas, weights)
        return [
            (r.token_attributions[e.movable.cpu()].numpy(), abs(r.completeness_delta))
            for e, r in zip(examples, results)
        ]

    return run


def exact_sig(scorer, examples, setting):
    results = engine.occlusion_attributions(_problems(examples, setting, attribution.sig_groups), scorer)
    return [(r.token_attributions[e.movable.cpu()].numpy(), 0.0) for e, r in zip(examples, results)]


def adaptive_sig(scorer, examples, setting):
    results = adaptive.adaptive_attributions(_problems(examples, setting, attribution.sig_groups), scorer)
    return [(r.token_attributions[e.movable.cpu()].numpy(), r.completeness_delta) for e, r in zip(examples, results)]


def random_ranking(scorer, examples, setting):
    """The control: a ranking seeded by the sentence, the same in every run (the CLI's)."""
    del scorer, setting
    return [(erasure.random_scores(e.sentence, int(e.movable.sum())), None) for e in examples]


# By their registry names (lit_sig.lit.registry), computed here over every position for the paper's protocol.
METHODS: dict[str, Method] = {
    "grad_norm": grad_norm,
    "grad_dot_input": grad_dot_input,
    "ig": _path(attribution.ig_groups),
    "sig": _path(attribution.sig_groups),
    "exact_sig": exact_sig,
    "adaptive_sig": adaptive_sig,
    erasure.RANDOM: random_ranking,
}
# LIT's own IG (zero baseline, word tokens), through LIT; ours protocol only.
LIT_IG = "lit_ig"


def lit_integrated_gradients(steps: int, device: str | None) -> Method:
    """LIT 1.3's IntegratedGradients on the embedded model (word tokens only, its zero baseline)."""
    from lit_nlp.components import gradient_maps  # pylint: disable=import-outside-toplevel

    from benchmarks.common import CountingModel  # pylint: disable=import-outside-toplevel
    from lit_sig import models  # pylint: disable=import-outside-toplevel

    model = models.minilm_sst2(device)
    interpreter = gradient_maps.IntegratedGradients()

    def run(scorer, examples, setting):
        assert setting.protocol.name == "ours" and not setting.protocol.rank_specials
        inputs = [{"sentence": e.sentence, "label": model.labels[e.predicted]} for e in examples]
        config = {gradient_maps.INTERPOLATION_KEY: steps, gradient_maps.NORMALIZATION_KEY: False}
        counting = CountingModel(model)
        results = interpreter.run(inputs, counting, None, config=config)
        scorer.rows += counting.rows
        return [(np.asarray(r[models.gradients_field("sentence")].salience), None) for r in results]

    return run


def captum_method(name: str, steps: int, device: str | None) -> Method:
    """A bridged captum method (`captum_*`, lit_sig.lit.registry) on the embedded model, ours protocol."""
    from benchmarks.common import CountingModel  # pylint: disable=import-outside-toplevel
    from lit_sig import models  # pylint: disable=import-outside-toplevel

    model = models.minilm_sst2(device)
    interpreter, config = registry.interpreter_and_config(name, steps, "mask", False)

    def run(scorer, examples, setting):
        assert setting.protocol.name == "ours" and not setting.protocol.rank_specials
        inputs = [{"sentence": e.sentence, "label": model.labels[e.predicted]} for e in examples]
        counting = CountingModel(model)
        results = interpreter.run(inputs, counting, None, config=config)
        scorer.rows += counting.rows
        scorer.forward_rows += counting.forward_only
        return [(np.asarray(r[models.gradients_field("sentence")].salience), None) for r in results]

    return run


def run_method(
    name: str, method: Method, scorer: HFScorer, examples: Sequence[Example], setting: Setting, tokenizer
) -> list[dict]:
    """Records of one method on a batch of examples."""
    rows_before, forward_before = scorer.rows, scorer.forward_rows
    started = time.perf_counter()
    ranked = method(scorer, examples, setting)
    seconds = (time.perf_counter() - started) / len(examples)
    metrics = erasure.erasure_metrics(
        scorer.module,
        tokenizer,
        [e.ids for e in examples],
        [e.special for e in examples],
        [s for s, _ in ranked],
        setting.protocol,
    )
    rows = (scorer.rows - rows_before) / len(examples)
    forward = (scorer.forward_rows - forward_before) / len(examples)
    return [
        {
            "index": e.index,
            "method": name,
            "seconds": seconds,
            "rows": rows,
            "forward_rows": forward,
            "completeness_delta": delta,
            "correct": str(m["predicted"]) == e.label,
            "device": scorer.device.type,
            **m,
        }
        for e, (_, delta), m in zip(examples, ranked, metrics)
    ]


def run(args: argparse.Namespace, module: torch.nn.Module, tokenizer, methods: dict[str, Method]) -> dict:
    """Computes what the cache lacks, then summarizes."""
    records = datasets.read_glue_tsv(args.data, args.limit, labels=None)
    setting = args.setting
    cache = pathlib.Path(
        args.cache or f"benchmarks/.cache/faithfulness-{pathlib.Path(args.data).stem}-{setting.key()}.jsonl"
    )
    # Caches written before the registry named the methods read under their names now.
    done = {
        (r["index"], registry.canonical(r["method"])): r | {"method": registry.canonical(r["method"])}
        for r in storage.read_jsonl(cache)
    }
    todo = {m: [i for i in range(len(records)) if (i, m) not in done] for m in args.methods}
    total = sum(map(len, todo.values()))
    print(
        f"{len(records)} examples x {len(args.methods)} methods ({setting.key()}); {len(done)} cached in {cache}, "
        f"{total} to go",
        flush=True,
    )
    scorer = HFScorer(module, args.tokens_per_pass)
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
    with tqdm.tqdm(total=total, desc="faithfulness", unit="explanation", smoothing=0.05) as progress:
        for name in args.methods:
            for start in range(0, len(todo[name]), args.batch_size):
                if deadline is not None and time.monotonic() > deadline:
                    break
                examples = prepare(module, tokenizer, records, todo[name][start : start + args.batch_size], setting)
                new = run_method(name, methods[name], scorer, examples, setting, tokenizer)
                storage.append_jsonl(cache, new)
                done.update(((r["index"], r["method"]), r) for r in new)
                progress.update(len(new))
    return summarize(done, len(records), args.methods, setting, args.resamples, args.seed)


def summarize(
    done: dict, n: int, methods: Sequence[str], setting: Setting, resamples: int = 2000, seed: int = 0
) -> dict:
    """Means with intervals over the examples each method covers; differences over shared examples."""
    by_method = {m: {i: done[(i, m)] for i in range(n) if (i, m) in done} for m in methods}
    erased = erasure.summarize(by_method, resamples, seed)
    summary = {
        "n_examples": n,
        "protocol": dataclasses.asdict(setting.protocol),
        "baseline": setting.baseline,
        "target": setting.target,
        "steps": setting.steps,
        "resamples": resamples,
        "seed": seed,
        "methods": {},
        "differences": erased["differences"],
    }
    for m, means in erased["methods"].items():
        recs = list(by_method[m].values())
        entry = {
            "n": means["n"],
            "accuracy": float(np.mean([r["correct"] for r in recs])),
            **{k: means[k] for k in erasure.METRICS},
            "seconds_per_example": float(np.mean([r["seconds"] for r in recs])),
            "rows_per_example": float(np.mean([r["rows"] for r in recs])),
            "forward_rows_per_example": float(np.mean([r["forward_rows"] for r in recs])),
            "devices": sorted({r.get("device", "cpu") for r in recs}),
        }
        deltas = [r["completeness_delta"] for r in recs if r["completeness_delta"] is not None]
        if deltas:
            entry["max_completeness_delta"] = float(np.max(deltas))
            entry["median_completeness_delta"] = float(np.median(deltas))
        summary["methods"][m] = entry
    return summary


def markdown(summary: dict) -> str:
    p = summary["protocol"]
    table = erasure.markdown(
        summary["methods"],
        {
            "passes per example": lambda m: f"{m['rows_per_example'] + m['forward_rows_per_example']:.0f}",
            "max completeness error": lambda m: (
                f"{m['max_completeness_delta']:.1e}" if "max_completeness_delta" in m else ""
            ),
        },
    )
    return (
        f"protocol {p['name']}, baseline {summary['baseline']}, explained score: {summary['target']} logit, "
        f"steps = {summary['steps']}, replacement [{p['replacement'].upper()}]; mean [95% paired bootstrap interval]"
        f"\n\n{table}"
    )


def load_model(
    model_dir: str | None, device: str | None
) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase]:
    """The embedded SST-2 model, or a saved Hugging Face classifier."""
    from lit_sig import models  # pylint: disable=import-outside-toplevel

    device = device or models.default_device()
    if model_dir is None:
        from lit_sig.models import sst2_model  # pylint: disable=import-outside-toplevel

        return sst2_model.load_minilm_sst2(device)
    module = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).float().to(device).eval()
    return module, transformers.AutoTokenizer.from_pretrained(model_dir)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    captum = [m for m in registry.list_methods() if m.startswith(registry.CAPTUM_PREFIX)]
    choices = [*METHODS, LIT_IG, *captum]
    parser.add_argument("--data", default="../shared/data/sst2/dev.tsv", help="GLUE-style TSV")
    parser.add_argument("--limit", type=int, default=None, help="first N examples (default: all)")
    parser.add_argument("--steps", type=int, default=50, help="interpolation steps of IG, SIG and LIT's IG")
    parser.add_argument("--protocol", default="ours", choices=list(erasure.PROTOCOLS))
    parser.add_argument(
        "--baseline", default=None, choices=BASELINES, help="attribution baseline (default: the protocol's)"
    )
    parser.add_argument(
        "--replacement", default=None, choices=erasure.REPLACEMENTS, help="the log-odds token (default: the protocol's)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(m for m in [*METHODS, LIT_IG] if m != "adaptive_sig"),
        help=f"comma-separated, from {choices}",
    )
    parser.add_argument("--json", default=None, help="write the summary here")
    parser.add_argument("--cache", default=None, help="per-example results (default under benchmarks/.cache/)")
    parser.add_argument("--model_dir", default=None, help="a saved classifier (default: the embedded SST-2 model)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"])
    parser.add_argument("--batch_size", type=int, default=16, help="examples per batch of one method")
    parser.add_argument("--tokens_per_pass", type=int, default=4096, help="gradient rows x length per model pass")
    parser.add_argument("--max_seconds", type=float, default=None, help="stop starting batches after this long")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(choices))
    if unknown or not args.methods:
        parser.error(f"unknown --methods {unknown}; accepted: {', '.join(choices)}")
    for name in args.methods:
        if (name == LIT_IG or name in captum) and args.protocol != "ours":
            parser.error(f"--methods {name} ranks word tokens only: --protocol ours")
    for flag in ("limit", "batch_size", "tokens_per_pass", "resamples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if not quadrature.MIN_STEPS <= args.steps <= quadrature.MAX_STEPS:
        parser.error(f"--steps must be in [{quadrature.MIN_STEPS}, {quadrature.MAX_STEPS}], got {args.steps}")
    protocol = erasure.PROTOCOLS[args.protocol]
    if args.replacement:
        protocol = dataclasses.replace(protocol, replacement=args.replacement)
    args.setting = Setting(protocol, args.baseline or DEFAULT_BASELINE[args.protocol], args.steps)
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    module, tokenizer = load_model(args.model_dir, args.device)
    methods = dict(METHODS)
    device = str(next(module.parameters()).device)
    if LIT_IG in args.methods:
        methods[LIT_IG] = lit_integrated_gradients(args.steps, device)
    for name in args.methods:
        if name.startswith(registry.CAPTUM_PREFIX):
            methods[name] = captum_method(name, args.steps, device)
    summary = run(args, module, tokenizer, methods)
    print(markdown(summary))
    if args.json:
        storage.write_atomically(pathlib.Path(args.json), json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
