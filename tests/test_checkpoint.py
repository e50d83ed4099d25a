"""Score-only rows kept on disk (`lit_sig.core.checkpoint`): a stopped exact SIG resumes where it stopped.

References: the same run without a checkpoint, and occlusion by direct Hugging Face calls
(`test_prefix_cache.direct_occlusion`); a resumed run must score only the rows the file lacks.
"""

import json

import numpy as np
import pytest
import torch

import lit_sig
from lit_sig.core import cancellation, checkpoint, engine
from lit_sig.lit import interpreters
from lit_sig.models import causal_lm
from tests import helpers
from tests.test_prefix_cache import EXACT, EXAMPLES, assert_close, build, direct_occlusion, exact_sig


def total_rows(saliences: list[np.ndarray]) -> int:
    return sum(1 + int(np.count_nonzero(s)) for s in saliences)  # F(x) and one row per movable token.


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_stopped_exact_sig_resumes_with_the_rows_it_lacks_and_equals_the_run_at_once(family, tmp_path):
    lm = build(family, max_rows_per_pass=4)
    at_once = exact_sig(lm, EXAMPLES)
    path = tmp_path / "rows.ckpt"
    with checkpoint.scope(path) as store, cancellation.scope(helpers.StopAfter(3)):
        with pytest.raises(cancellation.Cancelled):
            exact_sig(lm, EXAMPLES)
    assert store.rows_written == 12  # Three passes of 4 rows, kept although the run was stopped.
    with checkpoint.scope(path) as store:
        resumed = exact_sig(lm, EXAMPLES)
    assert store.rows_read == 12 and store.rows_written == total_rows(at_once) - 12
    for example, ours, alone in zip(EXAMPLES, resumed, at_once):
        reference, score = direct_occlusion(lm, example)
        assert_close(ours, reference, score)
        assert_close(ours, alone, score)
    with checkpoint.scope(path) as store:  # Every row is kept now: nothing runs.
        again = exact_sig(lm, EXAMPLES)
    assert store.rows_written == 0 and store.rows_read == total_rows(at_once)
    for ours, before in zip(again, resumed):
        np.testing.assert_array_equal(ours, before)


def test_rows_of_another_target_mask_baseline_or_model_are_not_reused(tmp_path):
    lm = build("llama")
    path = tmp_path / "rows.ckpt"
    with checkpoint.scope(path) as store:
        (first,) = exact_sig(lm, EXAMPLES[:1])
    written = store.rows_written
    length = len(lm.tokenize(EXAMPLES[:1])[0])
    masked = {**EXAMPLES[0], "target_mask": [0.0] * (length - 1) + [1.0]}  # Only the last target token.
    variants = [
        (lm, {**EXAMPLES[0], "target": " Paris."}, EXACT),
        (lm, masked, EXACT),
        (lm, EXAMPLES[0], {**EXACT, interpreters.BASELINE_KEY: "eos"}),
        (causal_lm.HFCausalLM(helpers.tiny_llama(lm.tokenizer, seed=4), lm.tokenizer), EXAMPLES[0], EXACT),
    ]
    for model, example, config in variants:
        with checkpoint.scope(path) as store:
            (kept,) = exact_sig(model, [example], config)
        assert store.rows_written > 0, example  # Scored anew: no row of another F matched.
        (fresh,) = exact_sig(model, [example], config)
        assert_close(kept, fresh, max(abs(float(s)) for s in model.score([example])))
        assert kept.shape != first.shape or not np.allclose(kept, first)
    assert written == total_rows([first])
    with torch.no_grad():  # The same wrapper, its weights changed in place: a new scope hashes them anew.
        lm.model.get_output_embeddings().weight.mul_(1.5)
    with checkpoint.scope(path) as store:
        (changed,) = exact_sig(lm, EXAMPLES[:1])
    assert store.rows_written == written and not np.allclose(changed, first)


def test_a_classifiers_logit_and_probability_rows_do_not_mix(tokenizer, tmp_path):
    config = {interpreters.NORMALIZATION_KEY: False, interpreters.METHOD_KEY: interpreters.EXACT_METHOD}
    path = tmp_path / "rows.ckpt"
    sig = lit_sig.SequentialIntegratedGradients()
    results = {}
    for grad_wrt in ("logit", "probability"):
        model = lit_sig.HFSequenceClassifier(helpers.tiny_bert(), tokenizer, labels=["0", "1"], grad_wrt=grad_wrt)
        with checkpoint.scope(path) as store:
            (results[grad_wrt],) = helpers.run(sig, model, [{"sentence": helpers.SENTENCE}], **config)
        assert store.rows_written > 0
        (alone,) = helpers.run(sig, model, [{"sentence": helpers.SENTENCE}], **config)
        helpers.assert_close_in_float32(helpers.salience(results[grad_wrt]), helpers.salience(alone))
    assert not np.allclose(helpers.salience(results["logit"]), helpers.salience(results["probability"]))


def test_a_torn_last_line_is_dropped_and_a_damaged_file_is_refused(tmp_path):
    lm = build("llama")
    path = tmp_path / "rows.ckpt"
    with checkpoint.scope(path) as store:
        (first,) = exact_sig(lm, EXAMPLES[:1])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:15])  # Killed while writing the last row.
    with checkpoint.scope(path) as store:
        (resumed,) = exact_sig(lm, EXAMPLES[:1])
    assert store.rows_read == len(lines) - 2 and store.rows_written == 1
    assert_close(resumed, first, max(abs(float(s)) for s in lm.score(EXAMPLES[:1])))
    assert path.read_text().count("\n") == len(lines)  # The torn line is gone, the new row on its own line.
    damaged = lines[:2] + ['{"problem": "x", "group": 1}\n'] + lines[2:]
    path.write_text("".join(damaged))
    with pytest.raises(checkpoint.CheckpointError, match="line 3"):
        checkpoint.RowCheckpoint(path)
    other = tmp_path / "rows.jsonl"
    other.write_text(json.dumps({"id": 1}) + "\n")
    with pytest.raises(checkpoint.CheckpointError, match="not a lit_sig row checkpoint"):
        checkpoint.RowCheckpoint(other)


class _Anonymous:
    """A scorer without `score_fingerprint`."""

    device = torch.device("cpu")

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        return 8

    def score_rows(self, pieces, with_grads):
        return [(rows.sum((1, 2)), None) for _, rows in pieces]


def test_a_scorer_that_cannot_name_its_score_is_refused_and_outside_a_scope_nothing_is_kept(tmp_path):
    x = torch.arange(6.0).reshape(3, 2)
    problem = engine.PathProblem(None, x, torch.zeros_like(x), torch.eye(3, dtype=torch.bool))
    (result,) = engine.occlusion_attributions([problem], _Anonymous())
    np.testing.assert_array_equal(result.token_attributions.numpy(), x.sum(-1).numpy())  # Linear F: exact.
    with checkpoint.scope(tmp_path / "rows.ckpt"):
        with pytest.raises(checkpoint.CheckpointError, match="_Anonymous has no model_fingerprint"):
            engine.occlusion_attributions([problem], _Anonymous())
