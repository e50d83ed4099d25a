"""Shared by the benchmarks."""

from lit_sig import models


class CountingModel:
    """Counts the rows (forward + backward passes) a model is asked for, passing all through."""

    def __init__(self, model: models.HFSequenceClassifier):
        self.model, self.rows = model, 0

    def predict(self, inputs, **kw):
        inputs = list(inputs)
        self.rows += len(inputs)
        return self.model.predict(inputs, **kw)

    def __getattr__(self, name):
        return getattr(self.model, name)
