"""The embedded SST-2 model: LoRA merging, the packaged weights, and its accuracy."""

import numpy as np
import pytest
import torch

from lit_sig.models import datasets, sst2_model
from tests.helpers import SST2_DIR, tiny_bert


def test_saved_lora_state_merges_into_a_plain_model(tmp_path, tokenizer):
    trained = tiny_bert()
    plain = tiny_bert()  # Same seed: same frozen weights.
    sst2_model.add_lora(trained, rank=4, alpha=sst2_model.LORA_ALPHA)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))  # As if trained.
    state = sst2_model.trained_state(trained)
    assert any(k.endswith("lora_b") for k in state) and "classifier.weight" in state
    assert not any("word_embeddings" in k for k in state)  # The encoder stays frozen.
    sst2_model.apply_state(plain, state)
    inputs = tokenizer(["a fine film", "dull and long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = trained.eval()(**inputs).logits
        merged = plain.eval()(**inputs).logits
    torch.testing.assert_close(merged, expected, atol=5e-3, rtol=5e-3)  # float16 storage


def test_unexpected_parameter_is_rejected():
    with pytest.raises(ValueError, match="unexpected parameter"):
        sst2_model.apply_state(tiny_bert(), {"bert.nonexistent.weight": torch.zeros(2)})


def test_packaged_weights_are_small():
    assert sst2_model.WEIGHTS_PATH.stat().st_size <= 2 * 1024 * 1024


def test_embedded_model_reads_builtin_sentences(sst2):
    examples = [{"sentence": s} for s, _ in datasets.BUILTIN_SENTENCES]
    predicted = [o["label"] for o in sst2.predict(examples)]
    accuracy = np.mean([p == label for p, (_, label) in zip(predicted, datasets.BUILTIN_SENTENCES)])
    assert accuracy >= 0.85, accuracy


@pytest.mark.skipif(not (SST2_DIR / "dev.tsv").exists(), reason="SST-2 dev set not found")
def test_embedded_model_accuracy_on_sst2_dev(sst2):
    examples = datasets.read_glue_tsv(SST2_DIR / "dev.tsv", max_examples=300)
    predicted = [o["label"] for o in sst2.predict([{"sentence": e["sentence"]} for e in examples])]
    accuracy = np.mean([p == e["label"] for p, e in zip(predicted, examples)])
    assert accuracy >= 0.86, accuracy
