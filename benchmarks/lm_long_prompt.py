"""A 2,048-token prompt explained by exact SIG and by IG on a causal LM: peak memory, rows, time.

    OMP_NUM_THREADS=1 python -m benchmarks.lm_long_prompt --model PATH --method ig --steps 8
    OMP_NUM_THREADS=1 python -m benchmarks.lm_long_prompt --model random:smollm2 --method exact_sig --max_rows 16
    python -m benchmarks.lm_long_prompt --model smollm2 --method exact_sig --checkpoint long_prompt.rows

Run one method per process: the peak resident memory above the loaded model (`ru_maxrss` after
the run minus the resident memory after loading) is the method's own. A progress bar counts each
phase's rows (`lit_sig.core.progress`). `--max_rows` stops after that many rows (through
`lit_sig.core.cancellation`, as the server's deadline does) and reports the rows per second
and the projected time of the whole run: on one CPU thread exact SIG of 2,048 tokens is
2,049 forward passes of 2,048 tokens, hours of work, while its memory is that of one pass.

`--checkpoint PATH` keeps exact SIG's rows in PATH as their passes end (`lit_sig.core.checkpoint`):
the same command resumes a run that was stopped (SIGTERM / Ctrl-C stop it after the pass in flight and
write the report), and `PATH.runs.json` logs every run's seconds, rows and memory.

Exact SIG reuses the prompt's keys/values by default (`lit_sig.models.prefix_cache`: the row of token i
runs positions i..L-1 only); `--no_reuse` runs whole rows. With reuse the first rows are the longest,
so the projection scales by positions: the seconds per position run so far times the positions of all
planned rows (the cached pass, and per pass its rows times L minus its first changed position
min(i, first target position); one row per pass on the CPU at this length).
"""

import argparse
import contextlib
import json
import pathlib
import resource
import signal
import time

import numpy as np
import torch

import lit_sig
from benchmarks import lm_speed
from lit_sig import storage
from lit_sig.core import cancellation, checkpoint, progress
from lit_sig.lit import interpreters
from lit_sig.models import causal_lm

PARAGRAPH = (
    "The committee met on Tuesday to review the budget for the coming year. Several members argued that"
    " the library needed new computers, while others wanted to repair the roof first. After a long"
    " discussion, they agreed to ask the town for more money and to decide again next month. "
)
QUESTION = " Summarize the decision of the committee in one sentence."


def rss_mb() -> float:
    """The resident memory now, from /proc (MB)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def long_prompt(lm, tokens: int) -> dict:
    """A prompt of at most `tokens` tokens with its target (chat template included), as long as whole words allow."""
    words = []
    while len(_tokens(lm, words)) < tokens:
        words += PARAGRAPH.split(" ")
    low, high = 0, len(words)  # The most words whose prompt fits: a bisection over prefixes.
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(_tokens(lm, words[:middle])) <= tokens else (low, middle - 1)
    return _example(words[:low])


def _example(words: list[str]) -> dict:
    return {"prompt": " ".join(words).strip() + QUESTION, "target": " The committee agreed"}


def _tokens(lm, words: list[str]) -> list[str]:
    return lm.tokenize([_example(words)])[0]


class RowCounter(progress.TqdmReport):
    """A progress bar that also counts rows, to stop at `max_rows`."""

    def __init__(self, max_rows: int | None):
        super().__init__(mininterval=5)
        self.rows, self.total, self.max_rows = 0, 0, max_rows
        self.signalled: int | None = None

    def begin(self, phase: str, rows: int) -> None:
        super().begin(phase, rows)
        self.total += rows

    def advance(self, rows: int) -> None:
        super().advance(rows)
        self.rows += rows

    def stop(self) -> str | None:
        if self.signalled:
            return f"stopped by signal {self.signalled} after {self.rows} rows"
        if self.max_rows is not None and self.rows >= self.max_rows:
            return f"stopped after {self.rows} rows (--max_rows)"
        return None

    def on_signal(self, number: int, frame) -> None:
        """SIGTERM / SIGINT: stop after the pass in flight, so the report (and the checkpoint's log) is written."""
        del frame
        self.signalled = number


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:smollm2", help="As benchmarks.lm_speed takes it.")
    parser.add_argument("--method", default="exact_sig", choices=["ig", "exact_sig"])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max_rows", type=int, default=None, help="Stop after this many rows; project the rest.")
    parser.add_argument("--no_reuse", action="store_true", help="Exact SIG without the prefix's keys/values reused.")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="Exact SIG: keep its rows in this file (lit_sig.core.checkpoint); run again with it to resume.",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.checkpoint and args.method != "exact_sig":
        parser.error("--checkpoint keeps score-only rows: exact SIG's (IG's gradient rows are not kept)")
    lm = lm_speed.load(args.model, args.device, "float32")
    lm.prefix_cache.enabled = not args.no_reuse
    example = long_prompt(lm, args.tokens)
    length = len(lm.tokenize([example])[0])
    planned_positions = _planned_positions(lm, example)
    loaded_mb = rss_mb()
    interpreter = lit_sig.IntegratedGradients() if args.method == "ig" else lit_sig.SequentialIntegratedGradients()
    config = {interpreters.NORMALIZATION_KEY: False, interpreters.INTERPOLATION_KEY: args.steps}
    if args.method == "exact_sig":
        config[interpreters.METHOD_KEY] = interpreters.EXACT_METHOD
    counter = RowCounter(args.max_rows)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, counter.on_signal)
    started = time.perf_counter()
    finished, delta = True, None
    kept = checkpoint.scope(args.checkpoint) if args.checkpoint else contextlib.nullcontext()
    with progress.scope(counter), cancellation.scope(counter.stop), kept as store:
        try:
            (result,) = interpreter.run([example], lm, None, config=config)
            delta = result[interpreters.COMPLETENESS_KEY]
        except cancellation.Cancelled:
            finished = False
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reused = args.method == "exact_sig" and lm.prefix_cache.rows_reused > 0
    projected = seconds / max(1, counter.rows) * counter.total
    if reused:
        projected = seconds / max(1, lm.prefix_cache.positions) * planned_positions
    report = {
        "model": args.model,
        "method": args.method,
        "steps": args.steps if args.method == "ig" else None,
        "tokens": length,
        "threads": torch.get_num_threads(),
        "rows_per_pass": lm.rows_per_pass(length, args.method == "ig"),
        "rows_done": counter.rows,
        "rows_planned": counter.total,  # Of the phases begun (exact SIG: one phase of T + 1 rows).
        "finished": finished,
        "seconds": seconds,
        "seconds_per_row": seconds / max(1, counter.rows),
        "prefix_reused": reused,
        "prefix_rows_reused": lm.prefix_cache.rows_reused,
        "prefix_rows_plain": lm.prefix_cache.rows_plain,
        "positions_done": lm.prefix_cache.positions if reused else counter.rows * length,
        "positions_planned": planned_positions if reused else counter.total * length,
        "projected_seconds": projected,
        "loaded_model_rss_mb": loaded_mb,
        "peak_rss_above_model_mb": peak_mb - loaded_mb,
        "completeness_delta": delta,
    }
    if args.checkpoint:
        report |= _runs_so_far(pathlib.Path(args.checkpoint), report, store, planned_positions)
    if finished:
        tokens = result[causal_lm.GRADIENTS_FIELD].tokens
        salience = np.asarray(result[causal_lm.GRADIENTS_FIELD].salience, dtype=np.float64)
        top = np.argsort(-np.abs(salience), kind="stable")[:10]
        report["top_tokens"] = [[int(i), tokens[i], float(salience[i])] for i in top]
        report["salience_sum"] = float(salience.sum())
    print(json.dumps(report), flush=True)
    if args.json:
        storage.write_atomically(pathlib.Path(args.json), json.dumps(report, indent=1))
    return report


def _runs_so_far(path: pathlib.Path, report: dict, store, planned_positions: int) -> dict:
    """This run appended to the checkpoint's log of runs (`PATH.runs.json`), and the totals over them."""
    log = path.with_name(path.name + ".runs.json")
    runs = json.loads(log.read_text()) if log.exists() else []
    keys = ("seconds", "threads", "positions_done", "peak_rss_above_model_mb", "finished")
    runs.append({k: report[k] for k in keys} | {"rows_read": store.rows_read, "rows_written": store.rows_written})
    storage.write_atomically(log, json.dumps(runs, indent=1))
    seconds, positions = sum(r["seconds"] for r in runs), sum(r["positions_done"] for r in runs)
    remaining = max(0, planned_positions - positions) * report["seconds"] / max(1, report["positions_done"])
    return {
        "checkpoint_runs": len(runs),
        "rows_from_checkpoint": store.rows_read,
        "rows_scored_this_run": store.rows_written,
        "seconds_all_runs": seconds,
        "positions_all_runs": positions,
        "projected_seconds_left": 0.0 if report["finished"] else remaining,
    }


def _planned_positions(lm, example: dict) -> int:
    """Positions exact SIG's rows run with reuse: the cached pass, then per pass of rows (in order) the rows
    times L minus the pass's first changed position (a pass of at most 8 rows is one block)."""
    (p,) = lm.path_inputs([example], [None], [causal_lm.EMBEDDINGS_FIELD])
    length, first_score = len(p.full), int(p.score_positions[0])
    starts = p.movable[:length].nonzero()[:, 0].clamp(max=first_score).tolist()  # Each row's first change.
    per_pass = max(1, lm.rows_per_pass(length, False))
    passes = [starts[i : i + per_pass] for i in range(0, len(starts), per_pass)]
    return length + sum(len(chunk) * (length - min(chunk)) for chunk in passes)


if __name__ == "__main__":
    main()
