"""One name per method: the registry is what the command lines, benchmarks and demo use."""

import json
import pathlib

import pytest

from benchmarks import faithfulness as faithfulness_benchmark
from benchmarks import gpu_check, readme_figure, speed
from lit_sig.cli import explain, faithfulness
from lit_sig.core import erasure
from lit_sig.lit import captum_bridge, interpreters, registry
from lit_sig.serving import demo

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_every_method_has_one_name_a_ui_name_and_a_valid_config():
    names = registry.list_methods()
    assert names[:6] == ["sig", "exact_sig", "adaptive_sig", "ig", "grad_norm", "grad_dot_input"]
    assert len({registry.display_name(n) for n in names}) == len(names)
    assert {n for n in names if n.startswith("captum_")} == {registry.captum_name(m) for m in captum_bridge.METHODS}
    for name in names:
        method = registry.get(name)
        assert method.name == name and method.description
        interpreter, config = registry.interpreter_and_config(name, 5, "pad", True)
        assert config[interpreters.NORMALIZATION_KEY] is True
        assert config.get(method.steps_key) == (5 if method.steps_key else None)
        assert config.get(interpreters.BASELINE_KEY) == ("pad" if method.takes_baseline else None)
    exact = registry.interpreter_and_config("exact_sig", None, "mask", False)[0]
    assert exact.parse_config(registry.get("exact_sig").config(None, "mask", False)).method == "exact"
    adaptive = registry.get("adaptive_sig")
    assert adaptive.make().parse_config(adaptive.config(None, "mask", False)).adaptive
    with pytest.raises(ValueError, match="Unknown method 'shap'; accepted: sig, exact_sig"):
        registry.get("shap")


def test_the_command_lines_benchmarks_and_demo_take_the_registry_names():
    names = set(registry.list_methods())
    assert set(explain._parser()._option_string_actions["--method"].choices) == names
    assert set(faithfulness.METHODS) == names | {erasure.RANDOM}
    assert set(faithfulness_benchmark.METHODS) <= names | {erasure.RANDOM}
    assert {speed.IG, speed.SIG, speed.EXACT_SIG} <= names and set(gpu_check.PATH_METHODS) <= names
    assert set(readme_figure.METHODS.values()) <= names
    served = demo.lit_sig_interpreters()
    assert set(served) == {registry.display_name(n) for n in ("grad_norm", "grad_dot_input", "ig", "sig")} | {
        registry.display_name(n) for n in names if n.startswith(registry.CAPTUM_PREFIX)
    }


def test_names_from_before_the_registry_still_read():
    assert registry.canonical("sequential_integrated_gradients") == "sig"
    assert registry.canonical("exact_sequential_integrated_gradients") == "exact_sig"
    assert registry.canonical("captum:KernelShap") == "captum_kernelshap"
    assert registry.canonical("sig") == "sig" and registry.canonical("random") == "random"
    for path in RESULTS.glob("*.json"):  # The committed results use the registry's names.
        report = json.loads(path.read_text())
        methods = set(report.get("methods", {})) | {c["method"] for c in report.get("cases", report.get("speed", []))}
        methods = {m for m in methods if not m.startswith(("captum ", "inseq "))}  # lm_speed's peers, not ours.
        assert methods <= set(registry.METHODS) | {erasure.RANDOM, speed.IG_BATCH, faithfulness_benchmark.LIT_IG}, path
