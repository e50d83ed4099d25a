"""LIT's Sequence Salience models over lit_sig's interpreters, on a tiny random chat Llama (in process).

The served twin (through the HTTP server) is in test_lm_demo.py.
"""

import dataclasses

import numpy as np
import pytest
from lit_nlp.api import types as lit_types
from lit_nlp.examples.prompt_debugging import constants as pd_constants

import lit_sig
from lit_sig.lit import sequence_salience
from tests.helpers import SEQUENCE_SALIENCE_NOTEBOOK, tiny_llama, tiny_lm_tokenizer

EXAMPLE = {"prompt": "The capital of France is", "target": " Paris."}
OTHER = {"prompt": "Is this review positive or negative?", "target": " Two plus two is four."}
NOTEBOOK = {field: (getattr(lit_sig, name), config) for field, (name, config) in SEQUENCE_SALIENCE_NOTEBOOK.items()}
STEPS = {"Interpolation steps": 8}  # Fewer than the served 50: path SIG's T x 50 rows take a while even here.


@pytest.fixture(scope="module")
def lm() -> lit_sig.HFCausalLM:
    tokenizer = tiny_lm_tokenizer()
    return lit_sig.HFCausalLM(tiny_llama(tokenizer), tokenizer, device="cpu", chat_template=True, max_new_tokens=4)


@pytest.fixture(scope="module")
def every_field(lm) -> sequence_salience.SequenceSalienceModel:
    """lit_sig's own methods and captum's FeatureAblation, path IG and SIG at `STEPS`."""
    methods = {
        name: dataclasses.replace(field, steps=STEPS["Interpolation steps"]) if name in ("ig", "sig") else field
        for name, field in sequence_salience.METHODS.items()
        if name in (*NOTEBOOK, "captum_featureablation")
    }
    return sequence_salience.SequenceSalienceModel(lm, fields=list(methods), methods=methods)


def test_the_served_methods_are_the_notebooks(every_field):
    """`METHODS` (what the demo serves) runs each field with NOTEBOOK's interpreter and config (50 steps)."""
    for field, (interpreter, config) in NOTEBOOK.items():
        method = sequence_salience.METHODS[field]
        assert type(method.interpreter()) is interpreter and method.config() == config, field
    assert sequence_salience.METHODS["ig"].interpreter().parse_config({}).steps == 50
    assert every_field.method("exact_sig")[1] == NOTEBOOK["exact_sig"][1]


def tokens_of(lm, example) -> list[str]:
    return next(iter(sequence_salience.SequenceTokenizerModel(lm).predict([example])))["tokens"]


def target_start(lm, example) -> int:
    """The position of the target's first token: the target is tokenized on its own, after the prompt's tokens."""
    target_ids = lm.tokenizer(example["target"], add_special_tokens=False).input_ids
    return len(tokens_of(lm, example)) - len(target_ids)


def masked(lm, example, first: int, count: int) -> dict:
    tokens = tokens_of(lm, example)
    start = target_start(lm, example) + first
    mask = [1.0 if start <= i < start + count else 0.0 for i in range(len(tokens))]
    return example | {"target_mask": mask}


def test_specs_are_the_ones_lits_module_reads(lm, every_field):
    group = sequence_salience.model_group("tiny", lm)
    assert list(group) == ["tiny", "_tiny_salience", "_tiny_tokenizer"]
    salience = group["_tiny_salience"]
    assert salience.input_spec() == pd_constants.INPUT_SPEC | pd_constants.INPUT_SPEC_SALIENCE
    output = salience.output_spec()
    assert list(output) == ["tokens", "grad_l2", "grad_dot_input", "exact_sig"]  # The module's buttons, in order.
    assert {"sig", "ig", "adaptive_sig", "captum_kernelshap", "captum_lime"} <= set(sequence_salience.METHODS)
    assert isinstance(output["tokens"], lit_types.Tokens)
    assert all(isinstance(output[f], lit_types.TokenScores) and output[f].align == "tokens" for f in salience.fields)
    assert group["_tiny_tokenizer"].output_spec() == pd_constants.OUTPUT_SPEC_TOKENIZER
    assert set(every_field.signed_fields) == {"grad_dot_input", "exact_sig", "ig", "sig", "captum_featureablation"}
    assert "grad_l2" not in sequence_salience.signed_fields() and "exact_sig" in sequence_salience.signed_fields()
    assert not {"ig", "sig"} & set(sequence_salience.DEFAULT_FIELDS)  # The slow ones are opt-in.


def test_every_field_equals_its_interpreter_in_a_notebook(lm, every_field):
    span = (1, 2)  # The target's second and third tokens.
    example = masked(lm, EXAMPLE, *span)
    served = next(iter(every_field.predict([example])))
    tokens = tokens_of(lm, example)
    assert served["tokens"] == tokens
    last = target_start(lm, example) + span[0] + span[1] - 1
    for field, (interpreter, config) in NOTEBOOK.items():
        config = config | (STEPS if field in ("ig", "sig") else {})
        notebook = interpreter().run([example], lm, config=config)[0]["token_grad"]
        assert list(notebook.tokens) == tokens, field
        np.testing.assert_allclose(served[field], notebook.salience, rtol=1e-5, atol=1e-7, err_msg=field)
        assert served[field].shape == (len(tokens),) and np.isfinite(served[field]).all(), field
        assert not served[field][last:].any(), field  # Nothing at or after the last selected token moves F.
        assert np.abs(served[field][:last]).max() > 0, field
    # captum's FeatureAblation from the zero baseline is exact SIG (occlusion), through another code path.
    np.testing.assert_allclose(served["captum_featureablation"], served["exact_sig"], rtol=1e-4, atol=1e-6)


def test_the_mask_chooses_what_is_explained(lm, every_field):
    default = sequence_salience.SequenceSalienceModel(lm)
    first, whole = default.predict([masked(lm, EXAMPLE, 0, 1), EXAMPLE])  # No mask: the whole target.
    assert np.abs(first["exact_sig"] - whole["exact_sig"]).max() > 1e-4
    expected = default.predict([masked(lm, EXAMPLE, 0, 3)])[0]
    np.testing.assert_allclose(whole["exact_sig"], expected["exact_sig"], rtol=1e-4, atol=1e-5)


def test_prompts_of_different_lengths_in_one_call_equal_each_alone(lm):
    default = sequence_salience.SequenceSalienceModel(lm)
    examples = [masked(lm, EXAMPLE, 1, 1), masked(lm, OTHER, 0, 2)]
    together = default.predict(examples)
    for example, result in zip(examples, together):
        alone = default.predict([example])[0]
        for field in default.fields:
            np.testing.assert_allclose(result[field], alone[field], rtol=1e-4, atol=1e-6, err_msg=field)


def test_bad_fields_name_the_accepted_ones(lm):
    for fields in ([], ["grad_l2", "grad_l2"], ["lime"]):
        with pytest.raises(ValueError, match="grad_l2.*exact_sig"):
            sequence_salience.SequenceSalienceModel(lm, fields=fields)
