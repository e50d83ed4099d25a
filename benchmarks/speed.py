"""IG and SIG through the user's path, against the bare model's floor, in one run.

    python -m benchmarks.speed --tokens 16,32,64,128 --steps 50 --json speed.json
    python -m benchmarks.speed --shape bert-base --precision bfloat16 --tokens 32,128 --memory_tokens 0

Per case (method, T word tokens, n steps, 'Class to explain' fixed to "1" unless
`--class_to_explain ''` asks for the predicted class): the seconds of one `interpreter.run`
(interpreter -> model -> device) and, in the same run, the floor: as many rows of
T + 2 tokens pushed through the bare torch model at its fastest minibatch size
(forward+backward for gradient rows, forward only for score rows). Methods:
fixed-step IG and SIG, exact SIG (whose time is also set against fixed SIG's
floor), adaptive SIG (against the floor of its own rows: as many forward+backward
rows at the bare model's best minibatch; its passes, the first one's rows, its
completeness error), and IG over many sentences
of 8..40 tokens in one `run()` (`--ig_batch`). Also the peak memory of SIG on the
longest input, measured in a child process for a bounded time.

Layer rows (`--layers mid,last`, the default): IG and exact SIG with `Layer` set to a
middle layer (N // 2) and to N - 1 (rows run the last block only), against the floor
of the same rows through the bare blocks above that layer and the head, plus one bare
pass of the input and the baseline input through the blocks below (where x and the
baseline at the layer come from); `fraction` is their time over the same method's at
the word embeddings, next to the floor's own fraction and (N - L) / N.

`--shape sst2` is the embedded model; `minilm`, `bert-base` (and `tiny`) are
random-weight models of those shapes: speed does not depend on the weights.
"""

import argparse
import json
import multiprocessing
import os
import pathlib
import time

import numpy as np
import torch
import transformers

import lit_sig
from benchmarks.common import SHAPES, WORDS, CountingModel, random_model
from lit_sig import models, storage
from lit_sig.lit import interpreters, registry

# Methods by their registry names (lit_sig.lit.registry), e.g. `--methods captum_kernelshap`.
SIG, IG, EXACT_SIG = "sig", "ig", "exact_sig"
ADAPTIVE_SIG = "adaptive_sig"  # Timed after SIG unless --no-adaptive, against the floor of its own rows.
IG_BATCH = "ig_batch"  # The case of IG over many sentences in one `run()`.
DEFAULT_METHODS = (IG, SIG, EXACT_SIG)
LAYER_METHODS = (IG, EXACT_SIG)  # At a layer: gradient rows and forward rows.
CPU_MINIBATCHES = (8, 16, 32, 64, 128)
CUDA_MINIBATCHES = (32, 64, 128, 256, 512, 1024)
DEFAULT_CLASS = "1"  # 'Class to explain', fixed as a user picks it in the config ("": label field, else predicted).
REPEAT_BELOW = 20_000  # rows * T: cheaper cases are timed --repeats times (on CUDA, 10x more: SIG at T = 32 too).
FLOOR_SEARCH_ROWS = 1024  # Rows timed per candidate minibatch size.


def load_model(
    shape: str, device: str | None, precision: str, torch_compile: bool = False, trim_last_layer: bool = True
) -> models.HFSequenceClassifier:
    options = {"precision": precision, "torch_compile": torch_compile, "trim_last_layer": trim_last_layer}
    if shape == "sst2":
        return models.minilm_sst2(device, **options)
    return random_model(shape, device, **options)


def sentence(model: models.HFSequenceClassifier, num_tokens: int) -> str:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(num_tokens))
    assert len(model.tokenizer.tokenize(text)) == num_tokens
    return text


def synchronize(model: models.HFSequenceClassifier) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def case_config(steps: int, class_to_explain: str = DEFAULT_CLASS) -> dict:
    """The interpreters' config of every timed case: raw salience, `steps`, a fixed class."""
    return {
        interpreters.INTERPOLATION_KEY: steps,
        interpreters.NORMALIZATION_KEY: False,
        interpreters.CLASS_KEY: class_to_explain,
    }


def explain(model: models.HFSequenceClassifier, method: str, texts: list[str], config: dict) -> dict:
    """Seconds, rows (forward+backward and forward-only) and completeness delta of one `run`."""
    counting = CountingModel(model)
    spec = registry.get(method)
    if method.startswith(registry.CAPTUM_PREFIX) or spec.reads_model_gradients:  # Their defaults, raw salience.
        config = {interpreters.NORMALIZATION_KEY: False}
    elif spec.steps_key is None:  # Exact or adaptive SIG: no steps.
        config = {k: v for k, v in config.items() if k != interpreters.INTERPOLATION_KEY}
    interpreter = spec.make()
    synchronize(model)
    started = time.perf_counter()
    results = interpreter.run([{"sentence": t} for t in texts], counting, None, config={**config, **dict(spec.extra)})
    synchronize(model)
    seconds = time.perf_counter() - started
    deltas = [abs(r.get(interpreters.COMPLETENESS_KEY) or 0.0) for r in results]
    return {
        "seconds": seconds,
        "rows": counting.rows,
        "forward_rows": counting.forward_only,
        "completeness_delta": max(deltas),
        "gradient_passes": [rows for rows, with_grads in counting.passes if with_grads],  # Rows of each.
    }


class Floor:
    """The bare model's time for rows of one sentence, at its fastest minibatch size (found once)."""

    def __init__(self, model: models.HFSequenceClassifier, text: str):
        self.model = model
        encoding = model.tokenizer(text, return_tensors="pt").to(model.device)
        with torch.no_grad():
            self.embs = model.model.get_input_embeddings()(encoding["input_ids"])  # [1, T + 2, D]
        self.mask = encoding["attention_mask"]  # [1, T + 2]
        self.sizes = CUDA_MINIBATCHES if model.device.type == "cuda" else CPU_MINIBATCHES
        self.best: dict[bool, int] = {}

    def _pass(self, rows: int, with_grads: bool) -> None:
        autocast = models.PRECISIONS[self.model.precision]
        x = self.embs.expand(rows, -1, -1).clone().requires_grad_(with_grads)  # [b, T + 2, D]
        with (
            torch.inference_mode(not with_grads),
            torch.autocast(self.model.device.type, dtype=autocast, enabled=autocast is not None),
        ):
            logits = self.model.model(inputs_embeds=x, attention_mask=self.mask.expand(rows, -1)).logits
        if with_grads:
            torch.autograd.grad(logits[:, -1].float().sum(), x)

    def _time(self, rows: int, size: int, with_grads: bool) -> float:
        synchronize(self.model)
        started = time.perf_counter()
        for start in range(0, rows, size):
            self._pass(min(size, rows - start), with_grads)
        synchronize(self.model)
        return time.perf_counter() - started

    def seconds(self, rows: int, with_grads: bool = True) -> float:
        """Seconds for `rows` passes (forward+backward, or forward only)."""
        if rows == 0:
            return 0.0
        if with_grads not in self.best:
            sample = min(max(rows, self.sizes[0]), 2 * max(self.sizes), FLOOR_SEARCH_ROWS)
            self._time(min(sample, self.sizes[0]), self.sizes[0], with_grads)  # Warm up.
            self.best[with_grads] = min(self.sizes, key=lambda s: self._time(sample, s, with_grads) / sample)
        return self._time(rows, self.best[with_grads], with_grads)

    def of(self, counts: dict) -> float:
        return self.seconds(counts["rows"], True) + self.seconds(counts["forward_rows"], False)


class LayerFloor(Floor):
    """The floor of rows at `layer` of one sentence (a BERT classifier): the bare blocks above the layer
    and the head for the rows, plus one bare pass of the embeddings and the blocks below for the input
    and the baseline input (where the rows' x and baseline come from)."""

    def __init__(self, model: models.HFSequenceClassifier, text: str, layer: int):
        super().__init__(model, text)
        module = model.model
        assert isinstance(module, transformers.BertForSequenceClassification), "the floor is written for BERT"
        self.below = list(module.bert.encoder.layer)[:layer]
        self.above = list(module.bert.encoder.layer)[layer:]
        self.embeddings = module.bert.embeddings
        self.head = lambda states: module.classifier(module.bert.pooler(states))  # Dropout is off in eval.
        with torch.no_grad():
            self.states = module(inputs_embeds=self.embs, output_hidden_states=True).hidden_states[layer]  # [1, T+2, H]

    def _pass(self, rows: int, with_grads: bool) -> None:
        autocast = models.PRECISIONS[self.model.precision]
        x = self.states.expand(rows, -1, -1).clone().requires_grad_(with_grads)  # [b, T + 2, H]
        with (
            torch.inference_mode(not with_grads),
            torch.autocast(self.model.device.type, dtype=autocast, enabled=autocast is not None),
        ):
            states = x
            for block in self.above:  # One sentence, no padding: no attention mask.
                states = block(states)
            logits = self.head(states)
        if with_grads:
            torch.autograd.grad(logits[:, -1].float().sum(), x)

    def lower_seconds(self) -> float:
        """One forward pass of the input and the baseline input through the embeddings and the blocks below."""
        synchronize(self.model)
        started = time.perf_counter()
        with torch.inference_mode():
            states = self.embeddings(inputs_embeds=self.embs.expand(2, -1, -1))  # [2, T + 2, H]
            for block in self.below:
                states = block(states)
        synchronize(self.model)
        return time.perf_counter() - started

    def of(self, counts: dict) -> float:
        return super().of(counts) + self.lower_seconds()


def time_case(
    model,
    method: str,
    texts: list[str],
    floors: list[Floor],
    config: dict,
    repeats: int,
    repeat_below: int = REPEAT_BELOW,
) -> dict:
    """Ours and the floor alternate; the fastest of each counts (the machine is shared).

    On CUDA the case runs once untimed first, as the floor's minibatch search warms the floor:
    the first pass at a length sizes the passes from measured memory and picks kernels. Its
    time is kept as `first_run_seconds` (what a user pays the first time at this length).
    """
    first = explain(model, method, texts, config)["seconds"] if model.device.type == "cuda" else None
    case = explain(model, method, texts, config)
    times, floor_times = [case["seconds"]], [sum(f.of(case) / len(texts) for f in floors)]
    repeat_below *= (10 if model.device.type == "cuda" else 1) * len(texts)
    while len(times) < repeats and case["rows"] * len(texts[0].split()) <= repeat_below:
        times.append(explain(model, method, texts, config)["seconds"])
        floor_times.append(sum(f.of(case) / len(texts) for f in floors))
    case |= {"method": method, "seconds": min(times), "floor_seconds": min(floor_times)}
    if first is not None:
        case["first_run_seconds"] = first
    case["floor_minibatch"] = floors[0].best.get(True)  # The bare model's best rows per pass (gradients).
    case["ratio"] = case["seconds"] / case["floor_seconds"]
    return case


def batch_floor(model, texts: list[str], case: dict) -> float:
    """The floor of IG's rows over `texts`: each sentence's rows at the best minibatch of its length."""
    per_text = {"rows": case["rows"] // len(texts), "forward_rows": case["forward_rows"] // len(texts)}
    return sum(Floor(model, t).of(per_text) for t in texts)


def peak_memory(shape: str, num_tokens: int, steps: int, seconds: float, device: str | None) -> dict:
    """Peak extra resident memory of SIG on `num_tokens` tokens, run for at most `seconds`."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    child = context.Process(target=_memory_child, args=(shape, num_tokens, steps, device, ready), daemon=True)
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
    return {
        "tokens": num_tokens,
        "steps": steps,
        "seconds_observed": round(time.monotonic() - started, 1),
        "finished": finished,
        "peak_extra_mb": round((peak_kb - baseline_kb) / 1024, 1),
    }


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def _memory_child(shape: str, num_tokens: int, steps: int, device: str | None, ready) -> None:
    model = load_model(shape, device, "float32")
    text = sentence(model, num_tokens)
    model.predict([{"sentence": text}])  # Warm up before the baseline.
    ready.put(_status_kb(os.getpid(), "VmRSS"))
    lit_sig.SequentialIntegratedGradients().run(
        [{"sentence": text}], model, None, config={interpreters.INTERPOLATION_KEY: steps}
    )


def print_row(case: dict) -> None:
    extra = ""
    if "adaptive_rows" in case:
        extra = (
            f"adaptive: {case['adaptive_rows']} rows ({case['adaptive_pass_fraction']:.0%}),"
            f" delta {case['adaptive_completeness_delta']:.1e}"
        )
    if "ratio_to_sig_floor" in case:
        extra = f"1/{1 / case['ratio_to_sig_floor']:.0f} of fixed SIG's floor"
    if "layer" in case:
        extra = (
            f"{case['fraction']:.0%} of the full pass (floor: {case['floor_fraction']:.0%};"
            f" (N - L) / N = {case['expected_fraction']:.0%})"
        )
    method = case["method"] + (f" at layer {case['layer']}" if "layer" in case else "")
    if case["method"] == ADAPTIVE_SIG:
        passes = case["gradient_passes"]
        extra = f"{len(passes)} passes, the first {passes[0] if passes else 0} rows (of {case['rows_per_pass']})"
    print(
        f"| {method} | {case['tokens']} | {case['rows']} + {case['forward_rows']} | {case['seconds']:.3f} "
        f"| {case['floor_seconds']:.3f} | {case['ratio']:.3f} | {case['completeness_delta']:.1e} | {extra} |",
        flush=True,
    )


def run_cases(
    model,
    tokens: list[int],
    methods: list[str],
    steps: int,
    repeats: int,
    tolerance: float | None,
    ig_batch: int,
    adaptive: bool = True,
    class_to_explain: str = DEFAULT_CLASS,
    repeat_below: int = REPEAT_BELOW,
) -> list[dict]:
    """Times every method at every length (and IG over `ig_batch` sentences), printing a table row each.

    With `adaptive`, adaptive SIG is timed after fixed SIG, against the floor of its own rows.
    """
    config = case_config(steps, class_to_explain)
    if adaptive and SIG in methods and ADAPTIVE_SIG not in methods:
        methods = [*methods[: methods.index(SIG) + 1], ADAPTIVE_SIG, *methods[methods.index(SIG) + 1 :]]
    explain(model, IG, [sentence(model, 8)], config)  # Warm up.
    print("| method | T | rows (fwd+bwd + fwd) | seconds | floor | ratio | completeness delta | notes |")
    print("|---|---|---|---|---|---|---|---|")
    cases = []
    for T in tokens:
        text = sentence(model, T)
        floor = Floor(model, text)
        by_method = {}
        for method in methods:
            method_config = config
            if method == ADAPTIVE_SIG and tolerance is not None:
                method_config = {**config, interpreters.TOLERANCE_KEY: tolerance}
            case = time_case(model, method, [text], [floor], method_config, repeats, repeat_below) | {
                "tokens": T,
                "steps": steps,
            }
            case["rows_per_pass"] = model.rows_per_pass(T, True)  # Ours, as the model sized them.
            by_method[method] = case
            cases.append(case)
        if SIG in by_method and ADAPTIVE_SIG in by_method:
            run, fixed = by_method[ADAPTIVE_SIG], by_method[SIG]
            fixed |= {
                "adaptive_rows": run["rows"] + run["forward_rows"],
                "adaptive_pass_fraction": (run["rows"] + run["forward_rows"]) / (fixed["rows"] + fixed["forward_rows"]),
                "adaptive_completeness_delta": run["completeness_delta"],
            }
        if EXACT_SIG in by_method:
            exact = by_method[EXACT_SIG]
            sig_rows = T * (steps + 1) + 1  # Fixed SIG's rows, all with gradients, at its floor.
            exact["ratio_to_sig_floor"] = exact["seconds"] / floor.seconds(sig_rows, True)
        for method in methods:
            print_row(by_method[method])
    if ig_batch:
        rng = np.random.default_rng(0)
        texts = [sentence(model, int(t)) for t in rng.integers(8, 41, ig_batch)]
        case = explain(model, IG, texts, config) | {
            "method": IG_BATCH,
            "tokens": "8-40",
            "steps": steps,
            "sentences": ig_batch,
        }
        case["floor_seconds"] = batch_floor(model, texts, case)
        case["ratio"] = case["seconds"] / case["floor_seconds"]
        cases.append(case)
        print_row(case)
    return cases


def parse_layers(value: str, num_layers: int) -> list[int]:
    """`--layers`: comma-separated layer numbers, `mid` (N // 2) or `last` (N - 1); "" for none."""
    named = {"mid": num_layers // 2, "last": num_layers - 1}
    layers = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        layer = named.get(part, int(part) if part.isdigit() else -1)
        if not 0 <= layer <= num_layers:
            raise ValueError(f"--layers {value!r}: {part!r} is not mid, last or a layer in 0..{num_layers}")
        if layer not in layers:
            layers.append(layer)
    return layers


def layer_cases(model, tokens: list[int], layers: list[int], steps: int, repeats: int) -> list[dict]:
    """IG and exact SIG at each layer, against the floor of their rows through the blocks above it.

    Each round times the method at the word embeddings and at every layer, and each one's floor,
    in turn; the fastest of each counts (the machine is shared), so `fraction` (ours at the layer
    over ours at the embeddings) and `floor_fraction` (the bare blocks above over the bare model)
    compare timings taken side by side.
    """
    num_layers = model.num_layers()
    cases = []
    for T in tokens:
        text = sentence(model, T)
        floors = {None: Floor(model, text)} | {layer: LayerFloor(model, text, layer) for layer in layers}
        for method in LAYER_METHODS:
            configs = {
                layer: {**case_config(steps), "Layer": "embeddings" if layer is None else layer} for layer in floors
            }
            counts = {layer: explain(model, method, [text], config) for layer, config in configs.items()}
            times = {layer: [] for layer in floors}
            floor_times = {layer: [] for layer in floors}
            for _ in range(repeats):
                for layer, config in configs.items():
                    times[layer].append(explain(model, method, [text], config)["seconds"])
                    floor_times[layer].append(floors[layer].of(counts[layer]))
            for layer in layers:
                case = counts[layer] | {"method": method, "tokens": T, "steps": steps, "layer": layer}
                case |= {"seconds": min(times[layer]), "floor_seconds": min(floor_times[layer])}
                case["ratio"] = case["seconds"] / case["floor_seconds"]
                case["fraction"] = case["seconds"] / min(times[None])
                case["floor_fraction"] = case["floor_seconds"] / min(floor_times[None])
                case["expected_fraction"] = 1 - layer / num_layers
                case["floor_minibatch"] = floors[layer].best.get(True)
                cases.append(case)
                print_row(case)
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="sst2", choices=["sst2", *SHAPES])
    parser.add_argument("--tokens", default="16,32,64,128", help="word tokens per sentence, comma-separated")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--methods", default=",".join(DEFAULT_METHODS), help=f"from {', '.join(registry.list_methods())}"
    )
    parser.add_argument("--precision", default="float32", choices=list(models.PRECISIONS))
    parser.add_argument("--torch_compile", action="store_true", help="compiled gradient passes (the floor stays eager)")
    parser.add_argument(
        "--trim_last_layer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the wrapper's first-token last layer (the floor always runs the full model)",
    )
    parser.add_argument("--tolerance", type=float, default=None, help="adaptive SIG tolerance (default: its own)")
    parser.add_argument(
        "--adaptive", action=argparse.BooleanOptionalAction, default=True, help="time adaptive SIG after SIG"
    )
    parser.add_argument(
        "--class_to_explain", default=DEFAULT_CLASS, help="'' explains the predicted class (one more forward pass)"
    )
    parser.add_argument(
        "--layers", default="mid,last", help="layer rows: comma-separated numbers, mid (N // 2), last (N - 1); '' skips"
    )
    parser.add_argument("--ig_batch", type=int, default=0, help="IG over this many sentences in one run (0: skip)")
    parser.add_argument("--memory_tokens", type=int, default=510, help="0 skips the memory check")
    parser.add_argument("--memory_seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=3, help="timings per case when rows * T <= --repeat_below")
    parser.add_argument("--repeat_below", type=int, default=REPEAT_BELOW, help="rows * T up to which cases repeat")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        parser.error(f"--tokens must be comma-separated integers, got {args.tokens!r}")
    methods = [registry.canonical(m) for m in args.methods.split(",")]  # captum:KernelShap still works.
    if bad := sorted(set(methods) - set(registry.METHODS)):
        parser.error(f"unknown --methods {bad}; accepted: {', '.join(registry.METHODS)}")
    model = load_model(args.shape, args.device, args.precision, args.torch_compile, args.trim_last_layer)
    if bad := [t for t in tokens if not 1 <= t <= model.max_length - 2]:
        parser.error(f"--tokens {bad} out of range; accepted: 1..{model.max_length - 2}")
    try:
        layers = parse_layers(args.layers, model.num_layers())
    except ValueError as error:
        parser.error(str(error))
    report = {
        "device": str(model.device) if model.device.type == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "shape": args.shape,
        "precision": args.precision,
        "torch_compile": args.torch_compile,
        "trimmed_last_layer": model.trimmed,
        "class_to_explain": args.class_to_explain,
        "cases": run_cases(
            model,
            tokens,
            methods,
            args.steps,
            args.repeats,
            args.tolerance,
            args.ig_batch,
            adaptive=args.adaptive,
            class_to_explain=args.class_to_explain,
            repeat_below=args.repeat_below,
        ),
    }
    if layers:
        report["layer_cases"] = layer_cases(model, tokens, layers, args.steps, args.repeats)
    if args.memory_tokens:
        report["memory"] = peak_memory(args.shape, args.memory_tokens, args.steps, args.memory_seconds, args.device)
        print(f"SIG memory at T={args.memory_tokens}, n={args.steps}: {report['memory']}")
    if args.json:
        storage.write_atomically(pathlib.Path(args.json), json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
