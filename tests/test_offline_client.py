"""The served LIT client: Sequence Salience's signed colour map patched for more fields than `grad_dot_input`."""

import json

import pytest

from lit_sig.serving import offline_client

SIGNED = ("exact_sig", "ig")


@pytest.fixture(scope="module")
def lit_main_js() -> str:
    return (offline_client.LIT_CLIENT_ROOT / offline_client.MAIN_JS).read_text(encoding="utf-8")


def test_rewrite_changes_only_the_colour_map_test(lit_main_js):
    patched = offline_client.rewrite_main_js(lit_main_js, SIGNED)
    test = '["exact_sig", "grad_dot_input", "ig"].includes(this.selectedSalienceMethod)'
    assert patched.count(test) == 1
    assert '"grad_dot_input"===this.selectedSalienceMethod' not in patched
    before, after = patched.split(test)
    original = lit_main_js.split('"grad_dot_input"===this.selectedSalienceMethod')
    assert [before, after] == original
    # The patched test chooses between the module's two colour maps, as LIT's did.
    assert after.startswith("?this.signedSalienceCmap:this.unsignedSalienceCmap")


def test_rewrite_refuses_a_client_it_does_not_know():
    with pytest.raises(ValueError, match="LIT 1.3"):
        offline_client.rewrite_main_js("console.log('another build')", SIGNED)


def test_names_are_written_as_javascript_strings(lit_main_js):
    patched = offline_client.rewrite_main_js(lit_main_js, ('a"b', "c\\d"))
    assert json.dumps(['a"b', "c\\d", "grad_dot_input"]) + ".includes(this.selectedSalienceMethod)" in patched


def test_localize_patches_main_js_only_when_asked(tmp_path):
    plain = offline_client.localize(cache_dir=tmp_path, faces=())
    signed = offline_client.localize(cache_dir=tmp_path, faces=(), signed_salience_fields=SIGNED)
    assert plain != signed
    assert (plain / offline_client.MAIN_JS).is_symlink()  # LIT's own file.
    main_js = signed / offline_client.MAIN_JS
    assert not main_js.is_symlink() and "exact_sig" in main_js.read_text(encoding="utf-8")
    assert (signed / "main.js.map").is_symlink() and (signed / "static" / "favicon.png").is_symlink()
    assert "fonts.googleapis.com" not in (signed / offline_client.INDEX_FILE).read_text(encoding="utf-8")
    # Cached: the same inputs give the same folder, in any order.
    assert offline_client.localize(cache_dir=tmp_path, faces=(), signed_salience_fields=SIGNED[::-1]) == signed


def test_a_cached_client_whose_links_dangle_is_rebuilt(tmp_path):
    """A copy built through a path that has since gone (another checkout's venv link) serves 404s: rebuilt."""
    built = offline_client.localize(cache_dir=tmp_path, faces=())
    link = built / "main.js.map"
    link.unlink()
    link.symlink_to(tmp_path / "gone" / "main.js.map")
    assert not link.exists()
    again = offline_client.localize(cache_dir=tmp_path, faces=())
    assert again == built and (again / "main.js.map").exists()
    assert (again / offline_client.MAIN_JS).resolve() == (offline_client.LIT_CLIENT_ROOT / "main.js").resolve()
