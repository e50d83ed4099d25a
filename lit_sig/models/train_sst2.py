"""Retrains the embedded SST-2 model: `python -m lit_sig.models.train_sst2 --data ../shared/data/sst2`.

LoRA (rank 8) on every encoder linear layer plus biases, LayerNorms, pooler and
head; three epochs of SST-2 train, batches of similar length; then prints the dev
accuracy of the float16 weights written to `lit_sig/models/weights/`.
"""

import argparse
import pathlib
import random
import time

import torch
import tqdm
import transformers

from lit_sig import models
from lit_sig.models import datasets, sst2_model

MAX_LENGTH = 66  # SST-2's longest sentence is 55 word pieces with [CLS]/[SEP].


def length_batches(
    examples: list[dict[str, str]], tokenizer: transformers.PreTrainedTokenizerBase, batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Indices in batches of similar length (sorted within shuffled pools), in shuffled order."""
    lengths = [len(tokenizer.tokenize(e["sentence"])) for e in examples]
    order = list(range(len(examples)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def encode(
    tokenizer: transformers.PreTrainedTokenizerBase, examples: list[dict[str, str]], device: str
) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        [e["sentence"] for e in examples], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    tokenizer: transformers.PreTrainedTokenizerBase,
    examples: list[dict[str, str]],
    device: str,
    batch_size: int = 64,
) -> float:
    model.eval()
    correct = 0
    for start in tqdm.trange(0, len(examples), batch_size, desc="dev", unit="batch"):
        batch = examples[start : start + batch_size]
        logits = model(**encode(tokenizer, batch, device)).logits  # [B, 2]
        labels = torch.tensor([int(e["label"]) for e in batch], device=logits.device)
        correct += int((logits.argmax(-1) == labels).sum())
    return correct / len(examples)


def train(args: argparse.Namespace) -> float:
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    data_dir = pathlib.Path(args.data)
    train_set = datasets.read_glue_tsv(data_dir / "train.tsv", args.max_examples)
    dev_set = datasets.read_glue_tsv(data_dir / "dev.tsv")
    model, tokenizer = sst2_model.base_model()
    trainable = sst2_model.add_lora(model)
    model.to(args.device)
    print(f"train {len(train_set)}, dev {len(dev_set)}; trainable parameters {sum(p.numel() for p in trainable):,}")

    batches = [b for _ in range(args.epochs) for b in length_batches(train_set, tokenizer, args.batch_size, rng)]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    warmup = max(1, int(0.06 * len(batches)))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (len(batches) - step) / (len(batches) - warmup)))
    )
    model.train()
    started = time.monotonic()
    progress = tqdm.tqdm(batches, desc="train", unit="batch")
    running = None
    for batch in progress:
        examples = [train_set[i] for i in batch]
        labels = torch.tensor([int(e["label"]) for e in examples], device=args.device)
        loss = torch.nn.functional.cross_entropy(model(**encode(tokenizer, examples, args.device)).logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        progress.set_postfix(loss=f"{running:.3f}")
    print(f"trained in {(time.monotonic() - started) / 60:.1f} min")

    out = pathlib.Path(args.out)
    sst2_model.save(model, out)
    # Evaluate what users get: the float16 weights merged into a plain model.
    packaged, _ = sst2_model.load_minilm_sst2(args.device, out)
    dev_accuracy = accuracy(packaged, tokenizer, dev_set, args.device)
    print(
        f"SST-2 dev accuracy: {dev_accuracy:.4f} ({len(dev_set)} sentences); weights: {out} "
        f"({out.stat().st_size / 1e6:.2f} MB)"
    )
    return dev_accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(datasets.DEFAULT_SST2_DIR), help="folder with train.tsv and dev.tsv")
    parser.add_argument("--out", default=str(sst2_model.WEIGHTS_PATH), help="where to write the weights")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_examples", type=int, default=None, help="use the first N training examples")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    args.device = args.device or models.default_device()
    for name in ("epochs", "batch_size", "max_examples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be a positive integer, got {value}")
    transformers.logging.set_verbosity_error()
    train(args)


if __name__ == "__main__":
    main()
