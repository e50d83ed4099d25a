"""An explain run: the examples not yet done, in batches, on this machine or a Ray cluster; each
batch's rows saved as it finishes, the output written whole at the end.
"""

import contextlib
import json
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
import tqdm
import transformers

from lit_sig import storage
from lit_sig.cli import rows_io
from lit_sig.cli.job import BATCH_COLUMN, Explainer, Job
from lit_sig.core import checkpoint
from lit_sig.lit import registry


def _run_local(job: Job, batches: list[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    explainer = Explainer(job)
    for batch in batches:
        yield explainer.explain(batch)


def _run_ray(
    job: Job, batches: list[list[dict[str, Any]]], address: str, workers: int
) -> Iterator[list[dict[str, Any]]]:
    """Yields each batch's rows as Ray workers finish them (in any order)."""
    import ray  # pylint: disable=import-outside-toplevel
    import ray.data  # pylint: disable=import-outside-toplevel

    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False)
        else:
            try:
                ray.init(address=address)
            except ConnectionError as error:
                raise ValueError(f"--ray {address}: {error}") from None
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        if job.device is None:
            use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        else:
            use_gpu = torch.device(job.device).type == "cuda"
        items = [{BATCH_COLUMN: json.dumps(batch)} for batch in batches]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            Explainer,
            fn_constructor_args=(job,),
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=1 if use_gpu else 0,
        )
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield table.to_pylist()
    finally:
        if started:
            ray.shutdown()


def explain_dataset(
    examples: list[dict[str, Any]],
    out: pathlib.Path,
    job: Job,
    tokenizer: transformers.PreTrainedTokenizerBase,
    ray_address: str | None = None,
    ray_workers: int = 2,
) -> int:
    """Explains the examples not yet in `out` or its sidecar; writes `out` whole.

    `tokenizer` is the model's; it sorts the examples by length.

    Returns:
        The number of rows in `out`.

    Raises:
        ValueError: `out` or its sidecar holds rows of other settings or data.
    """
    partial = rows_io.partial_path(out)
    done: dict[int, dict[str, Any]] = {}
    for source in (out, partial):
        if source.exists():
            rows = rows_io.read_rows(source) if source == out else list(storage.read_jsonl(source))
            rows_io.check_resumable(rows, examples, job.settings() | job.source(), source, job.text_key)
            done.update((row["id"], row) for row in rows)
    pending = [e for e in examples if e["id"] not in done]
    if not pending and not partial.exists() and out.exists():
        print(f"All {len(done)} rows are already in {out}.", file=sys.stderr)
        return len(done)
    kept_rows = rows_io.rows_checkpoint_path(out)
    if pending:
        batches = rows_io.length_batches(pending, tokenizer, job.batch_size)
        keep = ray_address is None and registry.get(job.method).score_rows_only
        if ray_address is None:
            results = _run_local(job, batches)
        else:
            results = _run_ray(job, batches, ray_address, ray_workers)
        # A local exact SIG keeps its model rows as they are scored: a stop mid-batch loses none of them.
        kept = checkpoint.scope(kept_rows) if keep else contextlib.nullcontext()
        with tqdm.tqdm(total=len(pending), unit="ex", desc=job.method, dynamic_ncols=True) as progress, kept:
            for rows in results:
                storage.append_jsonl(partial, rows)
                done.update((row["id"], row) for row in rows)
                progress.update(len(rows))
    rows_io.write_atomically([done[i] for i in sorted(done)], out, job.schema)
    partial.unlink(missing_ok=True)
    kept_rows.unlink(missing_ok=True)
    return len(done)
