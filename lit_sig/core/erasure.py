"""Erasure metrics of token rankings (log-odds, comprehensiveness, sufficiency) and their intervals.

After DIG (Sanyal & Ren 2021) and SIG (Enguehard 2023): the top k ranked positions of an input
are erased and the predicted class's probability p(c) is measured again.

- log-odds: top-k positions replaced by a token: log p'(c) - log p(c) (lower is better).
- comprehensiveness: top-k positions deleted: p(c) - p'(c) (higher is better).
- sufficiency: only the top-k positions kept: p(c) - p'(c) (lower is better).

A `Protocol` says which positions are ranked and erased, how many, and with which token.
Pure torch and numpy over a Hugging Face classifier: nothing here needs LIT.
"""

import dataclasses
import itertools
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

METRICS = ("log_odds", "comprehensiveness", "sufficiency")
LOWER_IS_BETTER = {"log_odds": True, "comprehensiveness": False, "sufficiency": True}
REPLACEMENTS = ("mask", "pad")
RANDOM = "random"  # The control ranking every method should beat (`random_scores`).


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How rankings are erased.

    Attributes:
        name: "ours" or "paper".
        rank_specials: rank and erase [CLS]/[SEP] too (the paper's code), not word tokens only.
        replacement: the token that replaces the top k for log-odds: "mask" or "pad".
        at_least_one: k = max(1, round(f n)) (ours) instead of floor(f n) (the paper's code).
        top_fraction: f.
    """

    name: str
    rank_specials: bool
    replacement: str
    at_least_one: bool
    top_fraction: float = 0.2

    def k(self, n: int) -> int:
        """How many of `n` ranked positions are erased."""
        if self.at_least_one:
            return min(n, max(1, round(self.top_fraction * n)))
        return int(self.top_fraction * n)

    def ranked_positions(self, special: Sequence[bool]) -> list[int]:
        """Positions of a sequence (with its special tokens) that are ranked."""
        return [i for i, s in enumerate(special) if self.rank_specials or not s]


OURS = Protocol("ours", rank_specials=False, replacement="mask", at_least_one=True)
PAPER = Protocol("paper", rank_specials=True, replacement="pad", at_least_one=False)
PROTOCOLS = {"ours": OURS, "paper": PAPER}


def top_positions(scores: np.ndarray, ranked: Sequence[int], k: int) -> list[int]:
    """The `k` positions of `ranked` with the highest `scores` (one per ranked position; ties: first)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return sorted(ranked[i] for i in order)


def erased_sequences(
    ids: Sequence[int], ranked: Sequence[int], top: Sequence[int], replacement_id: int
) -> tuple[list[int], list[int], list[int]]:
    """`(replaced, deleted, kept)` token ids: top replaced; top deleted; unranked and top kept."""
    top_set, ranked_set = set(top), set(ranked)
    replaced = [replacement_id if i in top_set else t for i, t in enumerate(ids)]
    deleted = [t for i, t in enumerate(ids) if i not in top_set]
    kept = [t for i, t in enumerate(ids) if i in top_set or i not in ranked_set]
    return replaced, deleted, kept


@torch.no_grad()
def probabilities(
    module: torch.nn.Module, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 256
) -> np.ndarray:
    """Softmax of a Hugging Face classifier for each id sequence (no padding inside): `[N, C]` float64."""
    device = next(module.parameters()).device
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        length = max(1, max(map(len, chunk)))
        ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        logits = module(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        out.append(torch.softmax(logits.double(), -1).cpu().numpy())
    return np.concatenate(out)


def erasure_metrics(
    module: torch.nn.Module,
    tokenizer: Any,  # A Hugging Face tokenizer (core stays free of transformers' types).
    id_lists: Sequence[Sequence[int]],
    special_masks: Sequence[Sequence[bool]],
    scores: Sequence[np.ndarray],
    protocol: Protocol,
    batch_size: int = 256,
) -> list[dict[str, float]]:
    """The three metrics of each example, for the class the model predicts on it.

    Args:
        module: a Hugging Face sequence classifier (`input_ids`, `attention_mask` -> `.logits`).
        tokenizer: its tokenizer (for the [PAD] and [MASK] ids).
        id_lists: each example's token ids, special tokens included.
        special_masks: per example, True at its special tokens.
        scores: per example, one score per ranked position (`protocol.ranked_positions`).
        protocol: what is ranked and erased, and how.

    Returns:
        Per example: `p` (of the predicted class), `predicted` (its index), `k` and the metrics.

    Raises:
        ValueError: a score vector does not match the ranked positions, or the tokenizer lacks the token.
    """
    replacement_id = getattr(tokenizer, f"{protocol.replacement}_token_id")
    if replacement_id is None or tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer has no {protocol.replacement} or pad token")
    sequences, ks = [], []
    for ids, special, s in zip(id_lists, special_masks, scores):
        ranked = protocol.ranked_positions(special)
        if len(s) != len(ranked):
            raise ValueError(f"{len(s)} scores for {len(ranked)} ranked positions")
        k = protocol.k(len(ranked))
        replaced, deleted, kept = erased_sequences(ids, ranked, top_positions(s, ranked, k), replacement_id)
        sequences += [list(ids), replaced, deleted, kept or list(ids)]  # Nothing kept (k = 0): no forward of nothing.
        ks.append(k)
    probs = probabilities(module, sequences, tokenizer.pad_token_id, batch_size).reshape(len(ks), 4, -1)
    return [_metrics(p4, k) for p4, k in zip(probs, ks)]


def _metrics(p4: np.ndarray, k: int) -> dict[str, float]:
    """From `[4, C]` probabilities of (input, replaced, deleted, kept)."""
    c = int(np.argmax(p4[0]))
    p, replaced, deleted, kept = (float(x) for x in p4[:, c])
    return {
        "predicted": c,
        "p": p,
        "k": k,
        "log_odds": float(np.log(max(replaced, 1e-12)) - np.log(max(p, 1e-12))),
        "comprehensiveness": p - deleted,
        "sufficiency": p - kept if k else 0.0,  # k = 0 erases nothing: every metric is 0, as in the paper's code.
    }


def bootstrap(
    values: dict[str, np.ndarray], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, dict]:
    """Paired bootstrap intervals of each method's mean and of every pair's mean difference.

    Args:
        values: per method, one value per example, the same examples in the same order.
        resamples: bootstrap resamples of the examples (the same resamples for every method).
        seed: seeds the resamples.
        level: the intervals' coverage.

    Returns:
        `{"means": {method: {"mean", "low", "high"}}, "differences": {"a - b": {"mean", "low",
        "high", "significant"}}}`; a difference is significant when its interval excludes 0.
    """
    names = list(values)
    x = np.stack([np.asarray(values[m], dtype=np.float64) for m in names])  # [M, N]
    n = x.shape[1]
    if n == 0:
        raise ValueError("no examples to bootstrap")
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)  # [B, N]
    means = x @ counts.T / n  # [M, B]
    tails = 100 * (1 - level) / 2
    summary: dict[str, dict] = {"means": {}, "differences": {}}
    for m, row, resampled in zip(names, x, means):
        low, high = np.percentile(resampled, [tails, 100 - tails])
        summary["means"][m] = {"mean": float(row.mean()), "low": float(low), "high": float(high)}
    for (a, row_a, res_a), (b, row_b, res_b) in itertools.combinations(zip(names, x, means), 2):
        low, high = np.percentile(res_a - res_b, [tails, 100 - tails])
        summary["differences"][f"{a} - {b}"] = {
            "mean": float((row_a - row_b).mean()),
            "low": float(low),
            "high": float(high),
            "significant": bool(low > 0 or high < 0),
        }
    return summary


def random_scores(text: str, count: int) -> np.ndarray:
    """The control ranking of `count` positions of `text`: uniform scores seeded by the text alone,
    so every run, batch and method list ranks it the same way."""
    return np.random.default_rng(zlib.crc32(text.encode("utf-8"))).random(count)


def summarize(
    by_method: Mapping[str, Mapping[Hashable, Mapping[str, float]]],
    resamples: int = 2000,
    seed: int = 0,
    metrics: Sequence[str] = METRICS,
) -> dict[str, dict]:
    """Each method's metric means with paired bootstrap intervals, and every pair's differences.

    Args:
        by_method: per method (in table order), its rows by example id; each row holds `metrics`.
        resamples, seed: of the bootstrap.
        metrics: the row fields summarized (a causal LM's differ: see `lit_sig.cli.faithfulness_lm`).

    Returns:
        `{"methods": {m: {"n", metric: {"mean", "low", "high"}}}, "differences": {"a - b": {"n",
        metric: {"mean", "low", "high", "significant"}}}}` over the examples each method (each
        pair) covers, in id order; methods without rows and pairs without shared examples are left out.
    """
    summary: dict[str, dict] = {"methods": {}, "differences": {}}
    present = [m for m, rows in by_method.items() if rows]
    for m in present:
        rows = [by_method[m][i] for i in sorted(by_method[m])]
        means = bootstrap({k: np.array([r[k] for r in rows]) for k in metrics}, resamples, seed)["means"]
        summary["methods"][m] = {"n": len(rows), **means}
    for a, b in itertools.combinations(present, 2):
        shared = sorted(by_method[a].keys() & by_method[b].keys())
        if not shared:
            continue
        entry: dict[str, Any] = {"n": len(shared)}
        for k in metrics:
            values = {m: np.array([by_method[m][i][k] for i in shared]) for m in (a, b)}
            entry[k] = bootstrap(values, resamples, seed)["differences"][f"{a} - {b}"]
        summary["differences"][f"{a} - {b}"] = entry
    return summary


def interval(x: Mapping[str, float]) -> str:
    """`mean [low, high]` to three decimals."""
    return f"{x['mean']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


HEADERS = {"log_odds": "log-odds ↓", "comprehensiveness": "comprehensiveness ↑", "sufficiency": "sufficiency ↓"}


def markdown(
    methods: Mapping[str, Mapping[str, Any]],
    extra: Mapping[str, Callable[[Mapping], str]] | None = None,
    headers: Mapping[str, str] = HEADERS,
) -> str:
    """A summary's methods as a Markdown table: n, each metric's interval (`headers`: metric -> column
    title), then `extra` columns."""
    extra = extra or {}
    header = ["method", "n", *headers.values(), *extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in methods.items():
        cells = [name, str(m["n"]), *(interval(m[k]) for k in headers), *(cell(m) for cell in extra.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
