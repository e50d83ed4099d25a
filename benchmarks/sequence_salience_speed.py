"""What one click in the LM demo's Sequence Salience costs, per method, on SmolLM2 (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.sequence_salience_speed [--prompt 0] [--repeats 2]

For a built-in prompt (chat template on) and its target, it times each `TokenScores` field of
`lit_sig.lit.sequence_salience` alone (fastest of `--repeats`), the default one-call set together,
and the model's own forward and forward+backward of the same sequence (the floors), all in one run,
and prints seconds, and exact SIG's time over that of its rows (x and one per token that moves) as
full forward passes (which compute the LM head at every position; lit_sig's rows need it at the target only).
"""

import argparse
import json
import time

import torch

from lit_sig import models
from lit_sig.lit import sequence_salience
from lit_sig.models import datasets, smollm2


def fastest(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=0, help="Index of the built-in prompt.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fields", default=",".join(sequence_salience.DEFAULT_FIELDS) + ",ig")
    args = parser.parse_args()
    module, tokenizer = smollm2.load()
    lm = models.HFCausalLM(module, tokenizer, device="cpu", chat_template=True)
    example = {k: v for k, v in datasets.builtin_prompts().examples[args.prompt].items() if k != "source"}
    tokens = lm.tokenize([example])[0]
    encoded = lm.path_inputs([example], [None], ["input_embs"])[0]
    x = encoded.x[None].detach()  # [1, T, D]

    def forward(grad: bool) -> None:
        rows = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            logits = module(inputs_embeds=rows).logits
            if grad:
                logits[0, -1].logsumexp(-1).backward()

    results = {
        "prompt": example["prompt"],
        "target": example["target"],
        "tokens": len(tokens),
        "threads": torch.get_num_threads(),
        "forward_row_s": fastest(lambda: forward(False), args.repeats),
        "forward_backward_row_s": fastest(lambda: forward(True), args.repeats),
    }
    fields = args.fields.split(",")
    for field in fields:
        salience = sequence_salience.SequenceSalienceModel(lm, [field])
        results[f"{field}_s"] = fastest(lambda s=salience: s.predict([example]), args.repeats)
    default = sequence_salience.SequenceSalienceModel(lm)
    results["default_set_s"] = fastest(lambda: default.predict([example]), args.repeats)
    moving = int(encoded.movable.sum())  # Exact SIG's rows: x and one per token that moves.
    results["movable_tokens"] = moving
    results["exact_sig_over_its_forward_rows"] = results.get("exact_sig_s", float("nan")) / (
        (moving + 1) * results["forward_row_s"]
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
