"""Helpers shared by test modules: tiny models (classifiers and causal LMs), references by direct
Hugging Face / captum calls, and the demo server's HTTP client. Fixtures live in conftest.py; test
modules import from here only."""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import captum.attr
import numpy as np
import pytest
import torch
import transformers
from lit_nlp.api import model as lit_model

from benchmarks import tiny_models
from lit_sig import models
from lit_sig.lit import interpreters, protocol, registry

REPO = pathlib.Path(__file__).resolve().parents[1]
SST2_DIR = pathlib.Path(os.environ.get("LIT_SIG_SST2_DIR", REPO.parent / "shared" / "data" / "sst2"))

SENTENCE = "a charming and often affecting journey"
PAIR = {"sentence1": "a man plays a guitar", "sentence2": "nobody is playing music"}
RAW = {interpreters.NORMALIZATION_KEY: False}


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


# A zoo of tiny random configs with the MiniLM vocabulary (tests/test_architectures.py, tests/test_layers.py).
COMMON = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    num_labels=2,
    pad_token_id=0,
    bos_token_id=101,  # MiniLM's [CLS] and [SEP]: the configs' defaults lie outside its vocabulary.
    eos_token_id=102,
    initializer_range=0.2,
)
ENCODERS = {
    "bert": (transformers.BertConfig, {}),
    "distilbert": (transformers.DistilBertConfig, dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
    "roberta": (transformers.RobertaConfig, dict(pad_token_id=1, max_position_embeddings=80)),
    "xlm-roberta": (transformers.XLMRobertaConfig, dict(pad_token_id=1, max_position_embeddings=80)),
    "electra": (transformers.ElectraConfig, dict(embedding_size=16)),
    "albert": (transformers.AlbertConfig, dict(embedding_size=16)),
    "deberta-v2": (transformers.DebertaV2Config, {}),
    "mpnet": (transformers.MPNetConfig, {}),
    "modernbert": (
        transformers.ModernBertConfig,
        dict(global_attn_every_n_layers=2, local_attention=8, cls_token_id=101, sep_token_id=102),
    ),
}
DECODERS = {
    "gpt2": (transformers.GPT2Config, dict(n_embd=32, n_layer=2, n_head=2, n_positions=64)),
    "llama": (transformers.LlamaConfig, dict(num_key_value_heads=1)),
    "qwen2": (transformers.Qwen2Config, dict(num_key_value_heads=1)),
    "mistral": (transformers.MistralConfig, dict(num_key_value_heads=1)),
    "gemma": (transformers.GemmaConfig, dict(num_key_value_heads=1, head_dim=16)),
    "phi3": (transformers.Phi3Config, dict(num_key_value_heads=1)),
}
ARCHITECTURES = ENCODERS | DECODERS


def build(name: str) -> transformers.PreTrainedModel:
    config_class, extra = ARCHITECTURES[name]
    torch.manual_seed(0)
    config = config_class(**{**COMMON, **extra})
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()


def untrimmed(model: models.HFSequenceClassifier) -> models.HFSequenceClassifier:
    """The same model and settings, every pass through the full model."""
    return models.HFSequenceClassifier(
        model.model, model.tokenizer, labels=model.labels, text_fields=model.text_fields, trim_last_layer=False
    )


# Passes composed differently (other batch mates, padding, rows per pass, another pass for F(x)) sum
# float32 in another order: their results differ in the last bits, by amounts that depend on the CPU's
# kernels. A test demands only what float32 guarantees, relative to the result's scale (2^-23 per
# operation, grown through a few layers and a sum over rows): 1e-5 of the largest |value|.
FLOAT32_COMPOSED = 1e-5


def assert_close_in_float32(ours, theirs, scale: float | None = None) -> None:
    """`ours` equals `theirs` up to the float32 rounding of differently composed passes."""
    theirs = np.asarray(theirs, dtype=np.float64)
    scale = float(np.abs(theirs).max()) if scale is None else scale
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), theirs, rtol=0, atol=FLOAT32_COMPOSED * scale)


def salience(result: dict, field: str = "token_grad_sentence") -> np.ndarray:
    return np.asarray(result[field].salience, dtype=np.float64)


def run(interpreter, model, examples, **config):
    return interpreter.run(examples, model, None, config={**RAW, **config})


def salience_fields(model: models.HFSequenceClassifier) -> list[str]:
    return [models.gradients_field(f) for f in model.text_fields]


class PredictOnly(lit_model.Model):
    """A plain LIT model over the wrapper: its specs, `predict` and baselines, no device path."""

    def __init__(self, model: models.HFSequenceClassifier, with_score: bool = True, with_baselines: bool = True):
        self._model, self._with_score = model, with_score
        if with_baselines:
            self.baseline_embedding = model.baseline_embedding

    def input_spec(self):
        return self._model.input_spec()

    def output_spec(self):
        spec = dict(self._model.output_spec())
        if not self._with_score:
            del spec[protocol.TARGET_SCORE_FIELD]
        return spec

    def predict(self, inputs, **kw):
        outputs = list(self._model.predict(inputs, **kw))
        if not self._with_score:
            for o in outputs:
                del o[protocol.TARGET_SCORE_FIELD]
        return outputs


class PassRecorder:
    """A `RowScorer` that passes through to `scorer`, recording each pass: (examples, rows, with_grads)."""

    def __init__(self, scorer, rows_per_pass: int):
        self.scorer, self.rows, self.passes = scorer, rows_per_pass, []
        self.device = scorer.device

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        return self.rows

    def score_rows(self, pieces, with_grads):
        self.passes.append((len(pieces), sum(len(rows) for _, rows in pieces), with_grads))
        return self.scorer.score_rows(pieces, with_grads)


class FunctionScorer:
    """A `RowScorer` over a function of rows `[R, T, D] -> scores [R]`; autograd gives the gradients.

    Each row is scored on its own terms (the function must not mix rows), so results cannot
    depend on which rows share a pass.
    """

    device = torch.device("cpu")

    def __init__(self, score: Callable[[torch.Tensor], torch.Tensor]):
        self._score = score

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        return 1 << 20

    def score_rows(self, pieces, with_grads):
        results = []
        for _, rows in pieces:
            rows = rows.detach().requires_grad_(True)
            scores = self._score(rows)  # [r]
            (grads,) = torch.autograd.grad(scores.sum(), rows)
            results.append((scores.detach(), grads if with_grads else None))
        return results


CASES = {
    "sentence": ("tiny_model", {"sentence": SENTENCE, "label": "1"}),
    "pair": ("tiny_pair_model", dict(PAIR, label="neutral")),
    "regression": ("regression_model", {"sentence": SENTENCE}),
}


def occlusion(model: models.HFSequenceClassifier, texts: tuple[str, ...], target: int, baseline: str) -> np.ndarray:
    """F(x) - F(x with word token i at the baseline), by direct Hugging Face calls on token ids."""
    encoding = model.tokenizer(*texts, return_tensors="pt")
    ids = encoding["input_ids"][0]
    words = [i for i, s in enumerate(encoding.sequence_ids(0)) if s is not None]
    table = model.model.get_input_embeddings()

    def score(embs: torch.Tensor) -> float:
        with torch.no_grad():
            logits = model.model(inputs_embeds=embs[None], token_type_ids=encoding.get("token_type_ids")).logits
        return float(logits[0, target])

    with torch.no_grad():
        full = table(ids)  # [L, D]
    at_input = score(full)
    gaps = []
    for position in words:
        moved = full.clone()
        token = getattr(model.tokenizer, f"{baseline}_token_id", None)
        if token is None:  # `zero`, or a token the tokenizer lacks (EOS for BERT): the zero embedding.
            moved[position] = 0.0
        else:
            with torch.no_grad():
                moved[position] = table(torch.tensor(token))  # The token id replaced.
        gaps.append(at_input - score(moved))
    return np.array(gaps)


def direct_gradient(model: models.HFSequenceClassifier, texts: tuple[str, ...], target: int):
    """`(d logit[target] / d word embeddings [T, D], the word embeddings [T, D])` of a direct Hugging Face call."""
    encoding = model.tokenizer(*texts, return_tensors="pt")
    words = [i for i, s in enumerate(encoding.sequence_ids(0)) if s is not None]
    with torch.no_grad():
        full = model.model.get_input_embeddings()(encoding["input_ids"])  # [1, L, D]
    full.requires_grad_(True)
    logits = model.model(inputs_embeds=full, token_type_ids=encoding.get("token_type_ids")).logits
    (grad,) = torch.autograd.grad(logits[0, target], full)
    return grad[0, words].numpy().astype(np.float64), full[0, words].detach().numpy().astype(np.float64)


def captum_ig(model: models.HFSequenceClassifier, sentence: str, target: int, method: str, steps: int):
    """captum's IG over the word-token embeddings, [CLS]/[SEP] fixed, [MASK] baseline."""
    encoding = model.tokenizer(sentence, return_tensors="pt")
    table = model.model.get_input_embeddings()
    with torch.no_grad():
        full = table(encoding["input_ids"])[0]  # [T + 2, D]
    words = full[1:-1]  # [T, D]
    with torch.no_grad():  # The embedding module's output (Gemma scales its table's rows).
        baseline = table(torch.tensor(model.tokenizer.mask_token_id)).expand_as(words)

    def forward(word_embs: torch.Tensor) -> torch.Tensor:  # [N, T, D] -> [N]
        N = word_embs.shape[0]
        embs = torch.cat([full[:1].expand(N, 1, -1), word_embs, full[-1:].expand(N, 1, -1)], dim=1)
        ones = torch.ones(embs.shape[:2], dtype=torch.long)
        return model.model(inputs_embeds=embs, attention_mask=ones, token_type_ids=0 * ones).logits[:, target]

    attributions = captum.attr.IntegratedGradients(forward).attribute(
        words[None], baselines=baseline[None], n_steps=steps, method=method
    )
    return attributions[0].sum(-1).detach().numpy().astype(np.float64)


# The demo server (`python -m demos.glue_demo`) and its HTTP API.

MODEL = "sst2_minilm"
DATASET = "sentences"
LIT_SIG_INTERPRETERS = tuple(registry.display_name(m) for m in ("grad_norm", "grad_dot_input", "ig", "sig"))
IG, SIG = LIT_SIG_INTERPRETERS[2:]
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, route: str, params: dict[str, str] | None = None, body: Any = None) -> tuple[int, str, bytes]:
    """One request as LIT's client sends it: POST of a JSON string, or GET without a body."""
    url = base + route + ("?" + urllib.parse.urlencode(params) if params else "")
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="GET" if data is None else "POST", headers={"Content-Type": "text/plain;charset=UTF-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def call_ok(base: str, route: str, params: dict[str, str] | None = None, body: Any = None) -> Any:
    status, _, content = call(base, route, params, body)
    assert status == 200, content[:2000]
    return json.loads(content)


@contextlib.contextmanager
def running_demo(log_path: pathlib.Path, *args: str, module: str = "demos.glue_demo") -> Iterator[str]:
    """Runs the demo `module` with `args` on a free port; yields its base URL once it answers."""
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port), *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"The demo exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"The demo did not answer in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            try:
                if call(base, "/get_info")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def full_config(info: dict, interpreter: str, **overrides: Any) -> dict:
    """Every config field at its default, as the UI sends it once settings are applied."""
    spec = info["interpreters"][interpreter]["configSpec"]
    return {name: field.get("default") for name, field in spec.items()} | overrides


def interpret(base: str, interpreter: str, inputs: list, config: dict | None = None) -> tuple[int, str, bytes]:
    params = {"model": MODEL, "dataset_name": DATASET, "interpreter": interpreter, "do_predict": "1"}
    return call(base, "/get_interpretations", params, {"inputs": inputs, "config": config})


# Tiny causal LMs and their tokenizers (HFCausalLM's tests).

_CORPUS = [
    "The capital of France is Paris.",
    "The movie was wonderful and the acting was great.",
    "Is this review positive or negative? Answer in one word.",
    "Two plus two is four. Three plus four is seven.",
    "Hello world! How are you today?",
    "The soundtrack was lovely, but the plot made no sense.",
    "Translate to French: good morning. Bonjour.",
    "user assistant system user assistant",
]
CHAT_TEMPLATE = tiny_models.CHATML_TEMPLATE  # SmolLM2's chat template (ChatML), without its system message.


def tiny_lm_tokenizer(
    bos: bool = True, chat: bool = True, vocab_size: int = 400
) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 / SmolLM2 style) trained on `_CORPUS`.

    Args:
        bos: prepend `<|endoftext|>` as BOS to every encoded text (Llama style); else none (GPT-2 style).
        chat: give it SmolLM2's ChatML template, `<|im_end|>` as EOS.
    """
    eos = "<|im_end|>" if chat else "<|endoftext|>"
    return tiny_models.byte_tokenizer(tuple(_CORPUS * 3), vocab_size, eos_token=eos, prepend_bos=bos, chat=chat)


def tiny_llama(
    tokenizer: transformers.PreTrainedTokenizerBase, seed: int = 0, layers: int = 2, max_positions: int = 512
):
    """A random Llama (grouped-query attention, untied head) in float32."""
    return tiny_models.random_llama(
        "tiny",
        seed,
        vocab_size=len(tokenizer),
        num_hidden_layers=layers,
        max_position_embeddings=max_positions,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )


def tiny_gpt2(tokenizer: transformers.PreTrainedTokenizerBase, seed: int = 0, layers: int = 2):
    """A random GPT-2 (learned positions, tied head) in float32."""
    return tiny_models.random_gpt2(
        len(tokenizer), seed, layers, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )


# What each Sequence Salience field of the LM demo is in a notebook: the interpreter and its config, written out
# independently of lit_sig.lit.sequence_salience.
SEQUENCE_SALIENCE_NOTEBOOK = {
    "grad_l2": ("GradientNorm", {"Normalize": False}),
    "grad_dot_input": ("GradientDotInput", {"Normalize": False}),
    "exact_sig": (
        "SequentialIntegratedGradients",
        {"Normalize": False, "Integration method": "exact", "Baseline": "zero"},
    ),
    "ig": ("IntegratedGradients", {"Normalize": False, "Baseline": "zero"}),
    "sig": ("SequentialIntegratedGradients", {"Normalize": False, "Baseline": "zero"}),
}


def added_input(data: dict) -> dict:
    """A datapoint the UI made from another (as Sequence Salience's `makeModifiedInput` does), sent in full."""
    return {"id": "", "data": data | {"_id": ""}, "meta": {"added": True, "source": "salience"}}


# In-process hardened servers (the tiny model on a free loopback port) and raw HTTP.

TINY_PARAMS = {"model": "tiny", "dataset_name": DATASET, "do_predict": "1"}


def new_input(sentence: str, example_id: str = "") -> dict:
    """A datapoint the UI made (not in the data set), sent in full."""
    return {"id": example_id, "data": {"sentence": sentence, "label": "", "_id": example_id}, "meta": {"added": True}}


def sig_body(sentence: str, steps: int) -> dict:
    return {"inputs": [new_input(sentence)], "config": {"Interpolation steps": steps, "Normalize": False}}


@contextlib.contextmanager
def local_server(model, limits=None, app_kw: dict | None = None, **interpreters_by_name) -> Iterator[tuple[str, Any]]:
    """Serves `model` as "tiny" on 4 built-in sentences with lit_sig's SIG and IG (and `interpreters_by_name`)
    on a free loopback port, under `limits` (`server.Limits`); yields the base URL and the app."""
    import lit_sig  # pylint: disable=import-outside-toplevel
    from lit_sig.models import datasets  # pylint: disable=import-outside-toplevel
    from lit_sig.serving import offline_client, server  # pylint: disable=import-outside-toplevel

    limits = limits or server.Limits()
    app = server.HardenedLitApp(
        {"tiny": model},
        {DATASET: datasets.builtin(4)},
        limits=limits,
        client_root=str(offline_client.LIT_CLIENT_ROOT),
        interpreters={SIG: lit_sig.SequentialIntegratedGradients(), IG: lit_sig.IntegratedGradients()}
        | interpreters_by_name,
        **(app_kw or {}),
    )
    with serving(app, limits) as base:
        yield base, app


@contextlib.contextmanager
def serving(app, limits) -> Iterator[str]:
    """Serves a `server.HardenedLitApp` under `limits` on a free loopback port; yields its base URL."""
    from lit_sig.serving import server  # pylint: disable=import-outside-toplevel

    httpd = server.make_server(app, "127.0.0.1", 0, limits)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def connect(base: str, timeout: float = 60) -> socket.socket:
    host, port = urllib.parse.urlsplit(base).netloc.split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Reads until the server closes; returns the status, headers (lower-case names) and body."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def raw_exchange(base: str, request: bytes, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """Sends raw bytes; returns the status, headers (lower-case names) and body of the answer."""
    with connect(base, timeout) as sock:
        sock.sendall(request)
        with contextlib.suppress(OSError):  # The server may have answered and closed already.
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def assert_json_error(status: int, content_type: str, body: bytes, expected_status: int, word: str) -> None:
    """A JSON error of `expected_status` whose message has `word`, with nothing sent back as markup."""
    assert status == expected_status, body[:2000]
    assert content_type.startswith("application/json")
    message = json.loads(body)["error"]
    assert isinstance(message, str) and word.lower() in message.lower(), message
    assert b"Traceback" not in body and b'File "' not in body
    assert b"<" not in body and b">" not in body  # Nothing the client sent comes back as markup.


class StopAfter:
    """A cancellation check that stops the run before its pass number `passes + 1`."""

    def __init__(self, passes: int) -> None:
        self.passes, self.checks = passes, 0

    def __call__(self) -> str | None:
        self.checks += 1
        return "stopped for the test" if self.checks > self.passes else None
