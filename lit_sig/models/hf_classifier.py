"""A LIT model for Hugging Face PyTorch sequence classifiers that takes embeddings."""

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import transformers
from absl import logging
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.lit import protocol
from lit_sig.models import first_token

LABEL_FIELD = "label"
GRAD_WRT_OPTIONS = ("logit", "probability")
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASELINE_TOKENS = {"mask": "mask_token_id", "pad": "pad_token_id"}
_ENCODING_CACHE_SIZE = 4096
POOLED_FIELD = "mean_pooled_emb"  # The last layer's hidden states, averaged over the tokens.
_Piece = tuple[protocol.PathInput, torch.Tensor]  # An input and rows [r, T, D] of its word embeddings.
_Result = tuple[torch.Tensor, torch.Tensor | None]  # Their scores [r] and gradients [r, T, D].


def tokens_field(segment: str) -> str:
    """The output field of a text segment's word pieces (`Tokens`)."""
    return f"tokens_{segment}"


def embeddings_field(segment: str) -> str:
    """The input and output field of a segment's word-token embeddings (`TokenEmbeddings`)."""
    return f"input_embs_{segment}"


def gradients_field(segment: str) -> str:
    """The output field of the gradients of the target score for a segment's tokens (`TokenGradients`)."""
    return f"token_grad_{segment}"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


class _Encoding:
    """One example's token ids, and where each text segment's word tokens sit."""

    def __init__(
        self,
        input_ids: list[int],
        token_type_ids: list[int] | None,
        segment_positions: list[np.ndarray],
        segment_tokens: list[list[str]],
        truncated: bool,
    ):
        self.input_ids = input_ids  # [T_full], specials included
        self.token_type_ids = token_type_ids  # [T_full] or None
        self.segment_positions = segment_positions  # per segment: [T_seg] int
        self.segment_tokens = segment_tokens  # per segment: T_seg word pieces
        self.truncated = truncated


class HFSequenceClassifier(lit_model.BatchedModel):
    """LIT wrapper of a Hugging Face PyTorch sequence classifier.

    The module is called as `model(inputs_embeds=, attention_mask=,
    token_type_ids=)` and must return `.logits`. Per text segment `seg` the model
    outputs `tokens_{seg}` (word pieces, no [CLS]/[SEP]), `input_embs_{seg}`
    (their word embeddings) and `token_grad_{seg}` (gradients of the target
    score with respect to them). Passing `input_embs_{seg}` back in replaces
    those word embeddings; special tokens always keep their own.

    The target score is the logit (default) or the probability of the class in
    the input's `label` field, or of the predicted class when it has none; for
    regression (`labels=None`) it is the single output.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: transformers.PreTrainedTokenizerBase,
        labels: Sequence[str] | None = ("0", "1"),
        *,
        text_fields: Sequence[str] = ("sentence",),
        device: str | torch.device | None = None,
        max_minibatch_size: int = 32,
        max_minibatch_tokens: int = 4096,
        max_rows_per_pass: int | None = None,
        max_length: int | None = None,
        grad_wrt: str = "logit",
        output_attention: bool = False,
        precision: str = "float32",
        torch_compile: bool = False,
        trim_last_layer: bool = True,
    ):
        """Wraps `model` and `tokenizer`.

        Args:
            model: the classifier; put in eval mode and moved to `device`.
            tokenizer: a fast tokenizer (word pieces are found by sequence ids).
            labels: class names in logit order; None for regression.
            text_fields: one segment name, or two for sentence pairs.
            device: torch device; None picks CUDA when available.
            max_minibatch_size: examples per forward/backward pass.
            max_minibatch_tokens: padded tokens per pass (bounds memory on long
                inputs; a single input longer than this still runs alone).
            max_rows_per_pass: IG/SIG path rows per pass on the device path. None:
                on CUDA, as many as fit in half the free memory (measured once
                per length, at most 1024); elsewhere the two limits above.
            max_length: longest token sequence; longer inputs are truncated
                (with a warning and `truncated` set in the output). Defaults to
                the model's maximum.
            grad_wrt: "logit" or "probability" of the target class.
            output_attention: also output every layer's attention heads.
            precision: "float32", or "bfloat16" / "float16" to run the model under
                `torch.autocast` (faster on recent GPUs; check the completeness
                deltas of IG/SIG to see what it costs in accuracy). Applies to
                `predict` and to gradient rows; score-only rows (exact SIG, the
                completeness endpoints, the input's own score) stay float32.
            torch_compile: run the device path's gradient passes (IG and SIG rows)
                through `torch.compile(model, dynamic=True)`: fused kernels, results
                equal to eager up to float rounding. The first pass compiles, which
                takes seconds to minutes; worth it for many explanations (data sets).
            trim_last_layer: passes that need only logits (IG/SIG rows, `classify`) compute
                the last encoder layer for the first token only, the one position a BERT-style
                head reads: same logits and gradients, about 10/12 of a layer less work per
                row. Used only where, at load, it gives the last layer's own first-token output
                and the model's own logits on test batches (see `first_token`); `trimmed` says
                whether it is.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; accepted: {list(PRECISIONS)}.")
        if grad_wrt not in GRAD_WRT_OPTIONS:
            raise ValueError(f"grad_wrt={grad_wrt!r}; accepted: {GRAD_WRT_OPTIONS}.")
        if not 1 <= len(text_fields) <= 2:
            raise ValueError(f"text_fields must name 1 or 2 segments, got {text_fields!r}.")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("HFSequenceClassifier needs a fast (Rust) tokenizer.")
        if max_minibatch_size < 1 or max_minibatch_tokens < 1 or (max_rows_per_pass or 1) < 1:
            raise ValueError(
                f"max_minibatch_size, max_minibatch_tokens and max_rows_per_pass must be >= 1, got"
                f" {max_minibatch_size}, {max_minibatch_tokens} and {max_rows_per_pass}."
            )
        self.device = torch.device(device or default_device())
        self.model = model.to(self.device).eval()
        if output_attention and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")  # SDPA returns no attention weights.
        self.tokenizer = tokenizer
        self.labels = list(labels) if labels is not None else None
        self.text_fields = list(text_fields)
        self.grad_wrt = grad_wrt
        self.output_attention = output_attention
        self.precision = precision
        view = first_token.first_token_view(self.model) if trim_last_layer else None
        self.trimmed = view is not None
        self._logits_model = view if view is not None else self.model  # Logits only: IG/SIG rows, classify.
        self._compiled = torch.compile(self._logits_model, dynamic=True) if torch_compile else None
        self._compiled_lock = threading.Lock()  # Dynamo and Inductor are not thread-safe.
        self._mask_optional = isinstance(self.model, transformers.PreTrainedModel)  # None means all ones.
        self._max_minibatch_size = max_minibatch_size
        self._max_minibatch_tokens = max_minibatch_tokens
        self._max_rows_per_pass = max_rows_per_pass
        self._row_budget = None
        if self.device.type == "cuda" and max_rows_per_pass is None:
            self._row_budget = DeviceRowBudget(lambda: torch.cuda.mem_get_info(self.device)[0])
        model_max = getattr(model.config, "max_position_embeddings", None) or 512
        self.max_length = min(max_length or model_max, model_max)
        self._embedding = model.get_input_embeddings()
        self._tokenizer_lock = threading.Lock()
        self._encode = functools.lru_cache(maxsize=_ENCODING_CACHE_SIZE)(self._encode_texts)
        num_outputs = len(self.labels) if self.labels is not None else 1
        num_logits = getattr(model.config, "num_labels", num_outputs)
        if num_logits != num_outputs:
            raise ValueError(f"The model has {num_logits} outputs but labels={self.labels!r}.")

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, labels: Sequence[str] | None = ("0", "1"), **kwargs
    ) -> "HFSequenceClassifier":
        """Loads a classifier and its tokenizer by Hugging Face name or local path."""
        num_labels = len(labels) if labels is not None else 1
        config = transformers.AutoConfig.from_pretrained(name_or_path)
        has_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or ())
        if has_head and config.num_labels != num_labels:
            raise ValueError(
                f"{name_or_path} has a {config.num_labels}-class head but labels={labels!r} names"
                f" {num_labels}; give {config.num_labels} class names in logit order."
            )
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels)
        return cls(model, tokenizer, labels, **kwargs)

    # LIT API.

    def max_minibatch_size(self) -> int:
        return self._max_minibatch_size

    @property
    def supports_concurrent_predictions(self) -> bool:
        return True

    def input_spec(self) -> lit_types.Spec:
        spec: lit_types.Spec = {f: lit_types.TextSegment() for f in self.text_fields}
        if self.labels is None:
            spec[LABEL_FIELD] = lit_types.Scalar(required=False)
        else:
            spec[LABEL_FIELD] = lit_types.CategoryLabel(vocab=self.labels, required=False)
        for f in self.text_fields:
            spec[embeddings_field(f)] = lit_types.TokenEmbeddings(align=tokens_field(f), required=False)
        return spec

    def output_spec(self) -> lit_types.Spec:
        grad_key = LABEL_FIELD if self.labels is not None else None
        spec: lit_types.Spec = {}
        for f in self.text_fields:
            spec[tokens_field(f)] = lit_types.Tokens(parent=f)
            spec[embeddings_field(f)] = lit_types.TokenEmbeddings(align=tokens_field(f))
            spec[gradients_field(f)] = lit_types.TokenGradients(
                align=tokens_field(f), grad_for=embeddings_field(f), grad_target_field_key=grad_key
            )
        if self.labels is None:
            spec["score"] = lit_types.RegressionScore(parent=LABEL_FIELD)
        else:
            spec["probas"] = lit_types.MulticlassPreds(
                vocab=self.labels, parent=LABEL_FIELD, null_idx=0 if len(self.labels) == 2 else None
            )
            spec[LABEL_FIELD] = lit_types.CategoryLabel(vocab=self.labels, required=False)
        spec[protocol.TARGET_SCORE_FIELD] = lit_types.Scalar()
        spec[POOLED_FIELD] = lit_types.Embeddings()
        spec["truncated"] = lit_types.Boolean()
        if self.output_attention:
            spec["tokens"] = lit_types.Tokens()
            for layer in range(self.model.config.num_hidden_layers):
                spec[f"layer_{layer + 1}/attention"] = lit_types.AttentionHeads(align_in="tokens", align_out="tokens")
        return spec

    def get_embedding_table(self) -> tuple[list[str], np.ndarray]:
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(self._embedding.num_embeddings)))
        return vocab, self._embedding.weight.detach().float().cpu().numpy()

    def baseline_embedding(self, field: str, kind: str) -> np.ndarray | None:
        """The `[emb_dim]` word embedding of the [MASK] or [PAD] token (see protocol)."""
        self._segment_of(field)  # Validates the field.
        if kind not in BASELINE_TOKENS:
            raise ValueError(f"Unknown baseline {kind!r}; accepted: {sorted(BASELINE_TOKENS)}.")
        token_id = getattr(self.tokenizer, BASELINE_TOKENS[kind], None)
        if token_id is None:
            return None
        return self._embedding.weight[token_id].detach().float().cpu().numpy()

    def predict_minibatch(self, inputs: list[lit_types.JsonDict]) -> list[lit_types.JsonDict]:
        return list(self.predict(inputs))

    def predict(self, inputs: Iterable[lit_types.JsonDict], **unused_kw) -> list[lit_types.JsonDict]:
        """Predicts in minibatches of similar length; returns outputs in input order."""
        inputs = list(inputs)
        outputs: list[lit_types.JsonDict | None] = [None] * len(inputs)
        for chunk, encodings in self._length_chunks(inputs):
            for i, result in zip(chunk, self._predict_with_backoff([inputs[i] for i in chunk], encodings)):
                outputs[i] = result
        return outputs

    def classify(self, inputs: Iterable[lit_types.JsonDict]) -> list[lit_types.JsonDict]:
        """Forward-only predictions, for callers that need no gradients.

        Per input: `label` and `probas` (`score` for regression) and `truncated`, as `predict`
        gives them (under autocast at `precision`), without its backward pass, embeddings or
        gradients, or its out-of-memory retries (a forward pass needs less memory than `predict`).
        """
        inputs = list(inputs)
        outputs: list[lit_types.JsonDict | None] = [None] * len(inputs)
        for chunk, encodings in self._length_chunks(inputs):
            batch = self._embed([inputs[i] for i in chunk], encodings)
            with torch.inference_mode():
                logits = self._run(batch).logits.float().cpu()  # [B, C]
            for b, i in enumerate(chunk):
                outputs[i] = {"truncated": encodings[b].truncated} | self._prediction(logits[b])
        return outputs

    def _prediction(self, logits: torch.Tensor) -> lit_types.JsonDict:
        """`{"score"}` from `[1]` regression logits, else `{"label", "probas"}` from `[C]` logits."""
        if self.labels is None:
            return {"score": float(logits[0])}
        return {LABEL_FIELD: self.labels[int(logits.argmax())], "probas": torch.softmax(logits, -1).numpy()}

    # Internals.

    def _length_chunks(self, inputs: list[lit_types.JsonDict]) -> Iterator[tuple[list[int], list[_Encoding]]]:
        """Minibatches of inputs of similar length: `(their indices in inputs, their encodings)`.

        Every input is encoded (and so validated) before the first minibatch is yielded.
        """
        encodings = [self._encode(self._texts(ex)) for ex in inputs]
        order = sorted(range(len(inputs)), key=lambda i: len(encodings[i].input_ids))
        for chunk in self._minibatches(order, [len(encodings[i].input_ids) for i in order]):
            yield chunk, [encodings[i] for i in chunk]

    def _minibatches(self, order: list[int], lengths: list[int]) -> Iterable[list[int]]:
        """Splits `order` (sorted by `lengths`, ascending) into minibatches of at most
        `max_minibatch_size` inputs and `max_minibatch_tokens` padded tokens."""
        start = 0
        while start < len(order):
            end = start + 1
            while (
                end < len(order)
                and end - start < self._max_minibatch_size
                and (end + 1 - start) * lengths[end] <= self._max_minibatch_tokens
            ):
                end += 1
            yield order[start:end]
            start = end

    def _texts(self, example: lit_types.JsonDict) -> tuple[str, ...]:
        texts = []
        for f in self.text_fields:
            if f not in example:
                raise ValueError(f"Input is missing the text field {f!r}; expected fields: {self.text_fields}.")
            text = example[f]
            if not isinstance(text, str):
                raise ValueError(f"Field {f!r} must be a string, got {type(text).__name__}.")
            if not text.strip():
                raise ValueError(f"Field {f!r} is empty; give at least one word.")
            texts.append(text)
        return tuple(texts)

    def _encode_texts(self, texts: tuple[str, ...]) -> _Encoding:
        with self._tokenizer_lock:
            encoding = self.tokenizer(*texts, truncation=False)
            full_length = len(encoding["input_ids"])
            truncated = full_length > self.max_length
            if truncated:
                encoding = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
        sequence_ids = np.array([-1 if s is None else s for s in encoding.sequence_ids(0)])
        input_ids = list(encoding["input_ids"])
        positions = [np.flatnonzero(sequence_ids == s) for s in range(len(texts))]
        tokens = self.tokenizer.convert_ids_to_tokens(input_ids)
        if truncated:
            logging.warning(
                "Input of %d tokens truncated to the model's maximum of %d.",
                full_length,
                self.max_length,
            )
        return _Encoding(
            input_ids=input_ids,
            token_type_ids=list(encoding["token_type_ids"]) if "token_type_ids" in encoding else None,
            segment_positions=positions,
            segment_tokens=[[tokens[p] for p in pos] for pos in positions],
            truncated=truncated,
        )

    def _predict_with_backoff(
        self, inputs: list[lit_types.JsonDict], encodings: list[_Encoding]
    ) -> list[lit_types.JsonDict]:
        """Runs a minibatch; on out-of-memory, retries each half down to one example."""
        try:
            return self._forward_backward(inputs, encodings)
        except Exception as error:  # pylint: disable=broad-except
            if not _is_out_of_memory(error):
                raise
            if len(inputs) == 1:
                raise RuntimeError(
                    f"Out of memory on a single input of {len(encodings[0].input_ids)} tokens"
                    f" on {self.device}; shorten the input or use a larger device."
                ) from error
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(inputs) // 2
            logging.warning("Out of memory on a minibatch of %d; retrying halves.", len(inputs))
            return self._predict_with_backoff(inputs[:half], encodings[:half]) + self._predict_with_backoff(
                inputs[half:], encodings[half:]
            )

    def _class_indices(self, requested: Sequence[str | None], logits: torch.Tensor | None) -> list[int]:
        """Each row's class: the requested label, else the predicted class (`[B, C]` logits; None if all asked)."""
        predictions = [None] * len(requested) if logits is None else logits.argmax(-1).tolist()
        classes = []
        for label, predicted in zip(requested, predictions):
            if label is None or label == "":
                assert predicted is not None, "a class to predict needs logits"
                classes.append(predicted)
            elif label in self.labels:
                classes.append(self.labels.index(label))
            else:
                raise ValueError(f"Unknown class {label!r} to explain; accepted: {self.labels}.")
        return classes

    def _embed(self, inputs: Sequence[lit_types.JsonDict], encodings: Sequence[_Encoding]) -> "_Batch":
        """Pads the inputs' ids, embeds them and puts given `input_embs_{seg}` in place."""
        B, T = len(inputs), max(len(e.input_ids) for e in encodings)
        pad_id = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((B, T), dtype=torch.long)  # [B, T]
        token_type_ids = torch.zeros((B, T), dtype=torch.long)  # [B, T]
        for b, e in enumerate(encodings):
            input_ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
            attention_mask[b, : len(e.input_ids)] = 1
            if e.token_type_ids is not None:
                token_type_ids[b, : len(e.token_type_ids)] = torch.tensor(e.token_type_ids)
        with torch.no_grad():
            embs = self._embedding(input_ids.to(self.device))  # [B, T, D]
        for b, (example, e) in enumerate(zip(inputs, encodings)):
            for f, positions in zip(self.text_fields, e.segment_positions):
                given = example.get(embeddings_field(f))
                if given is not None:
                    embs[b, torch.as_tensor(positions, device=self.device)] = self._given_embeddings(
                        f, given, positions
                    )
        has_types = any(e.token_type_ids is not None for e in encodings)
        return _Batch(embs, attention_mask.to(self.device), token_type_ids.to(self.device) if has_types else None)

    def _given_embeddings(self, field: str, given: Any, positions: np.ndarray) -> torch.Tensor:
        D = self._embedding.embedding_dim
        given = torch.as_tensor(np.asarray(given, dtype=np.float32))
        if given.shape != (len(positions), D):
            raise ValueError(
                f"{embeddings_field(field)} has shape {tuple(given.shape)}; expected"
                f" {(len(positions), D)} (one row per token of {field!r})."
            )
        return given.to(self.device, self._embedding.weight.dtype)

    def _run(self, batch: "_Batch", full_precision: bool = False, compiled: bool = False, **outputs: bool) -> Any:
        """The model's forward pass over `batch`: under autocast at `precision`, unless `full_precision`.

        `compiled` uses the `torch_compile` module when there is one, one thread at a time (the
        server calls from several; compiling is not thread-safe). Without extra `outputs` (hidden
        states, attentions) only the logits are read, so the trimmed view runs when there is one.
        """
        kwargs = {} if batch.token_type_ids is None else {"token_type_ids": batch.token_type_ids}
        autocast_dtype = None if full_precision else PRECISIONS[self.precision]
        logits_only = not any(outputs.values())
        use_compiled = compiled and self._compiled is not None and logits_only  # The compiled view has logits only.
        module = self._compiled if use_compiled else self._logits_model if logits_only else self.model
        with (
            self._compiled_lock if use_compiled else contextlib.nullcontext(),
            torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
        ):
            return module(inputs_embeds=batch.embs, attention_mask=batch.attention_mask, **kwargs, **outputs)

    def _target_scores(self, logits: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """`[B]` explained scores from `[B, C]` float32 logits and `[B]` class indices."""
        if self.labels is None:
            return logits[:, 0]
        chosen = logits if self.grad_wrt == "logit" else torch.softmax(logits, dim=-1)
        return chosen.gather(1, classes[:, None])[:, 0]

    def _forward_backward(
        self, inputs: list[lit_types.JsonDict], encodings: list[_Encoding]
    ) -> list[lit_types.JsonDict]:
        batch = self._embed(inputs, encodings)
        batch.embs.requires_grad_(True)
        out = self._run(batch, output_hidden_states=True, output_attentions=self.output_attention)
        logits = out.logits.float()  # [B, C]
        classes = None
        if self.labels is not None:
            classes = self._class_indices([ex.get(LABEL_FIELD) for ex in inputs], logits)
        class_index = None if classes is None else torch.tensor(classes, device=logits.device)
        target = self._target_scores(logits, class_index)  # [B]
        (grads,) = torch.autograd.grad(target.sum(), batch.embs)  # [B, T, D]
        mask = batch.attention_mask.unsqueeze(-1).to(out.hidden_states[-1].dtype)  # [B, T, 1]
        pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)  # [B, H]
        return self._to_json(encodings, batch.embs, grads, logits, classes, target, pooled, out.attentions)

    def _to_json(
        self,
        encodings: Sequence[_Encoding],
        embs: torch.Tensor,
        grads: torch.Tensor,
        logits: torch.Tensor,
        classes: list[int] | None,
        target: torch.Tensor,
        pooled: torch.Tensor,
        attentions: Sequence[torch.Tensor] | None,
    ) -> list[lit_types.JsonDict]:
        """One LIT output dict per example, holding numpy copies."""
        embs_np = embs.detach().float().cpu().numpy()  # [B, T, D]
        grads_np = grads.float().cpu().numpy()  # [B, T, D]
        pooled_np = pooled.detach().float().cpu().numpy()  # [B, H]
        target_np = target.detach().cpu().numpy()  # [B]
        logits_np = logits.detach().cpu().numpy()  # [B, C]
        probas_np = None if self.labels is None else torch.softmax(logits, -1).detach().cpu().numpy()
        attentions = [a.detach().float().cpu().numpy() for a in attentions] if self.output_attention else None
        results = []
        for b, e in enumerate(encodings):
            result: lit_types.JsonDict = {}
            for f, positions, tokens in zip(self.text_fields, e.segment_positions, e.segment_tokens):
                result[tokens_field(f)] = tokens
                result[embeddings_field(f)] = embs_np[b, positions]  # [T_seg, D], a copy
                result[gradients_field(f)] = grads_np[b, positions]  # [T_seg, D], a copy
            if probas_np is None:
                result["score"] = float(logits_np[b, 0])
            else:
                result["probas"] = probas_np[b].copy()
                result[LABEL_FIELD] = self.labels[classes[b]]
            result[protocol.TARGET_SCORE_FIELD] = float(target_np[b])
            result[POOLED_FIELD] = pooled_np[b].copy()
            result["truncated"] = e.truncated
            if attentions is not None:
                n = len(e.input_ids)
                result["tokens"] = self.tokenizer.convert_ids_to_tokens(e.input_ids)
                for layer, attention in enumerate(attentions):
                    result[f"layer_{layer + 1}/attention"] = attention[b, :, :n, :n].copy()
            results.append(result)
        return results

    # The device path (lit_sig.lit.protocol.DevicePathModel).

    def path_inputs(
        self, inputs: Sequence[lit_types.JsonDict], classes: Sequence[str | None], embeddings_fields: Sequence[str]
    ) -> list[protocol.PathInput]:
        """Embeds `inputs` on the device (see protocol).

        Inputs whose class must be predicted are scored at x on the way (one forward pass
        for their chunk); where every class is known (asked for, in the label field, or a
        regression) nothing runs, and the engine scores x beside its other rows.
        """
        fields = [self._segment_of(name) for name in embeddings_fields]
        inputs = list(inputs)
        requested = [c if c not in (None, "") else ex.get(LABEL_FIELD) for c, ex in zip(classes, inputs)]
        prepared: list[protocol.PathInput | None] = [None] * len(inputs)
        for chunk, encodings in self._length_chunks(inputs):
            batch = self._embed([inputs[i] for i in chunk], encodings)
            targets, scores = self._chunk_targets(batch, [requested[i] for i in chunk])
            for b, i in enumerate(chunk):
                score = None if scores is None else scores[b]
                prepared[i] = self._path_input(encodings[b], fields, batch, b, targets[b], score)
        return prepared

    def _chunk_targets(
        self, batch: "_Batch", requested: list[str | None]
    ) -> tuple[list[int | None], torch.Tensor | None]:
        """Each input's class index (None: regression) and, if a class had to be predicted, `[B]` scores at x."""
        if self.labels is None:
            return [None] * len(requested), None
        if all(label not in (None, "") for label in requested):
            return self._class_indices(requested, None), None
        with torch.inference_mode():
            logits = self._run(batch, full_precision=True).logits.float()  # [B, C]
            targets = self._class_indices(requested, logits)
            scores = self._target_scores(logits, torch.tensor(targets, device=self.device)).clone()  # [B]
        return targets, scores

    def _segment_of(self, name: str) -> int:
        names = [embeddings_field(f) for f in self.text_fields]
        if name not in names:
            raise ValueError(f"Unknown embeddings field {name!r}; accepted: {names}.")
        return names.index(name)

    def _path_input(
        self,
        encoding: _Encoding,
        fields: list[int],
        batch: "_Batch",
        b: int,
        target: int | None,
        score: torch.Tensor | None,
    ) -> "_HFPathInput":
        length = len(encoding.input_ids)
        positions = torch.as_tensor(
            np.concatenate([encoding.segment_positions[s] for s in fields]), dtype=torch.long, device=self.device
        )  # [T]
        full = batch.embs[b, :length].clone()  # [L, D]
        return _HFPathInput(
            tokens=[encoding.segment_tokens[s] for s in fields],
            x=full[positions],
            target=None if target is None else self.labels[target],
            input_score=score,  # 0-d on the device (no host round trip per example), or None: not scored.
            full=full,
            positions=positions,
            token_type_ids=None if batch.token_type_ids is None else batch.token_type_ids[b, :length],
            target_index=target,
        )

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        """Rows of `num_tokens` word tokens per pass: sized to free memory on CUDA."""
        length = num_tokens + 3  # [CLS] and [SEP]s.
        if self._max_rows_per_pass is not None:
            return self._max_rows_per_pass
        if self._row_budget is not None:
            return self._row_budget.rows(length, with_grads)
        return max(1, min(self._max_minibatch_size, self._max_minibatch_tokens // length))

    def score_rows(
        self, pieces: Sequence[tuple[protocol.PathInput, torch.Tensor]], with_grads: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Scores rows of word embeddings in one pass (halves on out-of-memory)."""
        try:
            return self._score_pass(pieces, with_grads)
        except Exception as error:  # pylint: disable=broad-except
            if not _is_out_of_memory(error):
                raise
            total = sum(len(rows) for _, rows in pieces)
            if total == 1:
                raise RuntimeError(f"Out of memory on a single row on {self.device}.") from error
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            length = max(len(p.full) for p, _ in pieces)
            if self._row_budget is not None:
                self._row_budget.shrink(length, with_grads, total)
            logging.warning("Out of memory on a pass of %d rows; retrying halves.", total)
            first, second = _split_pieces(pieces, total // 2)
            return _merge_results(
                pieces, first, self.score_rows(first, with_grads), second, self.score_rows(second, with_grads)
            )

    def _score_pass(
        self, pieces: Sequence[tuple[protocol.PathInput, torch.Tensor]], with_grads: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        length = max(len(p.full) for p, _ in pieces)
        measure = self._row_budget is not None and self._row_budget.needs_measure(length, with_grads)
        if measure:
            torch.cuda.reset_peak_memory_stats(self.device)
            start_bytes = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode(not with_grads):
            batch, classes = self._rows_batch(pieces, length)
            if with_grads:
                batch.embs.requires_grad_(True)
            # Score-only rows (exact SIG, completeness endpoints) run in float32: differences of
            # bfloat16 scores would be mostly rounding, and there are few of them.
            logits = self._run(batch, full_precision=not with_grads, compiled=with_grads).logits.float()  # [R, C]
            scores = self._target_scores(logits, classes)  # [R]
            grads = torch.autograd.grad(scores.sum(), batch.embs)[0] if with_grads else None  # [R, L, D]
        if measure:
            rows = len(batch.embs)
            self._row_budget.observe(
                length, with_grads, rows, torch.cuda.max_memory_allocated(self.device) - start_bytes
            )
        results = []
        for (p, _), part in zip(pieces, _piece_slices(pieces)):
            results.append((scores[part].detach(), None if grads is None else grads[part][:, p.positions]))
        return results

    def forward_rows(self, pieces: Sequence[tuple[protocol.PathInput, torch.Tensor]]) -> list[torch.Tensor]:
        """Per `(input, rows [r, T, D])`: scores `[r]` that autograd can differentiate back to `rows`.

        For libraries that take a forward function (captum); one pass, no out-of-memory retry.
        """
        length = max(len(p.full) for p, _ in pieces)
        batch, classes = self._rows_batch(pieces, length)
        scores = self._target_scores(self._run(batch).logits.float(), classes)  # [R]
        return [scores[part] for part in _piece_slices(pieces)]

    def _rows_batch(
        self, pieces: Sequence[tuple[protocol.PathInput, torch.Tensor]], length: int
    ) -> tuple["_Batch", torch.Tensor | None]:
        """Model inputs for rows of word embeddings padded to `length`, and each row's class `[R]`.

        A Hugging Face model's pass without padding gets no attention mask (None: every position
        attends), which spares the model its own all-ones check, a host synchronization per pass.
        Other modules always get one (the documented call).
        """
        padded = not self._mask_optional or any(len(p.full) < length for p, _ in pieces)
        batch = _Batch(
            torch.cat([_place_rows(p, rows, length) for p, rows in pieces]),  # [R, L, D]
            torch.cat(
                [_padded(torch.ones_like(p.full[:, 0], dtype=torch.long), length, len(rows)) for p, rows in pieces]
            )  # [R, L]
            if padded
            else None,
            None
            if pieces[0][0].token_type_ids is None
            else torch.cat([_padded(p.token_type_ids, length, len(rows)) for p, rows in pieces]),  # [R, L]
        )
        classes = None
        if self.labels is not None:
            classes = torch.cat(
                [torch.full((len(rows),), p.target_index, device=self.device) for p, rows in pieces]
            )  # [R]
        return batch, classes


def _piece_slices(pieces: Sequence[tuple[object, torch.Tensor]]) -> list[slice]:
    """Each piece's rows in the concatenated pass."""
    bounds = np.cumsum([0] + [len(rows) for _, rows in pieces])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclasses.dataclass
class _Batch:
    """Model inputs of a pass, on the device."""

    embs: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor | None  # [B, L]; None: no padding
    token_type_ids: torch.Tensor | None  # [B, L]


@dataclasses.dataclass(eq=False)
class _HFPathInput(protocol.PathInput):
    """A `PathInput` plus what the wrapper needs to put word-embedding rows back in place."""

    full: torch.Tensor = None  # [L, D] every token's embedding, specials included
    positions: torch.Tensor = None  # [T] where the word tokens sit in `full`
    token_type_ids: torch.Tensor | None = None  # [L]
    target_index: int | None = None


def _padded(values: torch.Tensor, length: int, rows: int) -> torch.Tensor:
    """`[L_p]` values, zero-padded to `length` and repeated: `[rows, length]`."""
    return torch.nn.functional.pad(values, (0, length - len(values))).expand(rows, -1)


def _place_rows(p: _HFPathInput, rows: torch.Tensor, length: int) -> torch.Tensor:
    """`[r, length, D]`: the input's full embeddings with `rows` `[r, T, D]` at its word positions."""
    block = p.full.expand(len(rows), -1, -1).clone()  # [r, L_p, D]
    block[:, p.positions] = rows.to(block.dtype)
    return torch.nn.functional.pad(block, (0, 0, 0, length - len(p.full)))


def _split_pieces(pieces: Sequence[_Piece], first_rows: int) -> tuple[list[_Piece], list[_Piece]]:
    """Splits pieces into two lists holding `first_rows` rows and the rest."""
    first, second, taken = [], [], 0
    for p, rows in pieces:
        take = min(len(rows), max(0, first_rows - taken))
        if take:
            first.append((p, rows[:take]))
        if take < len(rows):
            second.append((p, rows[take:]))
        taken += take
    return first, second


def _merge_results(
    pieces: Sequence[_Piece],
    first: Sequence[_Piece],
    first_results: Sequence[_Result],
    second: Sequence[_Piece],
    second_results: Sequence[_Result],
) -> list[_Result]:
    """Joins the results of split pieces back, one per original piece."""
    merged = []
    queue = list(zip(first, first_results)) + list(zip(second, second_results))
    position = 0
    for _, rows in pieces:
        scores, grads, count = [], [], 0
        while count < len(rows):
            (_, part), (s, g) = queue[position]
            scores.append(s)
            grads.append(g)
            count += len(part)
            position += 1
        merged.append((torch.cat(scores), None if grads[0] is None else torch.cat(grads)))
    return merged


class DeviceRowBudget:
    """Rows per pass on a CUDA device: measured once per length and direction, then remembered.

    The first pass at a length (bucketed by 16 tokens) holds `probe_rows`; its
    peak memory gives bytes per row, and later passes hold as many rows as fit
    in `memory_fraction` of the memory free then, at most `max_rows`.
    """

    def __init__(
        self, free_bytes: Callable[[], int], max_rows: int = 1024, probe_rows: int = 64, memory_fraction: float = 0.5
    ) -> None:
        self._free_bytes = free_bytes  # () -> int
        self._max_rows = max_rows
        self._probe_rows = probe_rows
        self._fraction = memory_fraction
        self._rows: dict[tuple[int, bool], int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(length: int, with_grads: bool) -> tuple[int, bool]:
        return (-(-length // 16) * 16, with_grads)

    def rows(self, length: int, with_grads: bool) -> int:
        with self._lock:
            return self._rows.get(self._key(length, with_grads), self._probe_rows)

    def needs_measure(self, length: int, with_grads: bool) -> bool:
        with self._lock:
            return self._key(length, with_grads) not in self._rows

    def observe(self, length: int, with_grads: bool, rows: int, peak_bytes: int) -> None:
        per_row = max(1, peak_bytes) / max(1, rows)
        fit = int(self._fraction * self._free_bytes() / per_row)
        with self._lock:
            self._rows[self._key(length, with_grads)] = max(1, min(self._max_rows, fit))

    def shrink(self, length: int, with_grads: bool, rows: int) -> None:
        with self._lock:
            self._rows[self._key(length, with_grads)] = max(1, rows // 2)


def minilm_sst2(device: str | torch.device | None = None, **kwargs) -> HFSequenceClassifier:
    """The embedded SST-2 sentiment model (all-MiniLM-L6-v2, fine-tuned), labels ["0", "1"]."""
    from lit_sig.models import sst2_model  # pylint: disable=import-outside-toplevel

    module, tokenizer = sst2_model.load_minilm_sst2(device)
    return HFSequenceClassifier(module, tokenizer, labels=list(sst2_model.LABELS), device=device, **kwargs)
