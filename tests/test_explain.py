"""The data set explainer CLI: rows, formats, resuming, flag errors, and Ray."""

import dataclasses
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest
import torch

from lit_sig import models
from lit_sig.cli import explain, job, rows_io
from lit_sig.lit import interpreters, registry
from tests.helpers import assert_close_in_float32, captum_ig, direct_gradient, occlusion, tiny_bert

SENTENCES = [
    ("a charming and often affecting journey .", "1"),
    ("bad", "0"),
    ("the acting , costumes , music and sound are all astounding .", "1"),
    ("unflinchingly bleak and desperate", "0"),
    ("it is not a good movie", "0"),
    ("<script>alert(1)</script> works", "1"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("data") / "dev.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in SENTENCES))
    return path


def run(data: pathlib.Path, tiny_model_dir: pathlib.Path, out: pathlib.Path, *flags: str) -> list[dict]:
    explain.main(["--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), "--batch_size", "2", *flags])
    return rows_io.read_rows(out)


JOB = job.Job(
    model=job.EMBEDDED_MODEL,
    labels=("0", "1"),
    method="sig",
    steps=4,
    baseline="mask",
    normalize=False,
    target="predicted",
    device="cpu",
    batch_size=2,
)
CLI_METHODS = [
    "sig",
    "exact_sig",
    "adaptive_sig",
    "ig",
    "grad_norm",
    "grad_dot_input",
    "captum_featureablation",
    "captum_kernelshap",
]


def direct_reference(model, method: str, sentence: str, target: int) -> np.ndarray | None:
    """The method's salience by direct Hugging Face / captum calls, where it has a closed form."""
    if method in ("exact_sig", "captum_featureablation"):  # Both are single-token occlusion.
        return occlusion(model, (sentence,), target, "mask")
    if method == "ig":
        return captum_ig(model, sentence, target, interpreters.DEFAULT_METHOD, 4)
    if method in ("grad_norm", "grad_dot_input"):
        grad, embs = direct_gradient(model, (sentence,), target)
        return np.linalg.norm(grad, axis=-1) if method == "grad_norm" else (grad * embs).sum(-1)
    return None


@pytest.mark.parametrize("method", CLI_METHODS)
def test_rows_equal_a_notebook_run_and_direct_references(data, tiny_model_dir, tmp_path, tokenizer, method):
    """Each row equals the interpreter run on its example alone, and (where the method has one) a
    reference by direct Hugging Face / captum calls; SIG's rows are occlusion within their delta."""
    rows = run(data, tiny_model_dir, tmp_path / "out.jsonl", "--method", method, "--steps", "4")
    assert [r["id"] for r in rows] == list(range(len(SENTENCES)))
    assert not rows_io.partial_path(tmp_path / "out.jsonl").exists()
    model = models.HFSequenceClassifier.from_pretrained(str(tiny_model_dir), device="cpu")
    interpreter, config = registry.interpreter_and_config(method, 4, "mask", False)
    spec = registry.get(method)
    for row, (sentence, label) in zip(rows, SENTENCES):
        assert (row["sentence"], row["label"]) == (sentence, label)
        assert row["tokens"] == tokenizer.tokenize(sentence)
        assert row["predicted"] == ["0", "1"][int(np.argmax(row["probas"]))]
        alone = interpreter.run([{"sentence": sentence, "label": row["predicted"]}], model, None, config=config)[0]
        np.testing.assert_allclose(row["salience"], alone["token_grad_sentence"].salience, rtol=1e-4, atol=1e-6)
        target, ours = model.labels.index(row["predicted"]), np.asarray(row["salience"])
        reference = direct_reference(model, method, sentence, target)
        if reference is not None:
            np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())
        if method in ("sig", "adaptive_sig"):  # Per-token completeness: |salience - occlusion| is the delta.
            gaps = np.abs(ours - occlusion(model, (sentence,), target, "mask"))
            # abs: with one token SIG reports its signed delta (the engine signs a single group's delta).
            assert abs(row["completeness_delta"]) == pytest.approx(gaps.max(), abs=1e-5 * np.abs(ours).max() + 1e-7)
        if method == "adaptive_sig":
            assert abs(row["completeness_delta"]) <= interpreter.parse_config(config).tolerance  # In logit units.
        if spec.steps_key is not None:
            assert row["completeness_delta"] == pytest.approx(alone["completeness_delta"], rel=1e-3, abs=1e-5)
            assert (row["steps"], row["baseline"]) == (4, "mask")
        elif spec.takes_baseline and not method.startswith(registry.CAPTUM_PREFIX):
            assert row["steps"] is None and row["baseline"] == "mask"
            expected = 0.0 if method == "exact_sig" else pytest.approx(alone["completeness_delta"], abs=1e-6)
            assert row["completeness_delta"] == expected
        else:
            assert row["completeness_delta"] is None and row["steps"] is None


def test_parquet_equals_jsonl_and_target_label_explains_gold(data, tiny_model_dir, tmp_path):
    jsonl = run(data, tiny_model_dir, tmp_path / "out.jsonl", "--method", "ig", "--steps", "3")
    parquet = run(data, tiny_model_dir, tmp_path / "out.parquet", "--method", "ig", "--steps", "3")
    assert parquet == jsonl
    gold = run(data, tiny_model_dir, tmp_path / "gold.jsonl", "--method", "ig", "--steps", "3", "--target", "label")
    for row, gold_row in zip(jsonl, gold):
        assert gold_row["target"] == "label" and gold_row["probas"] == row["probas"]
        if row["label"] != row["predicted"]:  # The other class has other gradients.
            assert not np.allclose(gold_row["salience"], row["salience"])
        else:
            np.testing.assert_allclose(gold_row["salience"], row["salience"], rtol=1e-6)


THREE_CLASS = [("a man plays a guitar", "0"), ("nobody is playing music", "2"), ("the music is loud", "1")]


def save_three_class_model(path: pathlib.Path, tokenizer, id2label: dict[int, str] | None = None) -> pathlib.Path:
    module = tiny_bert(num_labels=3, seed=1)
    if id2label is not None:
        module.config.id2label, module.config.label2id = id2label, {v: k for k, v in id2label.items()}
    module.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_three_class_tsv_with_labels_from_the_model(tmp_path, tokenizer):
    """Labels come from the model (transformers' LABEL_i placeholders read as "0", "1", "2"), not SST-2's."""
    model_dir = save_three_class_model(tmp_path / "three", tokenizer)
    data = tmp_path / "three.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in THREE_CLASS))
    rows = run(data, model_dir, tmp_path / "out.jsonl", "--method", "exact_sig", "--target", "label")
    model = models.HFSequenceClassifier.from_pretrained(str(model_dir), labels=["0", "1", "2"], device="cpu")
    for row, (sentence, label) in zip(rows, THREE_CLASS):
        assert row["labels"] == ["0", "1", "2"] and row["label"] == label and len(row["probas"]) == 3
        encoding = tokenizer(sentence, return_tensors="pt")
        with torch.no_grad():
            probas = torch.softmax(model.model(**encoding).logits[0], -1).numpy()
        np.testing.assert_allclose(row["probas"], probas, rtol=1e-5, atol=1e-6)
        assert row["predicted"] == str(int(np.argmax(probas)))
        expected = occlusion(model, (sentence,), int(label), "mask")  # The gold class, by direct calls.
        np.testing.assert_allclose(row["salience"], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_labels_the_model_names_and_labels_it_does_not_know(tmp_path, tokenizer, capsys):
    model_dir = save_three_class_model(tmp_path / "named", tokenizer, {0: "neg", 1: "neu", 2: "pos"})
    data = tmp_path / "three.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in THREE_CLASS))
    for flags, message in (
        ((), "has label '0', not one of the model's classes ['neg', 'neu', 'pos']; --labels names them"),
        (("--labels", "a,b"), "--labels 'a,b' names 2 classes; --model"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run(data, model_dir, tmp_path / "out.jsonl", "--method", "grad_norm", *flags)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    rows = run(data, model_dir, tmp_path / "out.jsonl", "--method", "grad_norm", "--labels", "0,1,2")
    assert [r["label"] for r in rows] == [label for _, label in THREE_CLASS] and rows[0]["labels"] == ["0", "1", "2"]
    unlabelled = tmp_path / "named.jsonl"
    unlabelled.write_text("".join(json.dumps({"sentence": s}) + "\n" for s, _ in THREE_CLASS))
    rows = run(unlabelled, model_dir, tmp_path / "named_out.jsonl", "--method", "grad_norm")
    assert {r["predicted"] for r in rows} <= {"neg", "neu", "pos"} and rows[0]["labels"] == ["neg", "neu", "pos"]


def test_normalize_flag_scales_rows(data, tiny_model_dir, tmp_path):
    rows = run(data, tiny_model_dir, tmp_path / "out.jsonl", "--method", "grad_norm", "--normalize")
    for row in rows:
        assert sum(abs(s) for s in row["salience"]) == pytest.approx(1.0)
        assert row["normalize"] is True


def explained_sentences(monkeypatch) -> list[str]:
    """Records the sentences that the model predicts (`predict` or `classify`) without replaced embeddings."""
    seen: list[str] = []
    for name in ("predict", "classify"):
        original = getattr(models.HFSequenceClassifier, name)

        def recording(self, inputs, original=original, **kw):
            inputs = list(inputs)
            seen.extend(x["sentence"] for x in inputs if "input_embs_sentence" not in x)
            return original(self, inputs, **kw)

        monkeypatch.setattr(models.HFSequenceClassifier, name, recording)
    return seen


def test_resume_skips_rows_already_in_the_output(data, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out.parquet"
    first = run(data, tiny_model_dir, out, "--method", "grad_dot_input", "--limit", "3")
    assert [r["id"] for r in first] == [0, 1, 2]
    # Mark row 1: a recomputed row would lose the mark.
    first[1]["salience"] = [123.0] * len(first[1]["salience"])
    rows_io.write_atomically(first, out)

    seen = explained_sentences(monkeypatch)
    rows = run(data, tiny_model_dir, out, "--method", "grad_dot_input")
    assert sorted(seen) == sorted(s for s, _ in SENTENCES[3:])
    assert [r["id"] for r in rows] == list(range(len(SENTENCES)))
    assert rows[:3] == first

    seen.clear()
    assert run(data, tiny_model_dir, out, "--method", "grad_dot_input") == rows
    assert seen == []


def test_a_crash_leaves_no_output_and_the_rerun_finishes(data, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    expected = run(data, tiny_model_dir, tmp_path / "expected.jsonl", "--method", "sig", "--steps", "2")
    calls = []
    explain_batch = job.Explainer.explain

    def crash_on_second_batch(self, examples):
        calls.append(len(examples))
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return explain_batch(self, examples)

    monkeypatch.setattr(job.Explainer, "explain", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="power cut"):
        run(data, tiny_model_dir, out, "--method", "sig", "--steps", "2")
    monkeypatch.undo()
    partial = rows_io.partial_path(out)
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == []
    finished = rows_io.read_rows(partial)
    assert len(finished) == 2
    with partial.open("a") as f:  # A row cut off mid-write.
        f.write('{"id": 5, "sentence": "<scr')

    seen = explained_sentences(monkeypatch)
    rows = run(data, tiny_model_dir, out, "--method", "sig", "--steps", "2")
    assert len(seen) == len(SENTENCES) - 2 and not {r["sentence"] for r in finished} & set(seen)
    assert not partial.exists()
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    for row, want in zip(rows, expected):
        assert_close_in_float32(row["salience"], want["salience"])  # Resumed batches may hold other rows.


def test_resume_with_other_settings_is_refused(data, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    run(data, tiny_model_dir, out, "--method", "ig", "--steps", "2", "--limit", "2")
    with pytest.raises(SystemExit) as exit_info:
        run(data, tiny_model_dir, out, "--method", "ig", "--steps", "3")
    assert exit_info.value.code == 2
    assert "resume with the same flags" in capsys.readouterr().err


def test_precision_flag_runs_and_records_it_and_resume_keeps_it(data, tiny_model_dir, tmp_path, capsys):
    """bfloat16 rows are recorded as such and stay within bfloat16's precision of float32 SIG.

    bfloat16 keeps 8 significant bits (a relative rounding of 2^-8 per operation); which last
    bits come out depends on the CPU's kernels and on what shares a pass, so the rows are held
    to float32's result within 2^-4 of its scale (16 such roundings), not to one CPU's bits.
    """
    out = tmp_path / "out.jsonl"
    rows = run(data, tiny_model_dir, out, "--method", "sig", "--steps", "3", "--precision", "bfloat16", "--limit", "2")
    full = models.HFSequenceClassifier.from_pretrained(str(tiny_model_dir), device="cpu")
    interpreter, config = registry.interpreter_and_config("sig", 3, "mask", False)
    job = dataclasses.replace(JOB, model=str(tiny_model_dir), precision="bfloat16")
    assert job.build_model().precision == "bfloat16"
    for row in rows:
        assert row["precision"] == "bfloat16"
        example = {"sentence": row["sentence"], "label": row["predicted"]}
        float32 = interpreter.run([example], full, None, config=config)[0]["token_grad_sentence"].salience
        bound = 2**-4 * np.abs(float32).max()
        np.testing.assert_allclose(row["salience"], float32, rtol=0, atol=bound)
        assert not np.array_equal(row["salience"], float32)  # It did run in bfloat16.
    with pytest.raises(SystemExit) as exit_info:  # float32 rows must not join bfloat16 ones.
        run(data, tiny_model_dir, out, "--method", "sig", "--steps", "3")
    assert exit_info.value.code == 2 and "precision='bfloat16'" in capsys.readouterr().err


def test_rows_written_before_the_precision_setting_resume_as_float32(data, tiny_model_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    first = run(data, tiny_model_dir, out, "--method", "ig", "--steps", "2", "--limit", "2")
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "precision"}) + "\n" for r in first))
    rows = run(data, tiny_model_dir, out, "--method", "ig", "--steps", "2", "--limit", "4")  # Not refused.
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    assert [r["salience"] for r in rows[:2]] == [r["salience"] for r in first]  # Kept, not redone.
    assert [r.get("precision") for r in rows] == [None, None, "float32", "float32"]


def test_torch_compile_flag_reaches_the_model(data, tiny_model_dir):
    job = dataclasses.replace(JOB, model=str(tiny_model_dir), torch_compile=True)
    assert job.build_model().runner.compiled is not None  # Compiles on its first pass, not here.
    assert dataclasses.replace(job, torch_compile=False).build_model().runner.compiled is None
    assert "torch_compile" not in job.settings()  # Rounding only: rows of both may share a file.


@pytest.mark.parametrize("change", ["model", "labels", "data"])
def test_resume_with_another_model_labels_or_data_is_refused(data, tiny_model_dir, tmp_path, capsys, tokenizer, change):
    """A second run into the same --out must not mix rows of two models (or label sets, or data files)."""
    out = tmp_path / "out.jsonl"
    run(data, tiny_model_dir, out, "--method", "grad_norm", "--labels", "0,1", "--limit", "2")
    before = out.read_bytes()
    other_model = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other_model)
    other_data = tmp_path / "copy.tsv"
    other_data.write_bytes(data.read_bytes())
    flags = {
        "model": ("--model", str(other_model)),
        "labels": ("--labels", "1,0"),  # Same names, another logit order.
        "data": ("--data", str(other_data)),
    }
    argv = [
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--method",
        "grad_norm",
        "--labels",
        "0,1",
    ]
    flag, value = flags[change]
    argv[argv.index(flag) + 1] = value
    with pytest.raises(SystemExit) as exit_info:
        explain.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"another {change}=" in err and "resume with the same flags" in err
    assert out.read_bytes() == before
    row = rows_io.read_rows(out)[0]
    assert (row["model"], row["labels"], row["data"]) == (
        str(tiny_model_dir.resolve()),
        ["0", "1"],
        str(data.resolve()),
    )


def test_jsonl_data_with_a_text_field(tiny_model_dir, tmp_path):
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"review": s}) + "\n\n" for s, _ in SENTENCES[:3]))
    rows = run(data, tiny_model_dir, tmp_path / "out.jsonl", "--method", "grad_norm", "--text_field", "review")
    assert [r["sentence"] for r in rows] == [s for s, _ in SENTENCES[:3]]
    assert all(r["label"] is None for r in rows)


def test_batches_are_sorted_longest_first(tokenizer):
    examples = [{"id": i, "sentence": s, "label": None} for i, (s, _) in enumerate(SENTENCES)]
    batches = rows_io.length_batches(examples, tokenizer, 4)
    assert [len(b) for b in batches] == [4, 2]
    lengths = [len(tokenizer.tokenize(e["sentence"])) for b in batches for e in b]
    assert lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--method", "shap"],
            "choose from 'sig', 'exact_sig', 'adaptive_sig', 'ig', 'grad_norm', 'grad_dot_input', 'capt",
        ),
        (["--baseline", "cls"], "choose from 'mask', 'pad', 'zero', 'eos', 'bos', 'unk'"),
        (["--target", "gold"], "choose from 'predicted', 'label'"),
        (["--out", "out.csv"], "accepted: .parquet, .jsonl"),
        (["--steps", "0"], "--steps"),
        (["--device", "tpu0"], "accepted: cpu, cuda, cuda:N, mps"),
        (["--labels", "positive"], "two or more distinct"),
        (["--batch_size", "0"], "--batch_size must be a positive integer"),
        (["--data", "dev.csv"], "accepted: .tsv, .jsonl"),
        (["--model", "/nonexistent/model"], "can't load it"),
        (["--text_field", "review"], "GLUE TSV files always use 'sentence'"),
        (["--precision", "fp8"], "choose from 'float32', 'bfloat16', 'float16'"),
    ],
)
def test_bad_flags_exit_2_naming_what_is_accepted(data, tiny_model_dir, tmp_path, capsys, flags, message):
    argv = ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "out.jsonl")]
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in ("--data", "--out"):
            value = str(tmp_path / value)
        argv += [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        explain.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


def test_ray_flag_without_ray_installed(data, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError.
    with pytest.raises(SystemExit) as exit_info:
        run(data, tiny_model_dir, tmp_path / "out.jsonl", "--ray", "local")
    assert exit_info.value.code == 2
    assert "pip install 'lit_sig[ray]'" in capsys.readouterr().err


def test_ray_output_equals_local_output(data, tiny_model_dir, tmp_path):
    """Ray Data on 2 local workers (`make test` installs the `ray` extra, so this always runs)."""
    flags = ("--method", "sig", "--steps", "3", "--device", "cpu")
    local = run(data, tiny_model_dir, tmp_path / "local.parquet", *flags)
    on_ray = run(data, tiny_model_dir, tmp_path / "ray.parquet", *flags, "--ray", "local", "--ray_workers", "2")
    assert [r.keys() for r in on_ray] == [r.keys() for r in local]
    for ray_row, local_row in zip(on_ray, local):
        # Same batches, same model; Ray's actors may run torch on fewer threads (float32 rounding).
        floats = ("probas", "salience", "completeness_delta")
        assert {k: v for k, v in ray_row.items() if k not in floats} == {
            k: v for k, v in local_row.items() if k not in floats
        }
        for key in floats:
            np.testing.assert_allclose(ray_row[key], local_row[key], rtol=1e-5, atol=1e-6)
