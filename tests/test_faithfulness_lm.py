"""The faithfulness CLI on a causal LM: erasure of the most salient prompt tokens, by direct HF calls."""

import json
import pathlib

import numpy as np
import pytest
import torch

from lit_sig import models
from lit_sig.cli import faithfulness, rows_io
from tests import helpers

PROMPTS = [
    {"prompt": "The capital of France is", "target": " Paris."},
    {"prompt": "Two plus two is four. Three plus four", "target": " is seven."},
    {"prompt": "Hello world! How are you today?"},
]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = helpers.tiny_lm_tokenizer()
    helpers.tiny_llama(tokenizer, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def direct_log_prob(model, ids: list[int], embs: torch.Tensor | None, targets: list[int]) -> float:
    """F by a direct Hugging Face call: the summed log p of `ids[j]` for j in `targets`."""
    with torch.no_grad():
        if embs is None:
            embs = model.get_input_embeddings()(torch.tensor(ids))
        log_probs = torch.log_softmax(model(inputs_embeds=embs[None]).logits[0].float(), -1)
    return float(sum(log_probs[j - 1, ids[j]] for j in targets))


def test_rows_equal_direct_erasure_and_the_summary_has_intervals(prompts, lm_dir, tmp_path):
    out = tmp_path / "faith.jsonl"
    methods = "exact_sig,grad_norm,random"
    args = ["--data", str(prompts), "--model", str(lm_dir), "--out", str(out), "--device", "cpu"]
    faithfulness.main([*args, "--methods", methods, "--max_new_tokens", "4", "--resamples", "200"])
    rows = rows_io.read_rows(out)
    assert len(rows) == 9 and {r["method"] for r in rows} == set(methods.split(","))
    lm = models.HFCausalLM.from_pretrained(str(lm_dir), device="cpu", max_new_tokens=4)
    for row in (r for r in rows if r["method"] == "exact_sig"):
        example = {"prompt": row["prompt"], "target": row["target"]}
        (p,) = lm.path_inputs([example], [None], [models.causal_lm.EMBEDDINGS_FIELD])
        ids = p.encoding.input_ids
        targets = list(range(p.encoding.prompt_length, len(ids)))
        ranked = [i for i in range(p.encoding.prompt_length) if bool(p.movable[i])]
        (result,) = lm_sig(lm, example)
        salience = np.asarray(result[models.causal_lm.GRADIENTS_FIELD].salience)
        k = max(1, round(0.2 * len(ranked)))
        top = sorted(np.array(ranked)[np.argsort(-salience[ranked], kind="stable")[:k]].tolist())
        assert row["k"] == k
        at_x = direct_log_prob(lm.model, ids, None, targets)
        embs = lm.model.get_input_embeddings()(torch.tensor(ids)).detach()
        embs[top] = 0.0  # The zero baseline.
        replaced = direct_log_prob(lm.model, ids, embs, targets)

        def without(removed):
            kept = [t for i, t in enumerate(ids) if i not in removed]
            shift = lambda j: j - sum(i < j for i in removed)  # noqa: E731
            return direct_log_prob(lm.model, kept, None, [shift(j) for j in targets])

        assert row["score"] == pytest.approx(at_x, rel=1e-5)
        assert row["replaced"] == pytest.approx(replaced - at_x, abs=1e-4)
        assert row["deleted"] == pytest.approx(without(set(top)) - at_x, abs=1e-4)
        assert row["kept"] == pytest.approx(without(set(ranked) - set(top)) - at_x, abs=1e-4)
    summary = json.loads(out.with_name(out.stem + faithfulness.SUMMARY_SUFFIX).read_text())
    for method in methods.split(","):
        replaced = summary["methods"][method]["replaced"]
        assert replaced["low"] <= replaced["mean"] <= replaced["high"]
    assert "exact_sig - random" in summary["differences"]


def lm_sig(lm, example):
    import lit_sig  # pylint: disable=import-outside-toplevel
    from lit_sig.lit import interpreters  # pylint: disable=import-outside-toplevel

    config = {
        interpreters.NORMALIZATION_KEY: False,
        interpreters.BASELINE_KEY: "zero",
        interpreters.METHOD_KEY: interpreters.EXACT_METHOD,
    }
    return lit_sig.SequentialIntegratedGradients().run([example], lm, None, config=config)


def test_resume_and_classifier_flags(prompts, lm_dir, tmp_path, capsys):
    out = tmp_path / "faith.jsonl"
    args = ["--data", str(prompts), "--model", str(lm_dir), "--out", str(out), "--device", "cpu"]
    faithfulness.main([*args, "--methods", "random", "--resamples", "50", "--limit", "2"])
    first = rows_io.read_rows(out)
    faithfulness.main([*args, "--methods", "random", "--resamples", "50"])
    rows = rows_io.read_rows(out)
    assert rows[:2] == first and len(rows) == 3
    with pytest.raises(SystemExit):
        faithfulness.main([*args, "--labels", "a,b"])
    assert "not for a causal LM" in capsys.readouterr().err
