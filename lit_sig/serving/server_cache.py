"""The served models' prediction cache, keyed by each input's data rather than the id a client sends."""

from collections.abc import Callable, Mapping
from typing import Any

from lit_nlp.api import model as lit_model
from lit_nlp.lib import caching


class DataKeyedCache(caching.CachingModelWrapper):
    """LIT's prediction cache, keyed by the hash of each input's data, for the served examples only.

    LIT keys its cache by an input's `_id`, which a client may set to anything
    (and which LIT's Ablation Flip keeps on the examples it changes). Here a
    prediction is stored and found only where `_id` is the `input_hash` of the
    data itself and names an example of a served data set, so every cached
    result belongs to its data and the cache is no larger than the data sets.
    """

    def __init__(self, model: lit_model.Model, name: str, is_served_id: Callable[[str], bool], **kw: Any):
        super().__init__(model, name, **kw)
        self._cache_name = name
        self._is_served_id = is_served_id

    def key_fn(self, d: Mapping[str, Any]) -> caching.CacheKey:
        example_id = d.get("_id")
        if not example_id or not self._is_served_id(example_id) or caching.input_hash(d) != example_id:
            return None
        return (self._cache_name, example_id)
