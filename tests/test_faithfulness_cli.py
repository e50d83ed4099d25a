"""The user-facing faithfulness command on a `from_pretrained` model: rows against direct forwards, resuming."""

import itertools
import json

import numpy as np
import pytest
import torch

from lit_sig import models
from lit_sig.cli import faithfulness, rows_io
from lit_sig.core import erasure
from lit_sig.lit import interpreters
from tests.helpers import occlusion

SENTENCES = [
    ("a charming and often affecting journey .", "1"),
    ("bad", "0"),
    ("the acting , costumes , music and sound are all astounding .", "1"),
    ("it is not a good movie", "0"),
    ("unflinchingly bleak and desperate", "0"),
]
METHODS = ["sig", "exact_sig", "ig", "grad_norm", "grad_dot_input", "random"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "dev.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in SENTENCES))
    return path


def run(data, model_dir, out, *flags):
    faithfulness.main(
        [
            "--data",
            str(data),
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--batch_size",
            "2",
            "--steps",
            "4",
            "--resamples",
            "200",
            *flags,
        ]
    )
    return [json.loads(line) for line in out.read_text().splitlines()]


def reference_salience(model, method: str, sentence: str, label: str) -> np.ndarray:
    """The interpreter on this one example alone."""
    config = faithfulness.Settings(4, "mask").config(method)
    result = faithfulness._interpreter(method).run([{"sentence": sentence, "label": label}], model, None, config=config)
    return np.asarray(result[0][models.gradients_field("sentence")].salience)


def direct_metrics(module, tokenizer, sentence: str, scores: np.ndarray) -> dict[str, float]:
    """The three metrics from plain Hugging Face forwards of token-id lists, one unpadded sequence each."""
    k = max(1, round(0.2 * len(scores)))
    return erased_metrics(module, tokenizer, sentence, set(np.argsort(-scores, kind="stable")[:k].tolist()))


def erased_metrics(module, tokenizer, sentence: str, top: set[int]) -> dict[str, float]:
    """The metrics of erasing the word tokens at positions `top` (0-based), by direct forwards."""
    words = tokenizer(sentence)["input_ids"][1:-1]
    k = len(top)

    def p(ids):
        with torch.no_grad():
            logits = module(input_ids=torch.tensor([[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]])).logits
        return torch.softmax(logits[0].double(), 0).numpy()

    full = p(words)
    c = int(np.argmax(full))
    masked = p([tokenizer.mask_token_id if t in top else w for t, w in enumerate(words)])[c]
    deleted = p([w for t, w in enumerate(words) if t not in top])[c]
    kept = p([w for t, w in enumerate(words) if t in top])[c]
    return {
        "log_odds": np.log(masked) - np.log(full[c]),
        "comprehensiveness": full[c] - deleted,
        "sufficiency": full[c] - kept,
        "k": k,
        "p": full[c],
    }


def direct_completeness_delta(model, method: str, sentence: str, target: int, scores: np.ndarray) -> float:
    """|completeness error| of salience `scores` against the scores of direct Hugging Face calls: IG's
    |F(x) - F(every word at [MASK]) - sum|, SIG's largest per-token |occlusion_i - salience_i|."""
    if method == "sig":
        return float(np.abs(occlusion(model, (sentence,), target, "mask") - scores).max())
    tok = model.tokenizer
    ids = tok(sentence)["input_ids"]
    masked = [ids[0], *[tok.mask_token_id] * (len(ids) - 2), ids[-1]]
    with torch.no_grad():
        logits = model.model(input_ids=torch.tensor([ids, masked])).logits[:, target]
    return abs(float(logits[0] - logits[1]) - float(scores.sum()))


def test_rows_equal_direct_forwards_of_the_erased_tokens(data, tiny_model_dir, tmp_path):
    out = tmp_path / "f.jsonl"
    rows = run(data, tiny_model_dir, out, "--methods", ",".join(METHODS))
    assert [(r["id"], r["method"]) for r in rows] == [(i, m) for i in range(len(SENTENCES)) for m in METHODS]
    assert not rows_io.partial_path(out).exists()
    model = models.HFSequenceClassifier.from_pretrained(str(tiny_model_dir), device="cpu")
    for row in rows:
        sentence, label = SENTENCES[row["id"]]
        assert (row["sentence"], row["label"], row["steps"], row["baseline"]) == (sentence, label, 4, "mask")
        assert row["model"] == str(tiny_model_dir.resolve()) and row["data"] == str(data.resolve())
        if row["method"] == "random":
            continue  # test_random_ranking_erases_a_fixed_subset_of_the_words
        scores = reference_salience(model, row["method"], sentence, row["predicted"])
        expected = direct_metrics(model.model, model.tokenizer, sentence, scores)
        assert row["k"] == expected["k"] and row["p"] == pytest.approx(expected["p"], abs=1e-6)
        for metric in erasure.METRICS:
            assert row[metric] == pytest.approx(expected[metric], abs=1e-5), (row["method"], metric)
        if row["method"] in ("sig", "ig"):
            target = model.labels.index(row["predicted"])
            delta = direct_completeness_delta(model, row["method"], sentence, target, scores)
            assert row["completeness_delta"] == pytest.approx(delta, abs=1e-5), row["method"]
        elif row["method"] == "exact_sig":
            assert row["completeness_delta"] == 0
        else:
            assert row["completeness_delta"] is None


def test_random_ranking_erases_a_fixed_subset_of_the_words(data, tiny_model_dir, tmp_path):
    """The control: each row's metrics are those of erasing one k-subset of the words (found among all
    of them by direct forwards), the same subset whatever the batch and method list."""
    rows = run(data, tiny_model_dir, tmp_path / "f.jsonl", "--methods", "random")
    again = run(data, tiny_model_dir, tmp_path / "g.jsonl", "--methods", "grad_norm,random", "--batch_size", "3")
    model = models.HFSequenceClassifier.from_pretrained(str(tiny_model_dir), device="cpu")
    subsets = []
    for row, other in zip(rows, [r for r in again if r["method"] == "random"]):
        assert (row["id"], row["k"]) == (other["id"], other["k"])
        for m in erasure.METRICS:  # Other batches pad differently: float32 rounding apart.
            assert row[m] == pytest.approx(other[m], abs=1e-6)
        count = len(model.tokenizer.tokenize(row["sentence"]))
        assert row["k"] == max(1, round(0.2 * count)) and row["completeness_delta"] is None
        matches = []
        for top in itertools.combinations(range(count), row["k"]):
            expected = erased_metrics(model.model, model.tokenizer, row["sentence"], set(top))
            if all(abs(row[m] - expected[m]) < 1e-5 for m in erasure.METRICS):
                matches.append(top)
        assert matches, row["sentence"]  # Some subset of k words was erased, by every metric alike.
        subsets.append(matches)
    # Not a fixed rule such as "the first k words": some sentence's erased words are not the first ones.
    assert any(tuple(range(row["k"])) not in m for row, m in zip(rows, subsets))


def test_summary_means_intervals_and_pairs(data, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "f.jsonl"
    rows = run(data, tiny_model_dir, out, "--methods", "ig,exact_sig,random", "--seed", "7")
    summary = json.loads((tmp_path / "f.summary.json").read_text())
    assert summary["seed"] == 7 and summary["n_examples"] == len(SENTENCES) and summary["steps"] == 4
    for method in ("ig", "exact_sig", "random"):
        values = {k: [r[k] for r in rows if r["method"] == method] for k in erasure.METRICS}
        for k, v in values.items():
            entry = summary["methods"][method][k]
            assert entry["mean"] == pytest.approx(np.mean(v)) and entry["low"] <= entry["mean"] <= entry["high"]
    pair = summary["differences"]["ig - exact_sig"]
    ig = np.array([r["log_odds"] for r in rows if r["method"] == "ig"])
    exact = np.array([r["log_odds"] for r in rows if r["method"] == "exact_sig"])
    assert pair["n"] == len(SENTENCES) and pair["log_odds"]["mean"] == pytest.approx((ig - exact).mean())
    assert "| exact_sig | 5 |" in capsys.readouterr().out


def test_a_crash_leaves_no_output_and_the_rerun_finishes(data, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "f.jsonl"
    expected = run(data, tiny_model_dir, tmp_path / "expected.jsonl", "--methods", "ig,random")
    calls = []
    score_batch = faithfulness.score_batch

    def crash_on_fourth_batch(model, method, *rest):
        calls.append(method)
        if len(calls) == 4:
            raise RuntimeError("power cut")
        return score_batch(model, method, *rest)

    monkeypatch.setattr(faithfulness, "score_batch", crash_on_fourth_batch)
    with pytest.raises(RuntimeError, match="power cut"):
        run(data, tiny_model_dir, out, "--methods", "ig,random")
    partial = rows_io.partial_path(out)
    assert not out.exists() and len(partial.read_text().splitlines()) == 5  # ig: batches of 2, 2, 1
    with partial.open("a") as f:
        f.write('{"id": 4, "sente')  # a row cut off mid-write
    calls.clear()
    rows = run(data, tiny_model_dir, out, "--methods", "ig,random")
    assert calls == ["random"] * 3 and not partial.exists()
    assert [(r["id"], r["method"]) for r in rows] == [(r["id"], r["method"]) for r in expected]
    for row, want in zip(rows, expected):
        assert row["log_odds"] == pytest.approx(want["log_odds"], abs=1e-6)


def test_resume_with_other_settings_is_refused(data, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "f.jsonl"
    run(data, tiny_model_dir, out, "--methods", "grad_norm", "--limit", "2")
    before = out.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        run(data, tiny_model_dir, out, "--methods", "grad_norm", "--baseline", "pad")
    assert exit_info.value.code == 2 and out.read_bytes() == before
    assert "another baseline='mask'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--methods", "lime"], "give distinct methods from sig, exact_sig"),
        (["--out", "f.parquet"], "write .jsonl rows"),
        (["--steps", "0"], "--steps must be in [1, 500]"),
        (["--top_fraction", "0"], "--top_fraction must be in (0, 1]"),
        (["--batch_size", "0"], "--batch_size must be a positive integer"),
        (["--baseline", "cls"], "choose from 'mask', 'pad', 'zero', 'eos', 'bos', 'unk'"),
        (["--model", "/nonexistent/model"], "can't load it"),
        (["--labels", "a"], "two or more distinct"),
    ],
)
def test_bad_flags_exit_2_naming_what_is_accepted(data, tiny_model_dir, tmp_path, capsys, flags, message):
    argv = ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "f.jsonl")]
    for flag, value in zip(flags[::2], flags[1::2]):
        argv += [flag, str(tmp_path / value) if flag == "--out" else value]
    with pytest.raises(SystemExit) as exit_info:
        faithfulness.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "f.jsonl").exists()


def test_settings_configs_are_accepted_by_the_interpreters():
    settings = faithfulness.Settings(7, "pad")
    for method in ("sig", "exact_sig", "ig"):
        faithfulness._interpreter(method).parse_config(settings.config(method))
    assert settings.config("ig")[interpreters.INTERPOLATION_KEY] == 7


def test_captum_methods_by_name(data, tiny_model_dir, tmp_path):
    """captum's FeatureAblation is single-token occlusion: the same ranking, so the same metrics, as exact SIG."""
    rows = run(data, tiny_model_dir, tmp_path / "c.jsonl", "--methods", "captum_featureablation,exact_sig")
    by_method = {m: [r for r in rows if r["method"] == m] for m in ("captum_featureablation", "exact_sig")}
    assert len(by_method["exact_sig"]) == len(SENTENCES)
    for ablation, exact in zip(by_method["captum_featureablation"], by_method["exact_sig"]):
        for metric in erasure.METRICS:
            assert ablation[metric] == pytest.approx(exact[metric], abs=1e-6)
