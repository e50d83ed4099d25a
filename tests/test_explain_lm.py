"""The data set explainer CLI on a causal LM: JSON Lines of prompts, generated targets, resuming, Ray."""

import json
import pathlib

import numpy as np
import pytest

from lit_sig import models
from lit_sig.cli import explain, rows_io
from lit_sig.core import cancellation
from lit_sig.lit import registry
from tests import helpers

PROMPTS = [
    {"prompt": "The capital of France is", "target": " Paris."},
    {"prompt": "Two plus two"},  # No target: the model's own response.
    {"prompt": "Is this review positive or negative? The movie was wonderful.", "target": " Great"},
]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny random Llama with a ChatML tokenizer, saved for `from_pretrained`."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = helpers.tiny_lm_tokenizer()
    helpers.tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def run(prompts: pathlib.Path, lm_dir: pathlib.Path, out: pathlib.Path, *flags: str) -> list[dict]:
    explain.main(
        ["--data", str(prompts), "--model", str(lm_dir), "--out", str(out), "--batch_size", "2", "--device", "cpu"]
        + list(flags)
    )
    return rows_io.read_rows(out)


@pytest.mark.parametrize("method", ["exact_sig", "ig", "grad_norm", "captum_featureablation"])
def test_rows_equal_the_interpreter_on_each_prompt(prompts, lm_dir, tmp_path, method):
    flags = ["--method", method, "--steps", "4", "--chat_template", "--max_new_tokens", "5"]
    rows = run(prompts, lm_dir, tmp_path / "out.jsonl", *flags)
    lm = models.HFCausalLM.from_pretrained(str(lm_dir), device="cpu", chat_template=True, max_new_tokens=5)
    interpreter, config = registry.interpreter_and_config(method, 4, "zero", False)
    assert [r["id"] for r in rows] == [0, 1, 2]
    for row, given in zip(rows, PROMPTS):
        takes_baseline = registry.get(method).takes_baseline
        assert row["prompt"] == given["prompt"] and row["chat_template"]
        assert row["baseline"] == ("zero" if takes_baseline else None)
        target = given.get("target") or lm.generate([given])[0]
        assert (row["target"], row["generated"]) == (target, "target" not in given)
        example = {"prompt": given["prompt"], "target": target}
        (alone,) = interpreter.run([example], lm, None, config=config)
        salience = alone[models.causal_lm.GRADIENTS_FIELD]
        assert row["tokens"] == salience.tokens
        if method in ("exact_sig", "captum_featureablation"):
            # Each salience is F(x) - F(x with one token moved): differences of two float32 values of F, which
            # other batch mates (and which prefix blocks the rows share) round differently.
            scale = max(abs(row["score"]), float(np.abs(salience.salience).max()))
            helpers.assert_close_in_float32(row["salience"], salience.salience, scale=scale)
        else:
            np.testing.assert_allclose(row["salience"], salience.salience, rtol=1e-4, atol=1e-6)
        assert row["score"] == pytest.approx(lm.score([example])[0], rel=1e-5)
        if method == "exact_sig":
            assert row["completeness_delta"] == 0.0
        elif method == "ig":
            assert row["completeness_delta"] == pytest.approx(alone["completeness_delta"], rel=1e-3, abs=1e-5)
        else:
            assert row["completeness_delta"] is None


def assert_rows_close(ours: list[dict], theirs: list[dict]) -> None:
    """The same rows, their floats up to the float32 rounding of other batch mates."""
    floats = ("salience", "score")
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert {k: v for k, v in a.items() if k not in floats} == {k: v for k, v in b.items() if k not in floats}
        helpers.assert_close_in_float32(a["salience"], b["salience"])
        assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6)


def test_parquet_equals_jsonl_and_resume_skips_done_rows(prompts, lm_dir, tmp_path, monkeypatch):
    jsonl = run(prompts, lm_dir, tmp_path / "out.jsonl", "--method", "exact_sig")
    out = tmp_path / "out.parquet"
    first = run(prompts, lm_dir, out, "--method", "exact_sig", "--limit", "2")
    assert_rows_close(first, jsonl[:2])
    seen = []
    original = models.HFCausalLM.path_inputs

    def recording(self, inputs, *args):
        seen.extend(e["prompt"] for e in inputs)
        return original(self, inputs, *args)

    monkeypatch.setattr(models.HFCausalLM, "path_inputs", recording)
    assert_rows_close(run(prompts, lm_dir, out, "--method", "exact_sig"), jsonl)
    assert set(seen) == {PROMPTS[2]["prompt"]}


def test_resume_with_other_settings_or_targets_is_refused(prompts, lm_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    run(prompts, lm_dir, out, "--method", "exact_sig")
    with pytest.raises(SystemExit):
        run(prompts, lm_dir, out, "--method", "exact_sig", "--chat_template")
    assert "chat_template=False" in capsys.readouterr().err
    data = tmp_path / "data.jsonl"  # The same file, with other targets.
    data.write_text(prompts.read_text())
    run(data, lm_dir, tmp_path / "same.jsonl", "--method", "exact_sig")
    data.write_text("".join(json.dumps({**p, "target": " no"}) + "\n" for p in PROMPTS))
    with pytest.raises(SystemExit):
        run(data, lm_dir, tmp_path / "same.jsonl", "--method", "exact_sig")
    assert "another target" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--labels", "a,b"], "not for a causal LM"),
        (["--target", "label"], "not for a causal LM"),
        (["--baseline", "mask", "--method", "ig"], None),
    ],
)
def test_classifier_flags_are_refused_for_an_lm(prompts, lm_dir, tmp_path, capsys, flags, message):
    if message is None:  # No [MASK] token: the interpreter warns and uses zeros; the row says "mask".
        rows = run(prompts, lm_dir, tmp_path / "out.jsonl", *flags, "--steps", "2", "--limit", "1")
        assert rows[0]["baseline"] == "mask"
        return
    with pytest.raises(SystemExit):
        run(prompts, lm_dir, tmp_path / "out.jsonl", *flags)
    assert message in capsys.readouterr().err


def test_lm_data_must_be_json_lines_of_prompts(lm_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"sentence": "no prompt"}) + "\n")
    with pytest.raises(SystemExit):
        run(bad, lm_dir, tmp_path / "out.jsonl")
    assert "'prompt'" in capsys.readouterr().err


def test_ray_output_equals_local_output(prompts, lm_dir, tmp_path):
    flags = ("--method", "ig", "--steps", "3")
    local = run(prompts, lm_dir, tmp_path / "local.jsonl", *flags)
    on_ray = run(prompts, lm_dir, tmp_path / "ray.jsonl", *flags, "--ray", "local", "--ray_workers", "2")
    floats = ("salience", "score", "completeness_delta")
    for ray_row, local_row in zip(on_ray, local):
        assert {k: v for k, v in ray_row.items() if k not in floats} == {
            k: v for k, v in local_row.items() if k not in floats
        }
        for key in floats:
            np.testing.assert_allclose(ray_row[key], local_row[key], rtol=1e-5, atol=1e-6)


def test_a_stopped_exact_sig_keeps_its_model_rows_and_the_rerun_scores_only_the_rest(
    prompts, lm_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(models.HFCausalLM, "rows_per_pass", lambda self, tokens, with_grads: 4)
    scored = []
    original = models.HFCausalLM.score_rows

    def counting(self, pieces, with_grads):
        scored.append(sum(len(r) for _, r in pieces))
        return original(self, pieces, with_grads)

    monkeypatch.setattr(models.HFCausalLM, "score_rows", counting)
    whole = run(prompts, lm_dir, tmp_path / "whole.jsonl", "--method", "exact_sig")
    total, scored[:] = sum(scored), []
    out = tmp_path / "out.jsonl"
    with cancellation.scope(helpers.StopAfter(3)), pytest.raises(cancellation.Cancelled):
        run(prompts, lm_dir, out, "--method", "exact_sig")  # Stopped inside the first batch.
    kept = rows_io.rows_checkpoint_path(out)
    assert kept.read_text().count("\n") - 1 == 12  # Three passes of 4 rows (the rows of F(x) come first).
    assert not rows_io.partial_path(out).exists()
    scored[:] = []
    assert_rows_close(run(prompts, lm_dir, out, "--method", "exact_sig"), whole)
    assert sum(scored) == total - 12 and not kept.exists()
