"""The folders are the layers: each imports only what the README's layout section allows."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lit_sig"
# Layer -> the lit_sig layers it may import (besides itself and the top-level helpers).
ALLOWED = {
    "core": set(),
    "lit": {"core"},
    "models": {"core", "lit"},
    "serving": {"core", "lit", "models"},
    "cli": {"core", "lit", "models"},
}
TOP_LEVEL_HELPERS = {"storage", "render"}
FORBIDDEN_IN_CORE = ("lit_nlp", "transformers")


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module.split(".")[0] == "lit_sig":  # `from lit_sig.lit import protocol`: lit_sig.lit.protocol
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "lit_sig" else None


@pytest.mark.parametrize("layer", ALLOWED)
def test_layer_imports_only_lower_layers(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, layer
    for path in files:
        for module in imported_modules(path):
            used = layer_of(module)
            if used is None or used in TOP_LEVEL_HELPERS or used == layer:
                continue
            assert used in ALLOWED[layer], f"{path.relative_to(PACKAGE)} imports {module}"
            if layer == "models" and used == "lit":
                assert module in ("lit_sig.lit.protocol", "lit_sig.lit"), f"{path.name} imports {module}"
        if layer == "core":
            heavy = [m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN_IN_CORE]
            assert not heavy, f"core/{path.name} imports {heavy}"


def test_no_modules_at_the_top_but_the_helpers():
    """Every module lives in its layer; the old top-level aliases (explain, protocol, ...) are gone."""
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == {"__init__"} | TOP_LEVEL_HELPERS


MAX_LINES = 420  # "about 400": a module a newcomer reads at once.
README = PACKAGE.parent / "README.md"


def test_every_module_is_short_or_the_layout_section_says_why():
    """A module over MAX_LINES must be named in the README's layout section with `(N lines: why)`."""
    layout = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    long = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
        if len(path.read_text().splitlines()) > MAX_LINES
    }
    unexplained = {
        name: n for name, n in long.items() if f"`{pathlib.Path(name).name}` ({n // 100 * 100}+ lines:" not in layout
    }
    assert not unexplained, f"over {MAX_LINES} lines, no reason in the README's layout section: {unexplained}"
