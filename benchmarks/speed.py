"""IG and SIG through the user's path, against the bare model's forward+backward floor.

    python -m benchmarks.speed --tokens 16,32,64,128 --steps 50 --json speed.json

Per case (method, T word tokens, n steps): the seconds of one `interpreter.run`
on the embedded SST-2 model (interpreter -> model predict -> device), and in the
same run the floor: as many rows of T + 2 tokens pushed through the bare torch
model's forward and backward (gradients with respect to the input embeddings)
at its fastest minibatch size. For SIG, also adaptive SIG's passes and
completeness error beside fixed SIG's; and the peak memory of SIG on the
longest input the model takes, measured in a child process for a bounded time.
"""

import argparse
import json
import multiprocessing
import os
import pathlib
import time

import torch

import lit_sig
from benchmarks.common import CountingModel
from lit_sig import interpreters, models, storage

METHODS = {
    "integrated_gradients": lit_sig.IntegratedGradients,
    "sequential_integrated_gradients": lit_sig.SequentialIntegratedGradients,
}
FLOOR_MINIBATCHES = (8, 16, 32, 64, 128)
REPEAT_BELOW = 20_000  # rows * T: cheaper cases are timed --repeats times.
# Words that are one word piece each, so a sentence of T of them has T tokens.
WORDS = "the film is not bad but the plot never quite works and i wanted more from it".split()


def sentence(model: models.HFSequenceClassifier, num_tokens: int) -> str:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(num_tokens))
    assert len(model.tokenizer.tokenize(text)) == num_tokens
    return text


def explain(model: models.HFSequenceClassifier, method: str, text: str, config: dict) -> tuple[float, int, float]:
    """Seconds, rows and completeness delta of one explanation."""
    counting = CountingModel(model)
    started = time.perf_counter()
    result = METHODS[method]().run([{"sentence": text}], counting, None, config=config)[0]
    return time.perf_counter() - started, counting.rows, abs(result[interpreters.COMPLETENESS_KEY])


def floor_seconds(model: models.HFSequenceClassifier, text: str, rows: int) -> tuple[float, int]:
    """Seconds for `rows` forward+backward passes of the bare model, at its best minibatch size."""
    encoding = model.tokenizer(text, return_tensors="pt").to(model.device)
    with torch.no_grad():
        embs = model.model.get_input_embeddings()(encoding["input_ids"])  # [1, T + 2, D]

    def run(num_rows: int, size: int) -> float:
        started = time.perf_counter()
        for start in range(0, num_rows, size):
            b = min(size, num_rows - start)
            x = embs.expand(b, -1, -1).clone().requires_grad_(True)  # [b, T + 2, D]
            mask = encoding["attention_mask"].expand(b, -1)
            logits = model.model(inputs_embeds=x, attention_mask=mask).logits  # [b, C]
            torch.autograd.grad(logits[:, -1].sum(), x)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    sample = min(rows, 2 * max(FLOOR_MINIBATCHES))
    best = min(FLOOR_MINIBATCHES, key=lambda size: run(sample, size) / sample)
    return run(rows, best), best


def peak_memory(num_tokens: int, steps: int, seconds: float, device: str | None) -> dict:
    """Peak extra resident memory of SIG on `num_tokens` tokens, run for at most `seconds`."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    child = context.Process(target=_memory_child, args=(num_tokens, steps, device, ready), daemon=True)
    child.start()
    baseline_kb = ready.get(timeout=600)
    started, peak_kb, finished = time.monotonic(), baseline_kb, False
    while time.monotonic() - started < seconds:
        peak_kb = max(peak_kb, _status_kb(child.pid, "VmHWM"))
        if not child.is_alive():
            finished = True
            break
        time.sleep(0.2)
    child.kill()
    child.join()
    return {"tokens": num_tokens, "steps": steps, "seconds_observed": round(time.monotonic() - started, 1),
            "finished": finished, "peak_extra_mb": round((peak_kb - baseline_kb) / 1024, 1)}


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def _memory_child(num_tokens: int, steps: int, device: str | None, ready) -> None:
    model = models.minilm_sst2(device)
    text = sentence(model, num_tokens)
    model.predict([{"sentence": text}])  # Warm up before the baseline.
    ready.put(_status_kb(os.getpid(), "VmRSS"))
    lit_sig.SequentialIntegratedGradients().run(
        [{"sentence": text}], model, None, config={interpreters.INTERPOLATION_KEY: steps}
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="16,32,64,128", help="word tokens per sentence, comma-separated")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"from {list(METHODS)}")
    parser.add_argument("--tolerance", type=float, default=None, help="adaptive SIG tolerance (default: its own)")
    parser.add_argument("--memory_tokens", type=int, default=510, help="0 skips the memory check")
    parser.add_argument("--memory_seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=3, help=f"timings per case when rows * T <= {REPEAT_BELOW}")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        parser.error(f"--tokens must be comma-separated integers, got {args.tokens!r}")
    methods = args.methods.split(",")
    if bad := sorted(set(methods) - set(METHODS)):
        parser.error(f"unknown --methods {bad}; accepted: {', '.join(METHODS)}")
    model = models.minilm_sst2(args.device)
    if bad := [t for t in tokens if not 1 <= t <= model.max_length - 2]:
        parser.error(f"--tokens {bad} out of range; accepted: 1..{model.max_length - 2}")
    config = {interpreters.INTERPOLATION_KEY: args.steps, interpreters.NORMALIZATION_KEY: False}
    adaptive = {interpreters.NORMALIZATION_KEY: False, interpreters.ADAPTIVE_KEY: True}
    if args.tolerance is not None:
        adaptive[interpreters.TOLERANCE_KEY] = args.tolerance
    explain(model, "integrated_gradients", sentence(model, 8), config)  # Warm up.

    report = {"device": str(model.device) if model.device.type == "cpu" else torch.cuda.get_device_name(),
              "threads": torch.get_num_threads(), "cases": []}
    print("| method | T | n | rows | seconds | floor | ratio | adaptive rows | passes | delta fixed | delta adaptive |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for T in tokens:
        text = sentence(model, T)
        for method in methods:
            # Ours and the floor alternate; the fastest of each counts (the machine is shared).
            seconds, rows, delta = explain(model, method, text, config)
            times, floors = [seconds], [floor_seconds(model, text, rows)]
            while len(times) < args.repeats and rows * T <= REPEAT_BELOW:
                times.append(explain(model, method, text, config)[0])
                floors.append(floor_seconds(model, text, rows))
            seconds = min(times)
            floor, minibatch = min(floors)
            case = {"method": method, "tokens": T, "steps": args.steps, "rows": rows, "seconds": seconds,
                    "floor_seconds": floor, "floor_minibatch": minibatch, "ratio": seconds / floor,
                    "completeness_delta": delta}
            if method == "sequential_integrated_gradients":
                _, adaptive_rows, adaptive_delta = explain(model, method, text, adaptive)
                case |= {"adaptive_rows": adaptive_rows, "adaptive_pass_fraction": adaptive_rows / rows,
                         "adaptive_completeness_delta": adaptive_delta}
            report["cases"].append(case)
            print(f"| {method} | {T} | {args.steps} | {rows} | {seconds:.2f} | {floor:.2f} | {case['ratio']:.3f} "
                  f"| {case.get('adaptive_rows', '')} | {case.get('adaptive_pass_fraction', float('nan')):.2f} "
                  f"| {delta:.1e} | {case.get('adaptive_completeness_delta', float('nan')):.1e} |", flush=True)
    if args.memory_tokens:
        report["memory"] = peak_memory(args.memory_tokens, args.steps, args.memory_seconds, args.device)
        print(f"SIG memory at T={args.memory_tokens}, n={args.steps}: {report['memory']}")
    if args.json:
        storage.write_atomically(pathlib.Path(args.json), json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
