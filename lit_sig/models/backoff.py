"""Out-of-memory back-off: run work, and on an out-of-memory error run its halves."""

from collections.abc import Callable
from typing import TypeVar

import torch
from absl import logging

Work = TypeVar("Work")
Result = TypeVar("Result")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


class Halving:
    """Runs `work` of `size(work)` units; on out-of-memory runs both halves (recursively).

    Args:
        run: does the work in one pass.
        size: its units (examples, rows).
        split: `(work, n) -> (first n units, the rest)`.
        join: `(work, first, its result, rest, its result) -> the result for work`.
        device: where it runs (CUDA's cache is emptied before a retry).
        on_halve: told `(work, size)` before the halves run (a row budget shrinks).
        unit: what a unit is, for the messages ("input", "row").
    """

    def __init__(
        self,
        run: Callable[[Work], Result],
        size: Callable[[Work], int],
        split: Callable[[Work, int], tuple[Work, Work]],
        join: Callable[[Work, Work, Result, Work, Result], Result],
        device: torch.device,
        on_halve: Callable[[Work, int], None] | None = None,
        unit: str = "row",
    ) -> None:
        self._run, self._size, self._split, self._join = run, size, split, join
        self._device, self._on_halve, self._unit = device, on_halve, unit

    def __call__(self, work: Work) -> Result:
        try:
            return self._run(work)
        except Exception as error:  # pylint: disable=broad-except
            if not is_out_of_memory(error):
                raise
            total = self._size(work)
            if total <= 1:
                raise RuntimeError(
                    f"Out of memory on a single {self._unit} on {self._device}; shorten the input or use a"
                    " larger device."
                ) from error
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            if self._on_halve is not None:
                self._on_halve(work, total)
            logging.warning("Out of memory on a pass of %d %ss; retrying halves.", total, self._unit)
            first, rest = self._split(work, total // 2)
            return self._join(work, first, self(first), rest, self(rest))
