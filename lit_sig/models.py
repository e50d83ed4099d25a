"""A LIT model for Hugging Face PyTorch sequence classifiers that takes embeddings."""

import functools
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import transformers
from absl import logging
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig import protocol

LABEL_FIELD = "label"
GRAD_WRT_OPTIONS = ("logit", "probability")
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASELINE_TOKENS = {"mask": "mask_token_id", "pad": "pad_token_id"}
_ENCODING_CACHE_SIZE = 4096


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


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
        max_length: int | None = None,
        grad_wrt: str = "logit",
        output_attention: bool = False,
        precision: str = "float32",
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
            max_length: longest token sequence; longer inputs are truncated
                (with a warning and `truncated` set in the output). Defaults to
                the model's maximum.
            grad_wrt: "logit" or "probability" of the target class.
            output_attention: also output every layer's attention heads.
            precision: "float32", or "bfloat16" / "float16" to run the model under
                `torch.autocast` (faster on recent GPUs; check the completeness
                deltas of IG/SIG to see what it costs in accuracy).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; accepted: {list(PRECISIONS)}.")
        if grad_wrt not in GRAD_WRT_OPTIONS:
            raise ValueError(f"grad_wrt={grad_wrt!r}; accepted: {GRAD_WRT_OPTIONS}.")
        if not 1 <= len(text_fields) <= 2:
            raise ValueError(f"text_fields must name 1 or 2 segments, got {text_fields!r}.")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("HFSequenceClassifier needs a fast (Rust) tokenizer.")
        if max_minibatch_size < 1 or max_minibatch_tokens < 1:
            raise ValueError(
                f"max_minibatch_size and max_minibatch_tokens must be >= 1, got"
                f" {max_minibatch_size} and {max_minibatch_tokens}."
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
        self._max_minibatch_size = max_minibatch_size
        self._max_minibatch_tokens = max_minibatch_tokens
        model_max = getattr(model.config, "max_position_embeddings", None) or 512
        self.max_length = min(max_length or model_max, model_max)
        self._embedding = model.get_input_embeddings()
        self._tokenizer_lock = threading.Lock()
        self._encode = functools.lru_cache(maxsize=_ENCODING_CACHE_SIZE)(self._encode_texts)
        num_outputs = len(self.labels) if self.labels is not None else 1
        num_logits = getattr(model.config, "num_labels", num_outputs)
        if num_logits != num_outputs:
            raise ValueError(
                f"The model has {num_logits} outputs but labels={self.labels!r}."
            )

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
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=num_labels
        )
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
            spec[f"input_embs_{f}"] = lit_types.TokenEmbeddings(
                align=f"tokens_{f}", required=False
            )
        return spec

    def output_spec(self) -> lit_types.Spec:
        grad_key = LABEL_FIELD if self.labels is not None else None
        spec: lit_types.Spec = {}
        for f in self.text_fields:
            spec[f"tokens_{f}"] = lit_types.Tokens(parent=f)
            spec[f"input_embs_{f}"] = lit_types.TokenEmbeddings(align=f"tokens_{f}")
            spec[f"token_grad_{f}"] = lit_types.TokenGradients(
                align=f"tokens_{f}", grad_for=f"input_embs_{f}", grad_target_field_key=grad_key
            )
        if self.labels is None:
            spec["score"] = lit_types.RegressionScore(parent=LABEL_FIELD)
        else:
            spec["probas"] = lit_types.MulticlassPreds(
                vocab=self.labels, parent=LABEL_FIELD, null_idx=0 if len(self.labels) == 2 else None
            )
            spec[LABEL_FIELD] = lit_types.CategoryLabel(vocab=self.labels, required=False)
        spec[protocol.TARGET_SCORE_FIELD] = lit_types.Scalar()
        spec["cls_emb"] = lit_types.Embeddings()
        spec["truncated"] = lit_types.Boolean()
        if self.output_attention:
            spec["tokens"] = lit_types.Tokens()
            for layer in range(self.model.config.num_hidden_layers):
                spec[f"layer_{layer + 1}/attention"] = lit_types.AttentionHeads(
                    align_in="tokens", align_out="tokens"
                )
        return spec

    def get_embedding_table(self) -> tuple[list[str], np.ndarray]:
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(self._embedding.num_embeddings)))
        return vocab, self._embedding.weight.detach().float().cpu().numpy()

    def baseline_embedding(self, embeddings_field: str, kind: str) -> np.ndarray | None:
        """The `[emb_dim]` word embedding of the [MASK] or [PAD] token (see protocol)."""
        if embeddings_field not in {f"input_embs_{f}" for f in self.text_fields}:
            raise ValueError(f"Unknown embeddings field {embeddings_field!r}.")
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
        encodings = [self._encode(self._texts(ex)) for ex in inputs]
        order = sorted(range(len(inputs)), key=lambda i: len(encodings[i].input_ids))
        outputs: list[lit_types.JsonDict | None] = [None] * len(inputs)
        for chunk in self._minibatches(order, [len(encodings[i].input_ids) for i in order]):
            results = self._predict_with_backoff(
                [inputs[i] for i in chunk], [encodings[i] for i in chunk]
            )
            for i, result in zip(chunk, results):
                outputs[i] = result
        return outputs

    # Internals.

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
                full_length, self.max_length,
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

    def _target_classes(self, inputs: list[lit_types.JsonDict], logits: torch.Tensor) -> list[int]:
        classes = []
        for example, predicted in zip(inputs, logits.argmax(-1).tolist()):
            label = example.get(LABEL_FIELD)
            if label is None or label == "":
                classes.append(predicted)
            elif label in self.labels:
                classes.append(self.labels.index(label))
            else:
                raise ValueError(f"Unknown class {label!r} to explain; accepted: {self.labels}.")
        return classes

    def _forward_backward(
        self, inputs: list[lit_types.JsonDict], encodings: list[_Encoding]
    ) -> list[lit_types.JsonDict]:
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
        input_ids = input_ids.to(self.device)
        with torch.no_grad():
            embs = self._embedding(input_ids)  # [B, T, D]
        D = embs.shape[-1]
        for b, (example, e) in enumerate(zip(inputs, encodings)):
            for f, positions in zip(self.text_fields, e.segment_positions):
                given = example.get(f"input_embs_{f}")
                if given is None:
                    continue
                given = torch.as_tensor(np.asarray(given, dtype=np.float32))
                if given.shape != (len(positions), D):
                    raise ValueError(
                        f"input_embs_{f} has shape {tuple(given.shape)}; expected"
                        f" {(len(positions), D)} (one row per token of {f!r})."
                    )
                embs[b, torch.as_tensor(positions, device=self.device)] = given.to(self.device, embs.dtype)
        embs.requires_grad_(True)
        model_kwargs = {}
        if any(e.token_type_ids is not None for e in encodings):
            model_kwargs["token_type_ids"] = token_type_ids.to(self.device)
        autocast_dtype = PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = self.model(
                inputs_embeds=embs,
                attention_mask=attention_mask.to(self.device),
                output_hidden_states=True,
                output_attentions=self.output_attention,
                **model_kwargs,
            )
        logits = out.logits.float()  # [B, C]
        if self.labels is None:
            classes = None
            target = logits[:, 0]  # [B]
            probas = None
        else:
            probas = torch.softmax(logits, dim=-1)  # [B, C]
            classes = self._target_classes(inputs, logits)
            index = torch.arange(B, device=logits.device), torch.tensor(classes, device=logits.device)
            target = (logits if self.grad_wrt == "logit" else probas)[index]  # [B]
        (grads,) = torch.autograd.grad(target.sum(), embs)  # [B, T, D]

        mask = attention_mask.to(self.device).unsqueeze(-1).to(out.hidden_states[-1].dtype)  # [B, T, 1]
        pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)  # [B, H]
        embs_np = embs.detach().float().cpu().numpy()
        grads_np = grads.float().cpu().numpy()
        pooled_np = pooled.detach().float().cpu().numpy()
        target_np = target.detach().cpu().numpy()
        probas_np = probas.detach().cpu().numpy() if probas is not None else None
        logits_np = logits.detach().cpu().numpy()
        attentions = (
            [a.detach().float().cpu().numpy() for a in out.attentions] if self.output_attention else None
        )

        results = []
        for b, e in enumerate(encodings):
            result: lit_types.JsonDict = {}
            for f, positions, tokens in zip(self.text_fields, e.segment_positions, e.segment_tokens):
                result[f"tokens_{f}"] = tokens
                result[f"input_embs_{f}"] = embs_np[b, positions]  # [T_seg, D], a copy
                result[f"token_grad_{f}"] = grads_np[b, positions]  # [T_seg, D], a copy
            if probas_np is None:
                result["score"] = float(logits_np[b, 0])
            else:
                result["probas"] = probas_np[b].copy()
                result[LABEL_FIELD] = self.labels[classes[b]]
            result[protocol.TARGET_SCORE_FIELD] = float(target_np[b])
            result["cls_emb"] = pooled_np[b].copy()
            result["truncated"] = e.truncated
            if attentions is not None:
                n = len(e.input_ids)
                result["tokens"] = self.tokenizer.convert_ids_to_tokens(e.input_ids)
                for layer, attention in enumerate(attentions):
                    result[f"layer_{layer + 1}/attention"] = attention[b, :, :n, :n].copy()
            results.append(result)
        return results


def minilm_sst2(device: str | torch.device | None = None, **kwargs) -> HFSequenceClassifier:
    """The embedded SST-2 sentiment model (all-MiniLM-L6-v2, fine-tuned), labels ["0", "1"]."""
    from lit_sig import sst2_model  # pylint: disable=import-outside-toplevel

    module, tokenizer = sst2_model.load_minilm_sst2(device)
    return HFSequenceClassifier(module, tokenizer, labels=["0", "1"], device=device, **kwargs)
