"""One parser for interpreter config values: numbers in a range, booleans, choices.

Every interpreter (lit_sig's and the captum bridge's) validates its keys with
`Param`, so a bad value gets the same kind of error everywhere: the key, the
accepted values, and what was given.
"""

import dataclasses
from typing import Any

import numpy as np
from lit_nlp.api import types as lit_types


@dataclasses.dataclass(frozen=True)
class Param:
    """One config key of an interpreter (for a bridged method, captum's own keyword where it has one)."""

    key: str
    default: Any
    low: float | None = None  # Numbers: the accepted range.
    high: float | None = None
    choices: tuple[str, ...] = ()  # Strings: the accepted values.

    def parse(self, value: Any) -> Any:
        """Validates `value`; raises ValueError naming the accepted values."""
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"{self.key!r} must be one of {list(self.choices)}, got {value!r}.")
            return value
        if isinstance(self.default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{self.key!r} must be true or false, got {value!r}.")
            return bool(value)
        return self._number(value)

    def _number(self, value: Any) -> int | float:
        integer = isinstance(self.default, int)
        accepted = f"{'an integer' if integer else 'a number'} in [{self.low:g}, {self.high:g}]"
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{self.key!r} must be {accepted}, got {value!r}.")
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{self.key!r} must be {accepted}, got {value!r}.") from None
        if not self.low <= number <= self.high or (integer and not number.is_integer()):  # NaN fails too.
            raise ValueError(f"{self.key!r} must be {accepted}, got {value!r}.")
        return int(number) if integer else number

    def lit_type(self) -> lit_types.LitType:
        if self.choices:
            return lit_types.CategoryLabel(required=False, vocab=list(self.choices), default=self.default)
        if isinstance(self.default, bool):
            return lit_types.Boolean(required=False, default=self.default)
        step = 1 if isinstance(self.default, int) else 0.01
        return lit_types.Scalar(required=False, min_val=self.low, max_val=self.high, default=self.default, step=step)
