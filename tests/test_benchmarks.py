"""The speed benchmark and the GPU check run end to end on a tiny CPU model; speed counts each method's passes."""

import json

import pytest

from benchmarks import gpu_check, speed


def test_speed_counts_the_rows_of_each_method(tmp_path):
    out = tmp_path / "speed.json"
    T, n = 4, 3
    speed.main(
        [
            "--shape",
            "tiny",
            "--tokens",
            str(T),
            "--steps",
            str(n),
            "--memory_tokens",
            "0",
            "--repeats",
            "1",
            "--ig_batch",
            "2",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert report["trimmed_last_layer"]  # The wrapper's default; the floor runs the full model.
    cases = {c["method"]: c for c in report["cases"]}
    # IG: n gradient rows; forward only: the input (to pick the class) and the all-baseline row.
    assert (cases[speed.IG]["rows"], cases[speed.IG]["forward_rows"]) == (n, 2)
    # SIG: n gradient rows per token; forward only: the input and each token at its baseline.
    assert (cases[speed.SIG]["rows"], cases[speed.SIG]["forward_rows"]) == (T * n, T + 1)
    # Exact SIG: T + 1 forward passes, no backward pass.
    assert (cases[speed.EXACT_SIG]["rows"], cases[speed.EXACT_SIG]["forward_rows"]) == (0, T + 1)
    assert cases[speed.EXACT_SIG]["completeness_delta"] == 0.0
    assert cases[speed.IG_BATCH]["sentences"] == 2 and cases[speed.IG_BATCH]["rows"] == 2 * n
    # Adaptive SIG: the input, each token at 0 and 1/2, then two rows per halved panel; all with gradients.
    adaptive = cases[speed.ADAPTIVE_SIG]
    assert adaptive["forward_rows"] == 0 and adaptive["rows"] >= 2 * T + 1 and (adaptive["rows"] - 1) % 2 == 0
    assert adaptive["gradient_passes"][0] == min(2 * T + 1, adaptive["rows_per_pass"])
    assert sum(adaptive["gradient_passes"]) == adaptive["rows"]
    assert cases[speed.SIG]["adaptive_rows"] == adaptive["rows"]
    for case in cases.values():
        assert case["seconds"] > 0 and case["floor_seconds"] > 0


def test_gpu_check_runs_on_the_cpu_and_reports_everything(tmp_path):
    """`gpu_check --device cpu --quick` is the GPU check's code path, so CI keeps it working."""
    out, profiles = tmp_path / "gpu_check.json", tmp_path / "profiles"
    gpu_check.main(
        ["--device", "cpu", "--quick", "--json", str(out), "--profile_dir", str(profiles), "--compile_shapes", "tiny"]
        + ["--compile_precisions", "float32"]  # A compile takes a minute here; the GPU check compiles bfloat16 too.
    )
    report = json.loads(out.read_text())
    assert report["errors"] == []
    for method, numbers in report["agreement"].items():
        assert numbers["device_vs_cpu_max_relative"] is None, method  # --device cpu: no second device.
        # float32 against the same weights in float64: rounding only, but not none. Exact SIG's salience are
        # differences of logits, so their error is the logits' rounding over the smaller salience scale.
        assert 0 < numbers["device_vs_float64_max_relative"] < (1e-2 if method == "exact_sig" else 1e-5), method
        assert numbers["bf16_vs_fp32_max_relative"] < 0.1, method
    assert report["agreement"]["exact_sig"]["bf16_completeness_delta"] == 0.0
    cases = report["speed"]
    assert {(c["precision"], c["method"]) for c in cases} >= {
        ("float32", speed.SIG),
        ("bfloat16", speed.SIG),
        ("float32", speed.IG_BATCH),
    }
    for case in cases:
        assert sum(case["gradient_passes"]) == case["rows"] and case["ratio"] > 0
        assert case["trimmed_last_layer"]
    sig_cases = [c for c in cases if c["method"] == speed.SIG]
    for case in sig_cases:  # The same case through the full model, against the same floor.
        assert case["full_last_layer_ratio"] == case["full_last_layer_seconds"] / case["floor_seconds"] > 0
    assert sig_cases
    compiled = [c for c in cases if "compiled_seconds" in c]  # Every float32 SIG case, beside eager.
    assert [(c["precision"], c["method"]) for c in compiled] == [("float32", speed.SIG)]
    assert compiled[0]["compiled_vs_eager_max_relative"] < 1e-5
    assert all(c["compiled_ratio"] > 0 and "compiled_speedup_over_time_interpret" in c for c in compiled)
    assert [(p["shape"], p["precision"]) for p in report["profiles"]] == [("tiny", "float32"), ("tiny", "bfloat16")]
    text = (profiles / "profile_tiny_bfloat16.txt").read_text()
    assert text.startswith("SIG, T=8, n=5, bfloat16") and "gradient passes: [" in text and "aten::" in text


def test_lm_speed_counts_rows_and_agrees_with_captum(tmp_path):
    from benchmarks import lm_speed  # pylint: disable=import-outside-toplevel

    out = tmp_path / "lm_speed.json"
    steps = 4
    report = lm_speed.main(
        ["--model", "random:tiny", "--steps", str(steps), "--sig_steps", "2", "--target_tokens", "3"]
        + ["--peers", "captum", "--device", "cpu", "--json", str(out)]
    )
    assert json.loads(out.read_text())["cases"] == json.loads(json.dumps(report["cases"]))
    cases = {c["method"]: c for c in report["cases"]}
    # IG: n gradient rows; forward only: the input and the all-baseline row.
    assert (cases["ig"]["rows"], cases["ig"]["forward_rows"]) == (steps, 2)
    # IG with rows from their first change (after the template's fixed tokens) and whole: the same numbers.
    fixed, whole = (
        next(c for c in report["cases"] if c.get("prefix_gradients") is f and c["method"] == "ig")
        for f in (True, False)
    )
    assert (fixed["prefix_gradient_rows"], whole["prefix_gradient_rows"]) == (steps, 0)
    assert report["ig_prefix_gradients"]["relative_to_largest"] < 1e-5
    assert 0 < report["ig_prefix_gradients"]["positions_prefix_over_whole"] < 1
    # Path SIG: token i's rows start at i, so fewer positions still.
    assert report["sig_prefix_gradients"]["relative_to_largest"] < 1e-5
    sig_share = report["sig_prefix_gradients"]["positions_prefix_over_whole"]
    assert 0 < sig_share < report["ig_prefix_gradients"]["positions_prefix_over_whole"]
    movable = sum(s != 0 for s in cases["exact_sig"]["salience"])
    assert cases["exact_sig"]["rows"] == 0 and cases["exact_sig"]["forward_rows"] >= movable + 1
    # Exact SIG with the prompt's keys/values reused and with whole rows: the same rows, the same numbers, less work.
    reuse, plain = (next(c for c in report["cases"] if c.get("prefix_reuse") is flag) for flag in (True, False))
    assert reuse["prefix_rows_reused"] == reuse["forward_rows"] == plain["prefix_rows_plain"] == plain["forward_rows"]
    assert plain["prefix_rows_reused"] == 0 and reuse["prefix_rows_plain"] == 0
    assert report["exact_sig_reuse"]["relative_to_largest"] < 1e-5
    assert 0 < report["exact_sig_reuse"]["positions_reuse_over_plain"] < 1
    captum_ig = next(c for m, c in cases.items() if "LayerIntegratedGradients" in m)
    assert captum_ig["rows"] == steps * report["target_tokens"]
    assert captum_ig["agreement"]["relative_to_largest"] < 1e-4
    ablation = next(c for m, c in cases.items() if "FeatureAblation" in m)
    assert ablation["agreement"]["relative_to_largest"] < 1e-4


def test_lm_speed_refuses_inseq_without_a_local_model_before_running(capsys):
    from benchmarks import lm_speed  # pylint: disable=import-outside-toplevel

    with pytest.raises(SystemExit):
        lm_speed.main(["--model", "random:tiny", "--peers", "inseq", "--device", "cpu"])
    assert (
        "inseq loads the model itself from a local folder; --model 'random:tiny' is not one" in capsys.readouterr().err
    )


def test_lm_long_prompt_resumes_exact_sig_from_its_checkpoint(tmp_path):
    from benchmarks import lm_long_prompt  # pylint: disable=import-outside-toplevel

    args = ["--model", "random:tiny", "--tokens", "160", "--device", "cpu"]
    whole = lm_long_prompt.main(args)
    rows = tmp_path / "long.rows"
    stopped = lm_long_prompt.main([*args, "--checkpoint", str(rows), "--max_rows", "10"])
    assert not stopped["finished"] and stopped["rows_scored_this_run"] == stopped["rows_done"] >= 10
    resumed = lm_long_prompt.main([*args, "--checkpoint", str(rows)])
    assert resumed["finished"] and resumed["checkpoint_runs"] == 2
    assert resumed["rows_from_checkpoint"] == stopped["rows_done"]
    assert resumed["rows_scored_this_run"] == whole["rows_done"] - stopped["rows_done"]
    assert 140 < resumed["tokens"] <= 160 and resumed["completeness_delta"] == 0.0  # Cut at a word to fit.
    assert [t[:2] for t in resumed["top_tokens"]] == [t[:2] for t in whole["top_tokens"]]
    scale = max(abs(t[2]) for t in whole["top_tokens"])
    for ours, alone in zip(resumed["top_tokens"], whole["top_tokens"]):
        assert abs(ours[2] - alone[2]) <= 1e-5 * scale
    log = json.loads((tmp_path / "long.rows.runs.json").read_text())
    assert [r["rows_written"] for r in log] == [stopped["rows_done"], resumed["rows_scored_this_run"]]
