"""The GPU check, in one command: agreement with the CPU, bfloat16's cost, and speed against the floor.

    python -m benchmarks.gpu_check --json gpu_check.json --profile_dir profiles --compile_shapes bert-base
    python -m benchmarks.gpu_check --device cpu --quick           # the same code path, tiny, anywhere

1. CUDA vs CPU: IG, SIG (20 steps) and exact SIG of a random MiniLM-shaped model
   (same weights on both) on two sentences, fp32: the largest relative difference (None
   when the device is the CPU), and against the same model in float64 on the CPU.
2. bfloat16: SIG's completeness deltas and its distance from fp32.
3. Speed (benchmarks.speed, floor rerun in the same process): SIG, exact SIG and IG
   at T = 32 and 128 for the MiniLM and BERT-base shapes, fp32 and bf16, and IG over
   64 sentences in one `run()`; time-interpret's SIG beside ours if it is installed
   (at our precision and, for bf16, also in float32 as it ships). Each case also
   records its first, cold run (`first_run_seconds`) and the rows of its passes; SIG
   cases also run through the full model (`full_last_layer_seconds`: what the wrapper's
   first-token last layer saves; the floor always runs the full model).
4. With `--profile_dir`: one SIG run per shape and precision under torch.profiler,
   its device busy time beside its wall time, the top operators, and how many of its
   operations waited for the device (CUDA's sync debug mode) against its passes.
5. With `--compile_shapes bert-base`, after all of the above: SIG with `torch_compile=True`
   beside the eager cases of that shape (compile time, time against the eager floor and
   time-interpret, agreement with eager).
Random weights: speed does not depend on them.
"""

import argparse
import json
import pathlib
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks import speed
from benchmarks.common import SHAPES, WORDS, random_model
from lit_sig import models, storage
from lit_sig.lit import interpreters, registry

CHECKED_PRECISIONS = ("float32", "bfloat16")  # Timed eager for every shape; compiled for --compile_precisions.

SENTENCES = [" ".join(WORDS[i % len(WORDS)] for i in range(start, start + n)) for start, n in ((0, 7), (3, 20))]
PATH_METHODS = (speed.IG, speed.SIG, speed.EXACT_SIG)  # Registry names (lit_sig.lit.registry).


def attributions(
    model: models.HFSequenceClassifier, method: str, steps: int = 20, texts: list[str] = SENTENCES
) -> list[tuple[np.ndarray, float]]:
    """Per text: raw token salience and |completeness delta| of `method` (the predicted class)."""
    interpreter, config = registry.interpreter_and_config(method, steps, interpreters.DEFAULT_BASELINE, False)
    results = interpreter.run([{"sentence": s} for s in texts], model, None, config=config)
    return [
        (np.asarray(r[models.gradients_field("sentence")].salience), abs(r[interpreters.COMPLETENESS_KEY]))
        for r in results
    ]


def max_relative(a: list[tuple[np.ndarray, float]], b: list[tuple[np.ndarray, float]]) -> float:
    return max(float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-12)) for (x, _), (y, _) in zip(a, b))


def agreement(device: str, shape: str) -> dict:
    """Step 1 and 2: the device against the CPU in fp32, and bf16 against fp32 on the device."""
    here = random_model(shape, device)
    on_cpu = here.device.type == "cpu"
    cpu = None if on_cpu else random_model(shape, "cpu")
    same = random_model(shape, "cpu")  # The same weights, every pass in float64.
    float64 = models.HFSequenceClassifier(same.model.double(), same.tokenizer, labels=same.labels, device="cpu")
    bf16 = random_model(shape, device, precision="bfloat16")
    report = {}
    for method in PATH_METHODS:
        ours, low, exact = attributions(here, method), attributions(bf16, method), attributions(float64, method)
        report[method] = {
            "device_vs_cpu_max_relative": None if cpu is None else max_relative(ours, attributions(cpu, method)),
            "device_vs_float64_max_relative": max_relative(ours, exact),
            "bf16_vs_fp32_max_relative": max_relative(low, ours),
            "fp32_completeness_delta": max(d for _, d in ours),
            "bf16_completeness_delta": max(d for _, d in low),
        }
        print(f"{method}: {report[method]}", flush=True)
    return report


def time_interpret_sig(
    model: models.HFSequenceClassifier, text: str, steps: int, precision: str | None = None
) -> dict | None:
    """time-interpret's SIG on the same model, word tokens only, [MASK] baseline; None if not installed.

    Under autocast at `precision` (default: the model's). Timed on its second run, as ours
    is (`first_seconds` is the first).
    """
    try:
        from tint.attr import SequentialIntegratedGradients  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    encoding = model.tokenizer(text, return_tensors="pt").to(model.device)
    table = model.model.get_input_embeddings()
    with torch.no_grad():
        full = table(encoding["input_ids"])[0]  # [L, D]
    words = full[1:-1]  # [T, D]
    baseline = table.weight[model.tokenizer.mask_token_id].detach().expand_as(words)
    autocast = models.PRECISIONS[precision or model.precision]

    def forward(word_embs: torch.Tensor) -> torch.Tensor:  # [N, T, D] -> [N, C]
        N = word_embs.shape[0]
        embs = torch.cat([full[:1].expand(N, 1, -1), word_embs, full[-1:].expand(N, 1, -1)], dim=1)
        with torch.autocast(model.device.type, dtype=autocast, enabled=autocast is not None):
            return model.model(
                inputs_embeds=embs, attention_mask=torch.ones(embs.shape[:2], device=embs.device)
            ).logits.float()

    explainer = SequentialIntegratedGradients(forward)
    seconds = []
    for _ in range(2):
        speed.synchronize(model)
        started = time.perf_counter()
        result = explainer.attribute(words[None], baselines=baseline[None], target=1, n_steps=steps)
        speed.synchronize(model)
        seconds.append(time.perf_counter() - started)
    return {
        "seconds": seconds[1],
        "first_seconds": seconds[0],
        "salience": result[0].sum(-1).detach().float().cpu().numpy(),
    }


def profile_sig(model: models.HFSequenceClassifier, tokens: int, steps: int, path: pathlib.Path) -> dict:
    """One warm SIG run under torch.profiler; writes the top operators by self device and CPU time to `path`.

    Returns the run's wall seconds and, on CUDA, the device's busy seconds (the sum of
    every kernel's time): far apart, the host or launches are the bottleneck, not the model.
    """
    cuda = model.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    text = speed.sentence(model, tokens)
    config = speed.case_config(steps)
    speed.explain(model, speed.SIG, [text], config)  # Warm.
    with torch.profiler.profile(activities=activities) as profiler:
        run = speed.explain(model, speed.SIG, [text], config)
    averages = profiler.key_averages()
    busy = sum(e.self_device_time_total for e in averages) / 1e6 if cuda else None
    keys = ["self_device_time_total"] * cuda + ["self_cpu_time_total"]
    tables = [averages.table(sort_by=key, row_limit=25) for key in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"SIG, T={tokens}, n={steps}, {model.precision}: wall {run['seconds']:.4f} s, device busy {busy} s\n"
    syncs = host_syncs(model, text, config) if cuda else None
    header += f"gradient passes: {run['gradient_passes']}; host synchronizations: {syncs}\n\n"
    path.write_text(header + "\n\n".join(tables) + "\n")
    return {
        "tokens": tokens,
        "wall_seconds": run["seconds"],
        "device_busy_seconds": busy,
        "host_syncs": syncs,
        "gradient_passes": len(run["gradient_passes"]),
        "file": path.name,
    }


def host_syncs(model: models.HFSequenceClassifier, text: str, config: dict) -> int:
    """How many operations of one SIG run waited for the device (CUDA's sync debug mode, warnings counted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            speed.explain(model, speed.SIG, [text], config)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def speed_table(
    device: str,
    shapes: list[str],
    tokens: list[int],
    steps: int,
    ig_batch: int,
    report: dict,
    out: str | None,
    profile_dir: pathlib.Path | None = None,
) -> None:
    """Appends each shape and precision's cases to `report["speed"]` (saved after each); failures to "errors".

    With `profile_dir`, also profiles one SIG run per shape and precision at the shortest length.
    """
    for shape in shapes:
        for precision in CHECKED_PRECISIONS:
            print(f"\n{shape}, {precision}:", flush=True)
            try:
                model = random_model(shape, device, precision)
                methods = [speed.SIG, speed.EXACT_SIG, speed.IG]
                batch = ig_batch if precision == "float32" else 0
                run = speed.run_cases(model, tokens, methods, steps, 3, None, batch, adaptive=False)
                for case in run:
                    case |= {"shape": shape, "precision": precision, "trimmed_last_layer": model.trimmed}
                    if case["method"] == speed.SIG:
                        _beside_time_interpret(model, case, steps)
                        _beside_full_last_layer(model, case, steps)
                report["speed"] += run
                if profile_dir is not None:
                    path = profile_dir / f"profile_{shape}_{precision}.txt"
                    report["profiles"].append(
                        profile_sig(model, min(tokens), steps, path) | {"shape": shape, "precision": precision}
                    )
                    print(f"  profile: {report['profiles'][-1]}", flush=True)
            except Exception as error:  # pylint: disable=broad-except
                report["errors"].append(f"{shape} {precision}: {traceback.format_exc()}")
                print(f"FAILED {shape} {precision}: {error!r}", flush=True)
            _save(report, out)


def compiled_table(
    device: str,
    shapes: tuple[str, ...],
    steps: int,
    report: dict,
    out: str | None,
    precisions: tuple[str, ...] = CHECKED_PRECISIONS,
) -> None:
    """For each of `shapes` and `precisions`, after the eager table: SIG with `torch_compile=True` beside
    each eager SIG case.

    Last, as compiling takes minutes: a run cut short keeps the eager table.
    """
    for shape in shapes:
        for precision in precisions:
            print(f"\n{shape}, {precision}, torch_compile:", flush=True)
            cases = [
                c for c in report["speed"] if (c["shape"], c["precision"], c["method"]) == (shape, precision, speed.SIG)
            ]
            label = f"{shape} {precision} compiled"
            _attempt(report, label, beside_compiled, shape, device, precision, cases, steps)
            _save(report, out)


def _beside_time_interpret(model: models.HFSequenceClassifier, case: dict, steps: int) -> None:
    """time-interpret's SIG at the model's precision and, when that is lower, as it ships (float32)."""
    text = speed.sentence(model, case["tokens"])
    tint = time_interpret_sig(model, text, steps)
    if tint is None:
        return
    case["time_interpret_seconds"] = tint["seconds"]
    case["time_interpret_first_seconds"] = tint["first_seconds"]
    case["speedup_over_time_interpret"] = tint["seconds"] / case["seconds"]
    line = f"  time-interpret SIG T={case['tokens']}: {tint['seconds']:.3f} s, ours {case['seconds']:.3f} s"
    line += f" ({case['speedup_over_time_interpret']:.2f}x)"
    if model.precision != "float32":
        fp32 = time_interpret_sig(model, text, steps, precision="float32")
        case["time_interpret_float32_seconds"] = fp32["seconds"]
        case["speedup_over_time_interpret_float32"] = fp32["seconds"] / case["seconds"]
        line += f"; in float32 {fp32['seconds']:.3f} s ({case['speedup_over_time_interpret_float32']:.2f}x)"
    print(line, flush=True)


def _beside_full_last_layer(model: models.HFSequenceClassifier, case: dict, steps: int) -> None:
    """The same SIG case with every pass through the full model (`trim_last_layer=False`), warm."""
    if not model.trimmed:
        return
    full = models.HFSequenceClassifier(
        model.model,
        model.tokenizer,
        labels=model.labels,
        device=model.device,
        precision=model.precision,
        trim_last_layer=False,
    )
    _, seconds = _first_and_warm_sig(full, case["tokens"], steps)
    case |= {"full_last_layer_seconds": seconds, "full_last_layer_ratio": seconds / case["floor_seconds"]}
    ratio = case["full_last_layer_ratio"]
    print(f"  SIG T={case['tokens']} with the full last layer: {seconds:.3f} s ({ratio:.3f}x floor)", flush=True)


def beside_compiled(shape: str, device: str, precision: str, sig_cases: list[dict], steps: int) -> None:
    """SIG through `torch_compile=True` (same weights) beside each eager SIG case: time and agreement.

    The first run compiles (`compiled_first_run_seconds`); the second is timed against the
    eager floor already measured for the case, and time-interpret's time if it has one.
    """
    eager = random_model(shape, device, precision)
    compiled = random_model(shape, device, precision, torch_compile=True)
    for case in sig_cases:
        first, seconds = _first_and_warm_sig(compiled, case["tokens"], steps)
        case |= {
            "compiled_first_run_seconds": first,
            "compiled_seconds": seconds,
            "compiled_ratio": seconds / case["floor_seconds"],
        }
        for key in ("time_interpret_seconds", "time_interpret_float32_seconds"):
            if key in case:
                case[f"compiled_speedup_over_{key.removesuffix('_seconds')}"] = case[key] / seconds
        print(f"  compiled SIG T={case['tokens']}: {first:.1f} s first, then {seconds:.3f} s", flush=True)
    if sig_cases:  # One unpadded sentence: a padded pass would compile a second graph (with a mask).
        text = [speed.sentence(compiled, sig_cases[0]["tokens"])]
        both = [attributions(m, "sig", texts=text) for m in (compiled, eager)]
        sig_cases[0]["compiled_vs_eager_max_relative"] = max_relative(*both)


def _first_and_warm_sig(model: models.HFSequenceClassifier, tokens: int, steps: int) -> tuple[float, float]:
    """Seconds of SIG on the case's sentence through `model`: its first run, then a warm one."""
    texts, config = [speed.sentence(model, tokens)], speed.case_config(steps)
    first = speed.explain(model, speed.SIG, texts, config)["seconds"]
    return first, speed.explain(model, speed.SIG, texts, config)["seconds"]


def _attempt(report: dict, label: str, step: Callable[..., None], *args: Any) -> None:
    """Runs an optional step; a failure goes to `report["errors"]`, not past what was measured."""
    try:
        step(*args)
    except Exception as error:  # pylint: disable=broad-except
        report["errors"].append(f"{label}: {traceback.format_exc()}")
        print(f"FAILED {label}: {error!r}", flush=True)


def _save(report: dict, out: str | None) -> None:
    if out:
        storage.write_atomically(pathlib.Path(out), json.dumps(report, indent=2, default=float) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny shape, short sentences, few steps (a smoke test)")
    parser.add_argument("--shapes", default="bert-base,minilm", help="random-weight shapes, comma-separated")
    parser.add_argument("--tokens", default="128,32", help="word tokens per sentence, comma-separated")
    parser.add_argument("--ig_batch", type=int, default=64, help="IG over this many sentences in one run")
    parser.add_argument("--json", default=None, help="the report, rewritten after every step")
    parser.add_argument("--profile_dir", default=None, help="profile one SIG run per shape and precision here")
    parser.add_argument(
        "--compile_shapes", default="", help="also time SIG with torch_compile=True for these shapes (comma-separated)"
    )
    parser.add_argument(
        "--compile_precisions",
        default=",".join(CHECKED_PRECISIONS),
        help="the precisions --compile_shapes compiles (each compile takes a minute on a CPU)",
    )
    args = parser.parse_args(argv)
    compile_precisions = tuple(p for p in args.compile_precisions.split(",") if p)
    if bad := sorted(set(compile_precisions) - set(CHECKED_PRECISIONS)):
        parser.error(f"--compile_precisions {bad}: accepted: {', '.join(CHECKED_PRECISIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu for a smoke test")
    shapes, tokens = args.shapes.split(","), [int(t) for t in args.tokens.split(",")]
    steps, ig_batch = 50, args.ig_batch
    if args.quick:
        shapes, tokens, steps, ig_batch = ["tiny"], [8], 5, 4
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "speed": [],
        "profiles": [],
        "errors": [],
    }
    try:
        report["agreement"] = agreement(args.device, "minilm" if not args.quick else "tiny")
    except Exception:  # pylint: disable=broad-except
        report["errors"].append(f"agreement: {traceback.format_exc()}")
        print(report["errors"][-1], flush=True)
    _save(report, args.json)
    profile_dir = None if args.profile_dir is None else pathlib.Path(args.profile_dir)
    compile_shapes = tuple(s for s in args.compile_shapes.split(",") if s)
    if bad := sorted(set(compile_shapes) - set(SHAPES)):
        parser.error(f"--compile_shapes {bad}: accepted: {', '.join(SHAPES)}")
    speed_table(args.device, shapes, tokens, steps, ig_batch, report, args.json, profile_dir)
    compiled_table(args.device, compile_shapes, steps, report, args.json, compile_precisions)
    print(f"errors: {len(report['errors'])}", flush=True)
    for error in report["errors"]:
        print(error, flush=True)


if __name__ == "__main__":
    main()
