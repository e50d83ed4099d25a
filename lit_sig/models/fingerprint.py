"""What a model's score of an example depends on, as bytes (`lit_sig.core.checkpoint` keys rows by it).

`weights_digest` hashes a model's class, weights and buffers (a checkpoint scope reads it once);
`value_bytes` turns every field of an example's key that is an input of F (tensors, arrays,
numbers, strings, nested dataclasses) into bytes, leaving out `input_score` (a result, not an input).
"""

import dataclasses
import hashlib
from typing import Any

import numpy as np
import torch

from lit_sig.core.checkpoint import tensor_bytes

_RESULT_FIELDS = frozenset({"input_score"})


def weights_digest(model: torch.nn.Module) -> bytes:
    """A digest of the module's class, parameters and buffers (names, dtypes, shapes, values)."""
    digest = hashlib.blake2b(type(model).__qualname__.encode(), digest_size=20)
    for name, t in sorted(model.state_dict(keep_vars=False).items()):
        digest.update(name.encode())
        digest.update(tensor_bytes(t))
    return digest.digest()


def value_bytes(value: Any) -> bytes:
    """Bytes of an example key's field: tensors and arrays by content, dataclasses field by field."""
    if isinstance(value, torch.Tensor | np.ndarray):
        return tensor_bytes(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f.name for f in dataclasses.fields(value) if f.name not in _RESULT_FIELDS]
        return type(value).__qualname__.encode() + b"".join(
            name.encode() + b"=" + value_bytes(getattr(value, name)) for name in fields
        )
    if isinstance(value, list | tuple):
        return b"[" + b",".join(value_bytes(v) for v in value) + b"]"
    assert value is None or isinstance(value, bool | int | float | str), f"cannot fingerprint {type(value)}"
    return repr(value).encode()
