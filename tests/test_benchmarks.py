"""The speed benchmark runs end to end on a tiny model and counts the passes each method makes."""

import json

from benchmarks import speed


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
    cases = {c["method"]: c for c in json.loads(out.read_text())["cases"]}
    # IG: n gradient rows; forward only: the input (to pick the class) and the all-baseline row.
    assert (cases[speed.IG]["rows"], cases[speed.IG]["forward_rows"]) == (n, 2)
    # SIG: n gradient rows per token; forward only: the input and each token at its baseline.
    assert (cases[speed.SIG]["rows"], cases[speed.SIG]["forward_rows"]) == (T * n, T + 1)
    # Exact SIG: T + 1 forward passes, no backward pass.
    assert (cases[speed.EXACT_SIG]["rows"], cases[speed.EXACT_SIG]["forward_rows"]) == (0, T + 1)
    assert cases[speed.EXACT_SIG]["completeness_delta"] == 0.0
    assert cases[speed.IG_BATCH]["sentences"] == 2 and cases[speed.IG_BATCH]["rows"] == 2 * n
    for case in cases.values():
        assert case["seconds"] > 0 and case["floor_seconds"] > 0
