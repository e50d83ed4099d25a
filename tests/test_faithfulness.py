"""The faithfulness benchmark: metrics, both protocols' attributions against references, intervals, resuming."""

import json

import numpy as np
import pytest
import torch

import lit_sig
from benchmarks import faithfulness
from lit_sig import models
from lit_sig.core import erasure
from lit_sig.lit import interpreters
from lit_sig.models import datasets
from tests.helpers import captum_ig, direct_gradient, occlusion

SENTENCES = [s for s, _ in datasets.BUILTIN_SENTENCES[:3]]
RAW = {interpreters.NORMALIZATION_KEY: False}


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "dev.tsv"
    rows = ["sentence\tlabel"] + [f"{s}\t{label}" for s, label in datasets.BUILTIN_SENTENCES[:3]]
    path.write_text("\n".join(rows) + "\n")
    return path


def args(data_file, tmp_path, *flags, methods=faithfulness.METHODS):
    return faithfulness._parse(
        [  # pylint: disable=protected-access
            "--data",
            str(data_file),
            "--steps",
            "3",
            "--methods",
            ",".join(methods),
            "--resamples",
            "100",
            "--cache",
            str(tmp_path / "cache.jsonl"),
            "--json",
            str(tmp_path / "out.json"),
            *flags,
        ]
    )


def direct_probability(module, ids: list[int], c: int) -> float:
    """p(c) of one id sequence, a plain Hugging Face forward without padding."""
    with torch.no_grad():
        logits = module(input_ids=torch.tensor([ids])).logits[0].double()
    return float(torch.softmax(logits, 0)[c])


@pytest.mark.parametrize("protocol", ["ours", "paper"])
def test_metrics_equal_direct_forwards_with_tokens_erased(tiny_model, protocol):
    module, tok = tiny_model.model, tiny_model.tokenizer
    ids = tok("a b c d e f g h i j k l m")["input_ids"]  # 13 words, 15 positions
    special = [i in (0, len(ids) - 1) for i in range(len(ids))]
    p = erasure.PROTOCOLS[protocol]
    ranked = p.ranked_positions(special)
    scores = np.arange(len(ranked), dtype=float)
    scores[0] = 100.0  # ours: the first word; paper: [CLS]
    (result,) = erasure.erasure_metrics(module, tok, [ids], [special], [scores], p)
    probs = [direct_probability(module, ids, c) for c in (0, 1)]
    c = int(np.argmax(probs))
    if protocol == "ours":  # k = round(0.2 * 13) = 3: the first word and the last two.
        top, replacement = [1, 12, 13], tok.mask_token_id
    else:  # k = floor(0.2 * 15) = 3: [CLS], [SEP] and the last word.
        top, replacement = [0, 13, 14], tok.pad_token_id
    replaced = [replacement if i in top else t for i, t in enumerate(ids)]
    deleted = [t for i, t in enumerate(ids) if i not in top]
    kept = [t for i, t in enumerate(ids) if i in top or (protocol == "ours" and special[i])]
    assert result["k"] == 3 and result["predicted"] == c
    assert result["p"] == pytest.approx(probs[c], abs=1e-6)
    assert result["log_odds"] == pytest.approx(
        np.log(direct_probability(module, replaced, c)) - np.log(probs[c]), abs=1e-5
    )
    assert result["comprehensiveness"] == pytest.approx(probs[c] - direct_probability(module, deleted, c), abs=1e-6)
    assert result["sufficiency"] == pytest.approx(probs[c] - direct_probability(module, kept, c), abs=1e-6)


def test_paper_k_is_floored_and_may_be_zero(tiny_model):
    assert [erasure.PAPER.k(n) for n in (3, 4, 5, 9, 10)] == [0, 0, 1, 1, 2]
    assert [erasure.OURS.k(n) for n in (1, 2, 3, 8)] == [1, 1, 1, 2]
    ids = tiny_model.tokenizer("a b")["input_ids"]  # 4 positions: k = 0, nothing is erased
    (result,) = erasure.erasure_metrics(
        tiny_model.model, tiny_model.tokenizer, [ids], [[True, False, False, True]], [np.arange(4.0)], erasure.PAPER
    )
    assert result["k"] == 0 and all(abs(result[m]) < 1e-12 for m in erasure.METRICS)


def _examples(tiny_model, setting):
    records = [{"sentence": s, "label": "1"} for s in SENTENCES]
    return faithfulness.prepare(tiny_model.model, tiny_model.tokenizer, records, range(len(records)), setting)


def direct_reference(model, method: str, sentence: str, target: int, steps: int) -> np.ndarray | None:
    """Word-token salience by direct Hugging Face / captum calls, where the method has a closed form."""
    if method == "exact_sig":
        return occlusion(model, (sentence,), target, "mask")
    if method == "ig":
        return captum_ig(model, sentence, target, "gausslegendre", steps)
    if method in ("grad_norm", "grad_dot_input"):
        grad, embs = direct_gradient(model, (sentence,), target)
        return np.linalg.norm(grad, axis=-1) if method == "grad_norm" else (grad * embs).sum(-1)
    return None


@pytest.mark.parametrize(
    "method, interpreter, config",
    [
        ("grad_norm", lit_sig.GradientNorm, {}),
        ("grad_dot_input", lit_sig.GradientDotInput, {}),
        ("ig", lit_sig.IntegratedGradients, {interpreters.INTERPOLATION_KEY: 3}),
        ("sig", lit_sig.SequentialIntegratedGradients, {interpreters.INTERPOLATION_KEY: 3}),
        ("exact_sig", lit_sig.SequentialIntegratedGradients, {interpreters.METHOD_KEY: interpreters.EXACT_METHOD}),
    ],
)
def test_ours_equals_the_interpreters_and_direct_references(tiny_model, method, interpreter, config):
    """The benchmark's own engine calls give the interpreters' salience, and (where the method has
    one) that of direct Hugging Face / captum calls; SIG is occlusion within its delta."""
    setting = faithfulness.Setting(erasure.OURS, "mask", 3)
    examples = _examples(tiny_model, setting)
    ranked = faithfulness.METHODS[method](faithfulness.HFScorer(tiny_model.model), examples, setting)
    inputs = [{"sentence": e.sentence, "label": tiny_model.labels[e.predicted]} for e in examples]
    expected = interpreter().run(inputs, tiny_model, None, config={**RAW, **config})
    for e, (scores, delta), result in zip(examples, ranked, expected):
        reference = np.asarray(result[models.gradients_field("sentence")].salience)
        np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())
        direct = direct_reference(tiny_model, method, e.sentence, e.predicted, 3)
        if direct is not None:
            np.testing.assert_allclose(scores, direct, rtol=1e-4, atol=1e-5 * np.abs(direct).max())
        if method == "sig":
            gaps = np.abs(scores - occlusion(tiny_model, (e.sentence,), e.predicted, "mask"))
            assert delta == pytest.approx(gaps.max(), abs=1e-5 * np.abs(scores).max())


def paper_forward(module):
    """The paper's explained score: the largest logit of each row of every position's embeddings."""
    return lambda embs: module(inputs_embeds=embs).logits.max(-1).values


def test_paper_ig_equals_captum_with_its_default_zero_baseline(tiny_model):
    captum_attr = pytest.importorskip("captum.attr")
    setting = faithfulness.Setting(erasure.PAPER, "zero", 7)
    examples = _examples(tiny_model, setting)
    ranked = faithfulness.METHODS["ig"](faithfulness.HFScorer(tiny_model.model), examples, setting)
    for e, (scores, _) in zip(examples, ranked):
        theirs = (
            captum_attr.IntegratedGradients(paper_forward(tiny_model.model))
            .attribute(e.x[None], n_steps=7, method="gausslegendre")[0]
            .sum(-1)
            .detach()
            .numpy()
        )
        assert len(scores) == len(e.ids)  # [CLS] and [SEP] are attributed too
        np.testing.assert_allclose(scores, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_paper_sig_equals_time_interpret(tiny_model):
    tint_attr = pytest.importorskip("tint.attr")
    setting = faithfulness.Setting(erasure.PAPER, "zero", 5)
    examples = _examples(tiny_model, setting)[:2]
    ranked = faithfulness.METHODS["sig"](faithfulness.HFScorer(tiny_model.model), examples, setting)
    for e, (scores, _) in zip(examples, ranked):
        theirs = (
            tint_attr.SequentialIntegratedGradients(paper_forward(tiny_model.model))
            .attribute(e.x[None], n_steps=5)[0]
            .sum(-1)
            .detach()
            .numpy()
        )
        np.testing.assert_allclose(scores, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_bootstrap_intervals():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, 400)
    values = {"a": a, "a_again": a.copy(), "shifted": a + 0.5 + rng.normal(0, 0.1, 400)}
    result = erasure.bootstrap(values, resamples=2000, seed=3)
    assert result == erasure.bootstrap(values, resamples=2000, seed=3)  # seeded
    mean_a = result["means"]["a"]
    assert mean_a["mean"] == pytest.approx(a.mean())
    # The normal approximation: half-width 1.96 sd / sqrt(n).
    half = 1.96 * a.std() / np.sqrt(len(a))
    assert mean_a["high"] - mean_a["low"] == pytest.approx(2 * half, rel=0.15)
    assert mean_a["low"] < a.mean() < mean_a["high"]
    same = result["differences"]["a - a_again"]
    assert (same["low"], same["high"], same["significant"]) == (0.0, 0.0, False)
    shift = result["differences"]["a - shifted"]
    assert (
        shift["significant"] and shift["high"] < 0 and shift["mean"] == pytest.approx(-(values["shifted"] - a).mean())
    )
    # Paired: the interval of the difference is much narrower than the means' intervals.
    assert shift["high"] - shift["low"] < 0.3 * (mean_a["high"] - mean_a["low"])


@pytest.mark.parametrize("protocol", ["ours", "paper"])
def test_runs_all_methods_and_resumes_without_redoing_work(tiny_model, data_file, tmp_path, monkeypatch, protocol):
    module, tok = tiny_model.model, tiny_model.tokenizer
    summary = faithfulness.run(args(data_file, tmp_path, "--protocol", protocol), module, tok, faithfulness.METHODS)
    assert summary["n_examples"] == 3 and set(summary["methods"]) == set(faithfulness.METHODS)
    for metrics in summary["methods"].values():
        for k in erasure.METRICS:
            assert metrics[k]["low"] <= metrics[k]["mean"] <= metrics[k]["high"]
    sig = summary["methods"]["sig"]
    positions = [len(tok(s)["input_ids"]) - (2 if protocol == "ours" else 0) for s in SENTENCES]
    assert sig["rows_per_example"] == pytest.approx(np.mean([3 * T for T in positions]))
    assert sig["forward_rows_per_example"] == pytest.approx(np.mean([T + 1 for T in positions]))
    assert "max_completeness_delta" not in summary["methods"]["grad_norm"]
    pair = "ig - sig"
    assert summary["differences"][pair]["n"] == 3
    cache = tmp_path / "cache.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 3 * len(faithfulness.METHODS)
    # Interrupted mid-write: the last record is torn; only it is redone.
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    calls = []
    methods = dict(
        faithfulness.METHODS,
        random=lambda s, examples, st: (
            calls.append(examples) or [(np.zeros(int(e.movable.sum())), None) for e in examples]
        ),
    )
    again = faithfulness.run(args(data_file, tmp_path, "--protocol", protocol), module, tok, methods)
    redone = json.loads(cache.read_text().splitlines()[-1])
    assert (redone["index"], redone["method"]) == (2, "random") and [len(c) for c in calls] == [1]
    assert again["methods"]["sig"] == sig


def test_main_writes_json_and_rejects_bad_flags(tiny_model, data_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(faithfulness, "load_model", lambda model_dir, device: (tiny_model.model, tiny_model.tokenizer))
    faithfulness.main(
        [
            "--data",
            str(data_file),
            "--steps",
            "2",
            "--methods",
            "random,grad_norm",
            "--protocol",
            "paper",
            "--baseline",
            "pad",
            "--replacement",
            "mask",
            "--resamples",
            "50",
            "--cache",
            str(tmp_path / "c.jsonl"),
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["steps"] == 2 and list(summary["methods"]) == ["random", "grad_norm"]
    assert (summary["baseline"], summary["protocol"]["replacement"], summary["target"]) == ("pad", "mask", "max")
    assert "| random |" in capsys.readouterr().out
    bad_flags = (
        ["--methods", "lime"],
        ["--steps", "0"],
        ["--limit", "-1"],
        ["--baseline", "unk"],
        ["--protocol", "paper", "--methods", "lit_ig"],
    )
    for bad in bad_flags:
        with pytest.raises(SystemExit):
            faithfulness.main(["--data", str(data_file), *bad])
    assert "accepted: grad_norm" in capsys.readouterr().err
