"""A classifier's explained score: the logit or probability of a class (or the regression output)."""

from collections.abc import Sequence

import torch
from lit_nlp.api import types as lit_types

from lit_sig.models.fields import LABEL_FIELD

GRAD_WRT_OPTIONS = ("logit", "probability")


class ClassScore:
    """F for rows of a classifier: the chosen class's logit or probability; the output for regression.

    Attributes:
        labels: class names in logit order; None for regression.
        grad_wrt: "logit" or "probability".
    """

    def __init__(self, labels: Sequence[str] | None, grad_wrt: str) -> None:
        if grad_wrt not in GRAD_WRT_OPTIONS:
            raise ValueError(f"grad_wrt={grad_wrt!r}; accepted: {GRAD_WRT_OPTIONS}.")
        self.labels = list(labels) if labels is not None else None
        self.grad_wrt = grad_wrt

    def indices(self, requested: Sequence[str | None], logits: torch.Tensor | None) -> list[int]:
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

    def __call__(self, logits: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """`[B]` explained scores from `[B, C]` float32 logits and `[B]` class indices."""
        if self.labels is None:
            return logits[:, 0]
        chosen = logits if self.grad_wrt == "logit" else torch.softmax(logits, dim=-1)
        return chosen.gather(1, classes[:, None])[:, 0]

    def prediction(self, logits: torch.Tensor) -> lit_types.JsonDict:
        """`{"score"}` from `[1]` regression logits, else `{"label", "probas"}` from `[C]` float32 logits."""
        if self.labels is None:
            return {"score": float(logits[0])}
        return {LABEL_FIELD: self.labels[int(logits.argmax())], "probas": torch.softmax(logits, -1).numpy()}
