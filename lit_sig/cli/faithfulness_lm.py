"""Erasure faithfulness on a causal LM: does erasing the most salient prompt tokens lower the target's log-probability?

For every prompt, target (the data's, or the model's greedy response) and method, the prompt's
movable tokens (its own text: never BOS or the chat template's markers) are ranked by the
method's salience for F, the target's summed log-probability, and the top
k = max(1, round(f M)) of the M are erased. Each metric is the change of F, in nats:

- `replaced`: the top k at the method's baseline embedding (zero by default); lower is better.
- `deleted`: the top k removed from the sequence; lower is better.
- `kept`: only the top k of the prompt's movable tokens kept (the others removed); higher is better.

`random` ranks at random, the floor every method should beat. Target tokens are context for
later target tokens but never erased: erasing one would change what F sums.
"""

import dataclasses
from typing import Any

import numpy as np
import torch

from lit_sig import models
from lit_sig.core import erasure
from lit_sig.lit import interpreters, registry

METRICS = ("replaced", "deleted", "kept")
LOWER_IS_BETTER = {"replaced": True, "deleted": True, "kept": False}
HEADERS = {"replaced": "replaced ↓", "deleted": "deleted ↓", "kept": "kept ↑"}


def _salience(
    lm: models.HFCausalLM, method: str, config: dict[str, Any], inputs: list[dict[str, Any]], prepared: list
) -> list[tuple[np.ndarray, float | None]]:
    """Per input: `[L]` raw salience and the completeness delta (or None)."""
    if method == erasure.RANDOM:
        return [(erasure.random_scores(e["prompt"], len(p.x)), None) for e, p in zip(inputs, prepared)]
    results = registry.get(method).make().run(inputs, lm, None, config=config)
    out = []
    for result in results:
        delta = result.get(interpreters.COMPLETENESS_KEY)
        salience = np.asarray(result[models.causal_lm.GRADIENTS_FIELD].salience, dtype=np.float64)
        out.append((salience, None if delta is None else abs(delta)))
    return out


def _deleted(p: models.causal_lm.LMPathInput, delete: np.ndarray) -> models.causal_lm.LMPathInput:
    """The input with the tokens at `delete` (`[L]` bool, none of them a target) removed."""
    keep = torch.as_tensor(~delete, device=p.x.device)  # [L]
    shift = torch.as_tensor(np.cumsum(delete), device=p.x.device)  # [L] tokens removed up to each position
    x = p.x[keep]
    targets = p.score_positions + 1
    needed = int(targets[-1] - shift[targets[-1]])
    return dataclasses.replace(
        p,
        x=x,
        movable=None,
        full=x[:needed],
        positions=torch.arange(needed, device=x.device),
        score_positions=targets - shift[targets] - 1,
    )


def _scores(lm: models.HFCausalLM, pieces: list) -> list[float]:
    with torch.inference_mode():
        return [float(s[0]) for s, _ in lm.score_rows(pieces, with_grads=False)]


def score_batch(
    lm: models.HFCausalLM, method: str, settings: Any, examples: list[dict[str, Any]], source: dict[str, Any]
) -> list[dict[str, Any]]:
    """Rows of one method on a batch of examples `{"id", "prompt", "target"}` (see the module docstring)."""
    inputs = [{"prompt": e["prompt"], "target": e["target"] or lm.generate([e])[0]} for e in examples]
    prepared = lm.path_inputs(inputs, [None] * len(inputs), [models.causal_lm.EMBEDDINGS_FIELD])
    config = {} if method == erasure.RANDOM else registry.get(method).config(settings.steps, settings.baseline, False)
    ranked_salience = _salience(lm, method, config, inputs, prepared)
    zero = np.zeros(lm.model.get_input_embeddings().embedding_dim, dtype=np.float32)
    vector = lm.baseline_embedding(models.causal_lm.EMBEDDINGS_FIELD, settings.baseline)
    baseline = torch.as_tensor(zero if vector is None else vector, device=lm.device)  # [D]
    pieces, ks = [], []
    for p in prepared:
        prompt_length = p.encoding.prompt_length
        ranked = [i for i in range(prompt_length) if bool(p.movable[i])]
        ks.append(settings.protocol.k(len(ranked)))
        pieces.append((p, ranked))
    rows_in, index = [], []
    for (p, ranked), (salience, _), k in zip(pieces, ranked_salience, ks):
        top = erasure.top_positions(salience[ranked], ranked, k)
        replaced = p.x.clone()
        replaced[top] = baseline.to(replaced.dtype)
        deleted = np.zeros(len(p.x), dtype=bool)
        deleted[top] = True
        dropped = np.zeros(len(p.x), dtype=bool)
        dropped[[i for i in ranked if i not in set(top)]] = True
        erased = [(p, p.x[None]), (p, replaced[None]), (_deleted(p, deleted), None), (_deleted(p, dropped), None)]
        rows_in += [(q, q.x[None] if r is None else r) for q, r in erased]
        index.append(len(rows_in) - 4)
    scores = _scores(lm, rows_in)
    rows = []
    for e, given, (salience, delta), k, start in zip(examples, inputs, ranked_salience, ks, index):
        at_x, replaced, deleted, kept = scores[start : start + 4]
        rows.append(
            {
                "id": e["id"],
                "prompt": e["prompt"],
                "target": given["target"],
                "generated": not e["target"],
                "score": at_x,
                "method": method,
                "k": k,
                "replaced": replaced - at_x,
                "deleted": deleted - at_x,
                "kept": kept - at_x,
                "completeness_delta": delta,
                **dataclasses.asdict(settings),
                **source,
            }
        )
    return rows
