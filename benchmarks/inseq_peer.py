"""inseq's IG (and SIG) on a causal LM, run in inseq's own environment by `benchmarks.lm_speed --inseq_python`.

    /tmp/inseq/bin/python benchmarks/inseq_peer.py REQUEST.json RESULT.json

REQUEST: {"model": checkpoint folder, "prompt": the templated prompt text, "target": the target text,
"method": "integrated_gradients" or "sequential_integrated_gradients", "steps": n, "target_tokens": k
(attribute only the first k target tokens; null: all)}. RESULT: {"seconds", "input_ids", "baseline_ids",
"attributions": [T, K] per target token, summed over the embedding, with inseq's `crossentropy`
(-log p) as the attributed function}. Kept free of lit_sig imports: inseq's environment need not have it.
"""

import importlib.metadata
import json
import sys
import time

import inseq
import torch
import transformers


def main() -> None:
    request = json.loads(open(sys.argv[1], encoding="utf-8").read())
    torch.set_num_threads(1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(request["model"])
    model = transformers.AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32).eval()
    attribution = inseq.load_model(model, request["method"], tokenizer=tokenizer)
    prompt, target = request["prompt"], request["target"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    k = request.get("target_tokens") or len(target_ids)
    generated = prompt + tokenizer.decode(target_ids[:k])
    started = time.perf_counter()
    out = attribution.attribute(
        input_texts=prompt,
        generated_texts=generated,
        n_steps=request["steps"],
        attributed_fn="crossentropy",
        internal_batch_size=request["steps"],
        show_progress=False,
    )
    seconds = time.perf_counter() - started
    sequence = out.sequence_attributions[0]
    attributions = sequence.target_attributions  # [T_total, K, hidden] (or [T_total, K])
    if attributions.dim() == 3:
        attributions = attributions.sum(-1)
    encoding = attribution.encode(generated, return_baseline=True)
    result = {
        "seconds": seconds,
        "input_ids": encoding.input_ids[0].tolist(),
        "baseline_ids": encoding.baseline_ids[0].tolist(),
        "attributions": torch.nan_to_num(attributions.double()).tolist(),
        "inseq": importlib.metadata.version("inseq"),
    }
    open(sys.argv[2], "w", encoding="utf-8").write(json.dumps(result))


if __name__ == "__main__":
    main()
