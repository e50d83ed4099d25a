"""A LIT model for Hugging Face PyTorch sequence classifiers that takes embeddings.

The pieces it is built from are shared with lit_sig's other model families:
`encoding` (tokenization and its cache), `forward` (the pass at a precision),
`padding` (how inputs of different lengths share a pass, checked at load),
`device_path` and `rows` (the engine's rows on the device), `backoff`
(out-of-memory halving) and `first_token` (a cheaper view of BERT-style models).
"""

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import transformers
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.lit import protocol
from lit_sig.models import backoff, classifier_specs, first_token, rows
from lit_sig.models.class_score import ClassScore
from lit_sig.models.device_path import DevicePath
from lit_sig.models.embedding import Embedder
from lit_sig.models.encoding import Encoding, TextEncoder, length_batches, texts_of
from lit_sig.models.fields import (
    LABEL_FIELD,
    POOLED_FIELD,
    TRUNCATED_FIELD,
    attention_field,
    embeddings_field,
    gradients_field,
    tokens_field,
)
from lit_sig.models.forward import Batch, ForwardRunner, check_precision, default_device
from lit_sig.models.padding import choose_padding

BASELINE_TOKENS = {kind: f"{kind}_token_id" for kind in ("mask", "pad", "eos", "bos", "unk")}  # Tokenizer names.
_SPECIAL_TOKENS_PER_SEQUENCE = 3  # [CLS] and up to two [SEP]s: for sizing passes by length.
_Chunk = tuple[list[lit_types.JsonDict], list[Encoding]]  # Inputs of one minibatch and their encodings.


class HFSequenceClassifier(DevicePath, lit_model.BatchedModel):
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

        Raises:
            ValueError: for a bad setting, or a model that cannot be called with `inputs_embeds`.
        """
        check_precision(precision)
        if not 1 <= len(text_fields) <= 2:
            raise ValueError(f"text_fields must name 1 or 2 segments, got {text_fields!r}.")
        if max_minibatch_size < 1 or max_minibatch_tokens < 1 or (max_rows_per_pass or 1) < 1:
            raise ValueError(
                f"max_minibatch_size, max_minibatch_tokens and max_rows_per_pass must be >= 1, got"
                f" {max_minibatch_size}, {max_minibatch_tokens} and {max_rows_per_pass}."
            )
        device = torch.device(device or default_device())
        self.model = model.to(device).eval()
        if output_attention and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")  # SDPA returns no attention weights.
        self.tokenizer = tokenizer
        self.score = ClassScore(labels, grad_wrt)
        self.labels = self.score.labels
        self.text_fields = list(text_fields)
        self.grad_wrt = grad_wrt
        self.output_attention = output_attention
        self.precision = precision
        model_max = getattr(model.config, "max_position_embeddings", None) or 512
        self.max_length = min(max_length or model_max, model_max)
        self._encoder = TextEncoder(tokenizer, self.max_length)
        self._embedding = model.get_input_embeddings()
        self._check_num_labels()
        padding = choose_padding(self.model)
        self._embedder = Embedder(self._embedding, tokenizer.pad_token_id, padding)
        view = first_token.first_token_view(self.model) if trim_last_layer else None
        self.trimmed = view is not None
        self._init_device_path(
            device,
            ForwardRunner(self.model, view if view is not None else self.model, precision, torch_compile),
            padding,
            mask_optional=isinstance(self.model, transformers.PreTrainedModel),  # None means all ones.
            max_minibatch_size=max_minibatch_size,
            max_minibatch_tokens=max_minibatch_tokens,
            max_rows_per_pass=max_rows_per_pass,
            special_tokens=_SPECIAL_TOKENS_PER_SEQUENCE,
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
        model = transformers.AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels)
        return cls(model, tokenizer, labels, **kwargs)

    def _check_num_labels(self) -> None:
        num_outputs = len(self.labels) if self.labels is not None else 1
        num_logits = getattr(self.model.config, "num_labels", num_outputs)
        if num_logits != num_outputs:
            raise ValueError(f"The model has {num_logits} outputs but labels={self.labels!r}.")

    # LIT API.

    def max_minibatch_size(self) -> int:
        return self._max_minibatch_size

    @property
    def supports_concurrent_predictions(self) -> bool:
        return True

    def input_spec(self) -> lit_types.Spec:
        return classifier_specs.input_spec(self.text_fields, self.labels)

    def output_spec(self) -> lit_types.Spec:
        layers = self.model.config.num_hidden_layers if self.output_attention else 0
        return classifier_specs.output_spec(self.text_fields, self.labels, attention_layers=layers)

    def get_embedding_table(self) -> tuple[list[str], np.ndarray]:
        """Every token and its word embedding, as the embedding module gives it (scaled, for Gemma)."""
        ids = list(range(self._embedding.num_embeddings))
        return self.tokenizer.convert_ids_to_tokens(ids), self._embedder.token_embeddings(ids).numpy()

    def baseline_embedding(self, field: str, kind: str) -> np.ndarray | None:
        """The `[emb_dim]` embedding of the `kind` token ([MASK], [PAD], EOS, BOS, [UNK]); None if it has none."""
        self._segment_of(field)  # Validates the field.
        if kind not in BASELINE_TOKENS:
            raise ValueError(f"Unknown baseline {kind!r}; accepted: {sorted(BASELINE_TOKENS)}.")
        token_id = getattr(self.tokenizer, BASELINE_TOKENS[kind], None)
        if token_id is None:
            return None
        return self._embedder.token_embeddings([token_id])[0].numpy()

    def predict_minibatch(self, inputs: list[lit_types.JsonDict]) -> list[lit_types.JsonDict]:
        return list(self.predict(inputs))

    def predict(self, inputs: Iterable[lit_types.JsonDict], **unused_kw) -> list[lit_types.JsonDict]:
        """Predicts in minibatches of similar length (halved on out-of-memory); outputs in input order."""
        inputs = list(inputs)
        outputs: list[lit_types.JsonDict | None] = [None] * len(inputs)
        halving = backoff.Halving(
            lambda c: self._forward_backward(*c), _chunk_size, _split_chunk, _join_chunk, self.device, unit="input"
        )
        for chunk, encodings in self._length_chunks(inputs):
            for i, result in zip(chunk, halving(([inputs[i] for i in chunk], encodings))):
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
            batch, _ = self._embed([inputs[i] for i in chunk], encodings)
            with torch.inference_mode():
                logits = self.runner(batch).logits.float().cpu()  # [B, C]
            for b, i in enumerate(chunk):
                outputs[i] = {TRUNCATED_FIELD: encodings[b].truncated} | self.score.prediction(logits[b])
        return outputs

    # Encoding and embedding.

    def _embed(self, inputs: Sequence[lit_types.JsonDict], encodings: Sequence[Encoding]) -> tuple[Batch, list[int]]:
        """The inputs' padded ids embedded, given `input_embs_{seg}` in place; and each input's offset."""
        given = []
        for example, e in zip(inputs, encodings):
            given.append({})
            for s, (f, positions) in enumerate(zip(self.text_fields, e.segment_positions)):
                if example.get(embeddings_field(f)) is not None:
                    given[-1][s] = self._embedder.given(
                        embeddings_field(f), example[embeddings_field(f)], len(positions)
                    )
        return self._embedder.batch(encodings, given)

    def _length_chunks(self, inputs: list[lit_types.JsonDict]) -> Iterator[tuple[list[int], list[Encoding]]]:
        """Minibatches of inputs of similar length: `(their indices in inputs, their encodings)`.

        Every input is encoded (and so validated) before the first minibatch is yielded.
        """
        encodings = [self._encoder.encode(texts_of(ex, self.text_fields)) for ex in inputs]
        lengths = [len(e) for e in encodings]
        mix = self.padding.mixes_lengths
        for chunk in length_batches(lengths, self._max_minibatch_size, self._max_minibatch_tokens, mix):
            yield chunk, [encodings[i] for i in chunk]

    # predict's pass.

    def _forward_backward(
        self, inputs: list[lit_types.JsonDict], encodings: list[Encoding]
    ) -> list[lit_types.JsonDict]:
        batch, offsets = self._embed(inputs, encodings)
        batch.embs.requires_grad_(True)
        out = self.runner(batch, output_hidden_states=True, output_attentions=self.output_attention)
        logits = out.logits.float()  # [B, C]
        classes = None
        if self.labels is not None:
            classes = self.score.indices([ex.get(LABEL_FIELD) for ex in inputs], logits)
        class_index = None if classes is None else torch.tensor(classes, device=logits.device)
        target = self.score(logits, class_index)  # [B]
        (grads,) = torch.autograd.grad(target.sum(), batch.embs)  # [B, L, D]
        mask = batch.attention_mask.unsqueeze(-1).to(out.hidden_states[-1].dtype)  # [B, L, 1]
        pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)  # [B, H]
        arrays = classifier_specs.PredictArrays.of(
            batch.embs, grads, logits, target, pooled, out.attentions, self.output_attention
        )
        return [self._output(e, offset, arrays, b, classes) for b, (e, offset) in enumerate(zip(encodings, offsets))]

    def _output(
        self, e: Encoding, offset: int, arrays: "classifier_specs.PredictArrays", b: int, classes: list[int] | None
    ) -> lit_types.JsonDict:
        """One LIT output dict, holding numpy copies."""
        result: lit_types.JsonDict = {}
        for f, positions, tokens in zip(self.text_fields, e.segment_positions, e.segment_tokens):
            result[tokens_field(f)] = tokens
            result[embeddings_field(f)] = arrays.embs[b, positions + offset]  # [T_seg, D], a copy
            result[gradients_field(f)] = arrays.grads[b, positions + offset]  # [T_seg, D], a copy
        if self.labels is None:
            result["score"] = float(arrays.logits[b, 0])
        else:
            result["probas"] = classifier_specs.softmax(arrays.logits[b])
            result[LABEL_FIELD] = self.labels[classes[b]]
        result[protocol.TARGET_SCORE_FIELD] = float(arrays.target[b])
        result[POOLED_FIELD] = arrays.pooled[b].copy()
        result[TRUNCATED_FIELD] = e.truncated
        if arrays.attentions is not None:
            span = slice(offset, offset + len(e))
            result["tokens"] = self.tokenizer.convert_ids_to_tokens(e.input_ids)
            for layer, attention in enumerate(arrays.attentions):
                result[attention_field(layer + 1)] = attention[b, :, span, span].copy()
        return result

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
            batch, offsets = self._embed([inputs[i] for i in chunk], encodings)
            targets, scores = self._chunk_targets(batch, [requested[i] for i in chunk])
            for b, i in enumerate(chunk):
                score = None if scores is None else scores[b]
                prepared[i] = self._path_input(encodings[b], fields, batch, b, offsets[b], targets[b], score)
        return prepared

    def _chunk_targets(self, batch: Batch, requested: list[str | None]) -> tuple[list[int | None], torch.Tensor | None]:
        """Each input's class index (None: regression) and, if a class had to be predicted, `[B]` scores at x."""
        if self.labels is None:
            return [None] * len(requested), None
        if all(label not in (None, "") for label in requested):
            return self.score.indices(requested, None), None
        with torch.inference_mode():
            logits = self.runner(batch, full_precision=True).logits.float()  # [B, C]
            targets = self.score.indices(requested, logits)
            scores = self.score(logits, torch.tensor(targets, device=self.device)).clone()  # [B]
        return targets, scores

    def _segment_of(self, name: str) -> int:
        names = [embeddings_field(f) for f in self.text_fields]
        if name not in names:
            raise ValueError(f"Unknown embeddings field {name!r}; accepted: {names}.")
        return names.index(name)

    def _path_input(
        self,
        encoding: Encoding,
        fields: list[int],
        batch: Batch,
        b: int,
        offset: int,
        target: int | None,
        score: torch.Tensor | None,
    ) -> "_ClassifierPathInput":
        length = len(encoding)
        positions = torch.as_tensor(
            np.concatenate([encoding.segment_positions[s] for s in fields]), dtype=torch.long, device=self.device
        )  # [T]
        full = batch.embs[b, offset : offset + length].clone()  # [L, D]
        types = batch.token_type_ids
        return _ClassifierPathInput(
            tokens=[encoding.segment_tokens[s] for s in fields],
            x=full[positions],
            target=None if target is None else self.labels[target],
            input_score=score,  # 0-d on the device (no host round trip per example), or None: not scored.
            movable=torch.ones(len(positions), dtype=torch.bool, device=self.device),  # x: the text's tokens only
            full=full,
            positions=positions,
            token_type_ids=None if types is None else types[b, offset : offset + length],
            sequence_tokens=self.tokenizer.convert_ids_to_tokens(encoding.input_ids),
            target_index=target,
        )

    def _score_settings(self) -> str:
        return f"grad_wrt={self.score.grad_wrt}"

    def _row_scores(self, pieces: Sequence[rows.Piece], batch: Batch, with_grads: bool) -> torch.Tensor:
        """`[R]` scores of the rows' classes. Score-only rows (exact SIG, completeness endpoints) run in
        float32: differences of bfloat16 scores would be mostly rounding, and there are few of them."""
        logits = self.runner(batch, full_precision=not with_grads, compiled=with_grads).logits.float()  # [R, C]
        classes = None
        if self.labels is not None:
            classes = torch.cat([torch.full((len(r),), p.target_index, device=self.device) for p, r in pieces])  # [R]
        return self.score(logits, classes)


@dataclasses.dataclass(eq=False)
class _ClassifierPathInput(rows.SequencePathInput):
    """A `SequencePathInput` plus the index of the class its rows are scored for."""

    target_index: int | None = None


def _chunk_size(chunk: _Chunk) -> int:
    return len(chunk[0])


def _split_chunk(chunk: _Chunk, first: int) -> tuple[_Chunk, _Chunk]:
    inputs, encodings = chunk
    return (inputs[:first], encodings[:first]), (inputs[first:], encodings[first:])


def _join_chunk(
    chunk: _Chunk, first: _Chunk, first_out: list[lit_types.JsonDict], rest: _Chunk, rest_out: list[lit_types.JsonDict]
) -> list[lit_types.JsonDict]:
    del chunk, first, rest
    return first_out + rest_out
