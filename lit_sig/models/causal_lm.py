"""A LIT model for Hugging Face causal LMs: generation, and salience of a target's log-probability.

Inputs are those of LIT's prompt-debugging models (`lit_nlp/examples/prompt_debugging`):
`prompt`, an optional `target` and an optional `target_mask`. The explained score is

    F = sum over the target tokens selected by `target_mask` of log p(token | every token before it)

(all of `target` by default; without a target, the model's own greedy response is the
target). Positive salience supports the target. LIT's own `transformers_lms`
differentiates the loss, -F, so its gradients and Gradient x Input have the other sign.

Every token before the last selected target token gets a salience; tokens at or after
it cannot change F under causal attention and stay at 0, as do special tokens and the
chat template's markers, which never move along a path (`PathInput.movable`).

Built from the pieces lit_sig's model families share: `encoding` (the cache),
`forward` (the pass at a precision), `padding` (checked at load: right padding is
exact for the real positions of a causal LM), `device_path` / `rows` (the engine's
rows on the device, out-of-memory halving), `lm_score` (the head at the target
positions only), `prefix_cache` (score-only rows reuse the prompt's keys and values),
`prefix_gradients` (gradient rows start where they first differ from the input),
`lm_generate` (greedy responses) and `embedding` (token embeddings as the embedding module gives them).
"""

import dataclasses
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import transformers
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.lit import protocol
from lit_sig.models import rows
from lit_sig.models.device_path import DevicePath
from lit_sig.models.embedding import Embedder
from lit_sig.models.encoding import length_batches
from lit_sig.models.fields import (  # The LM's field names, re-exported.
    GRAD_DOT_INPUT_FIELD,
    GRAD_NORM_FIELD,
    PROMPT_FIELD,
    RESPONSE_FIELD,
    TARGET_FIELD,
    TARGET_MASK_FIELD,
)
from lit_sig.models.fields import LM_EMBEDDINGS_FIELD as EMBEDDINGS_FIELD
from lit_sig.models.fields import LM_GRADIENTS_FIELD as GRADIENTS_FIELD
from lit_sig.models.fields import LM_TOKENS_FIELD as TOKENS_FIELD
from lit_sig.models.forward import Batch, ForwardRunner, check_precision, default_device
from lit_sig.models.lm_encoding import PromptEncoder, PromptEncoding, model_max_length, prompt_text, selected_targets
from lit_sig.models.lm_generate import greedy_response
from lit_sig.models.lm_score import TargetLogProbs, target_log_probs_view
from lit_sig.models.padding import choose_padding
from lit_sig.models.prefix_cache import PrefixCache
from lit_sig.models.prefix_gradients import PrefixGradients

# Baselines an LM has: `zero` always; a token's embedding where the tokenizer has that token.
BASELINE_TOKENS = {"pad": "pad_token_id", "eos": "eos_token_id", "bos": "bos_token_id", "unk": "unk_token_id"}
DEFAULT_BASELINE = "zero"
_HEAD_ELEMENTS = 1 << 25  # Rows x targets x vocabulary logits per pass (128 MB of float32), at most.


@dataclasses.dataclass(eq=False)
class LMPathInput(rows.SequencePathInput):
    """A sequence's rows: `x` is every token, `full` the tokens up to the last target's prefix.

    Attributes (besides `SequencePathInput`'s):
        score_positions: `[K]` positions whose logits predict the selected targets.
        score_ids: `[K]` the targets' ids.
        encoding: the prompt and target's tokens.
    """

    score_positions: torch.Tensor = None
    score_ids: torch.Tensor = None
    encoding: PromptEncoding = None


class HFCausalLM(DevicePath, lit_model.BatchedModel):
    """LIT wrapper of a Hugging Face causal LM (`AutoModelForCausalLM`: Llama/SmolLM, GPT-2, Qwen2, ...).

    `predict` gives, per input: `response` (greedy, at most `max_new_tokens`), `tokens`
    (prompt, template included, then target), `input_embs` and `token_grad` (the
    gradient of F for every token), LIT's `grad_l2` and `grad_dot_input` (`TokenScores`,
    signed so that positive supports the target) and `grad_target_score` (F). The device
    path (`path_inputs`, `rows_per_pass`, `score_rows`, `forward_rows`) lets lit_sig's
    IG, SIG and exact SIG and the captum bridge explain the same F on the device.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: transformers.PreTrainedTokenizerBase,
        *,
        device: str | torch.device | None = None,
        precision: str = "float32",
        max_new_tokens: int = 32,
        chat_template: bool = False,
        system_prompt: str | None = None,
        max_minibatch_size: int = 8,
        max_minibatch_tokens: int = 4096,
        max_rows_per_pass: int | None = None,
        max_length: int | None = None,
        torch_compile: bool = False,
        head_at_targets: bool = True,
    ):
        """Wraps `model` and `tokenizer`.

        Args:
            model: the causal LM; put in eval mode and moved to `device`.
            tokenizer: its fast tokenizer.
            device: torch device; None picks CUDA when available.
            precision: "float32", or "bfloat16" / "float16" for gradient rows under `torch.autocast`;
                score-only rows (exact SIG, completeness endpoints) and generation stay float32.
            max_new_tokens: longest greedy response.
            chat_template: wrap each prompt as the user's message in the tokenizer's chat template.
            system_prompt: its system message (None: the template's default); needs chat_template.
            max_minibatch_size: sequences (rows) per pass on the CPU.
            max_minibatch_tokens: padded tokens per pass on the CPU (a single longer row still runs).
            max_rows_per_pass: path rows per pass; None: on CUDA as many as fit in half the free
                memory (measured), elsewhere the two limits above.
            max_length: longest prompt + target; defaults to the model's maximum.
            torch_compile: run gradient rows through `torch.compile(dynamic=True)`.
            head_at_targets: compute the LM head at the target positions only, where it gives the
                model's own log-probabilities at load (see `lm_score`); `head_at_targets` then says
                whether it does.

        Raises:
            ValueError: for a bad setting, a tokenizer without the asked chat template, or a model
                that cannot be called with `inputs_embeds`.
        """
        check_precision(precision)
        if max_new_tokens < 1 or max_minibatch_size < 1 or max_minibatch_tokens < 1 or (max_rows_per_pass or 1) < 1:
            raise ValueError(
                "max_new_tokens, max_minibatch_size, max_minibatch_tokens and max_rows_per_pass must be >= 1, got"
                f" {max_new_tokens}, {max_minibatch_size}, {max_minibatch_tokens} and {max_rows_per_pass}."
            )
        device = torch.device(device or default_device())
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.precision = precision
        self.max_new_tokens = max_new_tokens
        model_max = model_max_length(model.config)
        self.max_length = min(max_length or model_max, model_max)
        self._encoder = PromptEncoder(tokenizer, self.max_length, chat_template, system_prompt)
        self._embedding = model.get_input_embeddings()
        padding = choose_padding(self.model)
        self._embedder = Embedder(self._embedding, tokenizer.pad_token_id, padding)
        view = target_log_probs_view(self.model) if head_at_targets else TargetLogProbs(self.model, False)
        self.head_at_targets = view.head_at_targets
        self.prefix_cache = PrefixCache(view, _HEAD_ELEMENTS)  # Exact SIG's rows reuse the prompt's keys/values.
        self._init_device_path(
            device,
            ForwardRunner(self.model, view, precision, torch_compile),
            padding,
            mask_optional=isinstance(self.model, transformers.PreTrainedModel),
            max_minibatch_size=max_minibatch_size,
            max_minibatch_tokens=max_minibatch_tokens,
            max_rows_per_pass=max_rows_per_pass,
            special_tokens=0,
        )
        self.prefix_gradients = PrefixGradients(self.prefix_cache, precision, padding, _HEAD_ELEMENTS, self._row_budget)
        self._responses: dict[tuple[int, ...], str] = {}
        self._responses_lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> "HFCausalLM":
        """Loads a causal LM and its tokenizer by Hugging Face name or local path (no download at run time
        unless the name is not on disk). `torch_dtype` and `gguf_file` go to `from_pretrained`."""
        load = {k: kwargs.pop(k) for k in ("torch_dtype", "gguf_file") if k in kwargs}
        tokenizer_load = {"gguf_file": load["gguf_file"]} if "gguf_file" in load else {}
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path, **tokenizer_load)
        model = transformers.AutoModelForCausalLM.from_pretrained(name_or_path, **load)
        return cls(model, tokenizer, **kwargs)

    # LIT API.

    def max_minibatch_size(self) -> int:
        return self._max_minibatch_size

    @property
    def supports_concurrent_predictions(self) -> bool:
        return True

    def input_spec(self) -> lit_types.Spec:
        return {
            PROMPT_FIELD: lit_types.TextSegment(),
            TARGET_FIELD: lit_types.TextSegment(required=False),
            TARGET_MASK_FIELD: lit_types.TokenScores(align=TOKENS_FIELD, required=False),
            EMBEDDINGS_FIELD: lit_types.TokenEmbeddings(align=TOKENS_FIELD, required=False),
        }

    def output_spec(self) -> lit_types.Spec:
        return {
            RESPONSE_FIELD: lit_types.GeneratedText(parent=TARGET_FIELD),
            TOKENS_FIELD: lit_types.Tokens(parent=PROMPT_FIELD),
            EMBEDDINGS_FIELD: lit_types.TokenEmbeddings(align=TOKENS_FIELD),
            GRADIENTS_FIELD: lit_types.TokenGradients(align=TOKENS_FIELD, grad_for=EMBEDDINGS_FIELD),
            GRAD_NORM_FIELD: lit_types.TokenScores(align=TOKENS_FIELD),
            GRAD_DOT_INPUT_FIELD: lit_types.TokenScores(align=TOKENS_FIELD),
            protocol.TARGET_SCORE_FIELD: lit_types.Scalar(),
        }

    def get_embedding_table(self) -> tuple[list[str], np.ndarray]:
        """Every token and its embedding, as the embedding module gives it (scaled, for Gemma)."""
        ids = list(range(self._embedding.num_embeddings))
        return self.tokenizer.convert_ids_to_tokens(ids), self._embedder.token_embeddings(ids).numpy()

    default_baseline = DEFAULT_BASELINE  # lit_sig.lit.protocol.DEFAULT_BASELINE_ATTR: an LM has no [MASK].

    def baseline_kinds(self) -> list[str]:
        """The baselines this model has: `zero` (the default) and each special token it knows."""
        kinds = [DEFAULT_BASELINE]
        return kinds + [k for k, attr in BASELINE_TOKENS.items() if getattr(self.tokenizer, attr, None) is not None]

    def baseline_embedding(self, field: str, kind: str) -> np.ndarray | None:
        """The `[emb_dim]` embedding of the `kind` token ("pad", "eos", "bos", "unk"); None if the
        tokenizer has none, or for a kind an LM has no token for ("mask")."""
        if field != EMBEDDINGS_FIELD:
            raise ValueError(f"Unknown embeddings field {field!r}; accepted: {[EMBEDDINGS_FIELD]}.")
        attr = BASELINE_TOKENS.get(kind)
        token_id = getattr(self.tokenizer, attr, None) if attr is not None else None
        if token_id is None:
            return None
        return self._embedder.token_embeddings([token_id])[0].numpy()

    def predict_minibatch(self, inputs: list[lit_types.JsonDict]) -> list[lit_types.JsonDict]:
        return list(self.predict(inputs))

    def predict(self, inputs: Iterable[lit_types.JsonDict], **unused_kw) -> list[lit_types.JsonDict]:
        """Responses, tokens, gradients of F and F, in input order (see the class docstring)."""
        inputs = list(inputs)
        outputs = self.gradients(inputs)
        for example, output in zip(inputs, outputs):
            output[RESPONSE_FIELD] = self.generate([example])[0]
        return outputs

    # Generation and tokens.

    def generate(self, inputs: Sequence[lit_types.JsonDict]) -> list[str]:
        """Each prompt's greedy response (at most `max_new_tokens`, special tokens dropped), cached.

        Every prompt is generated alone, so its response never depends on the others in a call.
        """
        responses = []
        for example in inputs:
            encoding = self._encoder.encode((prompt_text(example), ""))
            key = tuple(encoding.input_ids)
            with self._responses_lock:
                cached = self._responses.get(key)
            if cached is None:
                cached = greedy_response(self.model, self.tokenizer, encoding.input_ids, self.max_new_tokens)
                with self._responses_lock:
                    self._responses[key] = cached
            responses.append(cached)
        return responses

    def tokenize(self, inputs: Sequence[lit_types.JsonDict]) -> list[list[str]]:
        """The `tokens` of each input (the prompt, template included, then the target or response)."""
        return [e.tokens for e in self._encodings(inputs)]

    def _encodings(self, inputs: Sequence[lit_types.JsonDict]) -> list[PromptEncoding]:
        """Each input's encoding; a missing target is the model's own response."""
        encodings = []
        for example in inputs:
            target = example.get(TARGET_FIELD)
            if target is None or target == "":
                target = self.generate([example])[0]
                if not target:
                    raise ValueError(
                        f"The model's response to {prompt_text(example)[:60]!r} is empty; give a target to explain."
                    )
            elif not isinstance(target, str):
                raise ValueError(f"Field {TARGET_FIELD!r} must be a string, got {type(target).__name__}.")
            encodings.append(self._encoder.encode((prompt_text(example), target)))
        return encodings

    def score(self, inputs: Sequence[lit_types.JsonDict]) -> list[float]:
        """F of each input, forward only (float32; a missing target is the model's response)."""
        prepared = self.path_inputs(inputs, [None] * len(inputs), [EMBEDDINGS_FIELD])
        pieces = [(p, p.x[None]) for p in prepared]
        with torch.inference_mode():
            return [float(s[0]) for s, _ in self.score_rows(pieces, with_grads=False)]

    # Gradients of F for predict.

    def gradients(self, inputs: Sequence[lit_types.JsonDict]) -> list[lit_types.JsonDict]:
        """`predict`'s outputs without `response`: one gradient row per input, several per pass."""
        prepared = self.path_inputs(inputs, [None] * len(inputs), [EMBEDDINGS_FIELD])
        outputs: list[lit_types.JsonDict | None] = [None] * len(prepared)
        lengths = [len(p.x) for p in prepared]
        for chunk in length_batches(
            lengths, self._max_minibatch_size, self._max_minibatch_tokens, self.padding.mixes_lengths
        ):
            pieces = [(prepared[i], prepared[i].x[None]) for i in chunk]
            for i, (score, grads) in zip(chunk, self._plain_score_rows(pieces, with_grads=True)):  # Every position.
                outputs[i] = _gradient_output(prepared[i], score[0], grads[0])
        return outputs

    # The device path (lit_sig.lit.protocol.DevicePathModel).

    def path_inputs(
        self, inputs: Sequence[lit_types.JsonDict], classes: Sequence[str | None], embeddings_fields: Sequence[str]
    ) -> list[protocol.PathInput]:
        """Embeds every token of each input on the device; `input_score` is left to the engine."""
        if list(embeddings_fields) != [EMBEDDINGS_FIELD]:
            raise ValueError(f"Unknown embeddings fields {list(embeddings_fields)}; accepted: {[EMBEDDINGS_FIELD]}.")
        if any(c not in (None, "") for c in classes):
            raise ValueError(f"A causal LM has no class to explain; got {list(classes)}.")
        inputs = list(inputs)
        return [self._path_input(ex, e) for ex, e in zip(inputs, self._encodings(inputs))]

    def _path_input(self, example: lit_types.JsonDict, encoding: PromptEncoding) -> LMPathInput:
        L = len(encoding)
        targets = selected_targets(example.get(TARGET_MASK_FIELD), encoding)  # [K] positions >= 1
        needed = int(targets[-1])  # Positions 0 .. needed - 1 are read; the last target's own embedding is not.
        ids = torch.tensor(encoding.input_ids, device=self.device)  # [L]
        with torch.no_grad():
            x = self._embedding(ids)  # [L, D]
        given = example.get(EMBEDDINGS_FIELD)
        if given is not None:
            x = self._embedder.given(EMBEDDINGS_FIELD, given, L).to(self.device, x.dtype)
        movable = torch.as_tensor(encoding.movable, device=self.device).clone()  # [L]
        movable[needed:] = False
        positions = torch.as_tensor(targets, device=self.device)
        return LMPathInput(
            tokens=[encoding.tokens],
            x=x,
            target=self.tokenizer.decode(encoding.target_ids),
            input_score=None,
            movable=movable,
            full=x[:needed],
            positions=torch.arange(needed, device=self.device),
            score_positions=positions - 1,
            score_ids=ids[positions],
            encoding=encoding,
        )

    def score_rows(self, pieces: Sequence[rows.Piece], with_grads: bool) -> list[rows.PieceResult]:
        """Per `(input, rows [r, T, D])`: F `[r]` and, `with_grads`, its gradients `[r, T, D]` (0 from the
        last target on). Passes are split where their logits at the targets would exceed `_HEAD_ELEMENTS`;
        score-only rows reuse the prompt's keys and values where `prefix_cache` applies; gradient rows start
        at their first change where `prefix_gradients` applies, their gradients before it then 0 (no path
        method reads them; `predict` runs whole rows)."""
        if with_grads and self.prefix_gradients.applies(pieces, compiled=self.runner.compiled is not None):
            return self.prefix_gradients.score_rows(pieces, lambda rest: self._plain_score_rows(rest, True))
        if self.prefix_cache.applies(pieces, with_grads):
            return self.prefix_cache.score_rows(pieces, lambda rest: self._plain_score_rows(rest, False))
        return self._plain_score_rows(pieces, with_grads)

    def _plain_score_rows(self, pieces: Sequence[rows.Piece], with_grads: bool) -> list[rows.PieceResult]:
        results = []
        for part in self._head_sized(pieces):
            truncated = [(p, r[:, : len(p.full)]) for p, r in part]
            for (p, r), (scores, grads) in zip(part, super().score_rows(truncated, with_grads)):
                if grads is not None:
                    grads = torch.nn.functional.pad(grads, (0, 0, 0, r.shape[1] - grads.shape[1]))
                results.append((scores, grads))
        return results

    def forward_rows(self, pieces: Sequence[rows.Piece]) -> list[torch.Tensor]:
        """Per `(input, rows [r, T, D])`: F `[r]`, differentiable back to `rows` (for captum)."""
        return super().forward_rows([(p, r[:, : len(p.full)]) for p, r in pieces])

    def _head_sized(self, pieces: Sequence[rows.Piece]) -> list[list[rows.Piece]]:
        """The pieces in passes whose rows x targets x vocabulary stay within `_HEAD_ELEMENTS`."""
        vocab = self._embedding.num_embeddings
        targets = max(len(p.score_ids) for p, _ in pieces)
        limit = max(1, _HEAD_ELEMENTS // (targets * vocab))
        parts, rest = [], list(pieces)
        while rows.count_rows(rest) > limit:
            first, rest = rows.split_pieces(rest, limit)
            parts.append(first)
        return parts + [rest]

    def _row_scores(self, pieces: Sequence[rows.Piece], batch: Batch, with_grads: bool) -> torch.Tensor:
        """`[R]` F of every row; score-only rows run in float32."""
        length = batch.embs.shape[1]
        K = max(len(p.score_ids) for p, _ in pieces)
        positions, ids, weights = [], [], []
        for p, r in pieces:
            pad = K - len(p.score_ids)
            offset = self.padding.offset(len(p.full), length)
            positions.append(torch.nn.functional.pad(p.score_positions + offset, (0, pad)).expand(len(r), -1))
            ids.append(torch.nn.functional.pad(p.score_ids, (0, pad)).expand(len(r), -1))
            weight = torch.ones(len(p.score_ids), device=self.device)
            weights.append(torch.nn.functional.pad(weight, (0, pad)).expand(len(r), -1))
        batch.extra = {
            "score_positions": torch.cat(positions),  # [R, K]
            "score_ids": torch.cat(ids),  # [R, K]
            "score_weights": torch.cat(weights),  # [R, K]
        }
        return self.runner(batch, full_precision=not with_grads, compiled=with_grads)


def _gradient_output(p: LMPathInput, score: torch.Tensor, grads: torch.Tensor) -> lit_types.JsonDict:
    """`predict`'s fields for one input from F and its `[L, D]` gradients."""
    x = p.x.detach().float()
    grads = grads.float()
    return {
        TOKENS_FIELD: list(p.encoding.tokens),
        EMBEDDINGS_FIELD: x.cpu().numpy(),
        GRADIENTS_FIELD: grads.cpu().numpy(),
        GRAD_NORM_FIELD: torch.linalg.vector_norm(grads, dim=-1).cpu().numpy(),
        GRAD_DOT_INPUT_FIELD: (grads * x).sum(-1).cpu().numpy(),
        protocol.TARGET_SCORE_FIELD: float(score),
    }
