"""The demos' web UI in headless Chromium: SIG from the salience module, icons, offline; the LM demo's
Sequence Salience with exact SIG drawn signed.

Needs Debian's chromium (`make install` installs it); Playwright drives it.
The page may not reach any host but the demo's: its fonts are served locally.
"""

import contextlib
import itertools
import json
import pathlib
import shutil
import urllib.parse
from collections.abc import Iterator

import pytest
from playwright import sync_api

from benchmarks import lm_demo_screenshot as lm_ui
from lit_sig.serving import lm_demo as lm_demo_lib
from tests.helpers import DATASET, LIT_SIG_INTERPRETERS, MODEL, added_input, call_ok

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}
SCREENSHOT_COPY = pathlib.Path("/tmp/lit_sig_screenshot.png")
SIG_NAME = "Sequential Integrated Gradients"
SIG_ROW = 'div.method-row[id="sequential integrated gradients"]'
TIMEOUT_MS = 120_000
SIG_TIMEOUT_MS = 60_000
WHITE_OR_NONE = ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)", "transparent")


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make install`, which installs Debian's chromium and chromium-driver.")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def _offline(browser: sync_api.Browser, demo: str) -> Iterator[tuple[sync_api.Page, list[str], list[str]]]:
    """A page that may load from `demo` only; yields it, the other URLs it asked for, its console errors."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    demo_host = urllib.parse.urlsplit(demo).netloc
    elsewhere: list[str] = []
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)

    def only_the_demo(route: sync_api.Route) -> None:
        if urllib.parse.urlsplit(route.request.url).netloc == demo_host:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_demo)
    try:
        yield page, elsewhere, errors
    finally:
        context.close()


@pytest.fixture
def offline_page(browser, demo) -> Iterator[tuple[sync_api.Page, list[str], list[str]]]:
    """A page that may load from the classifier demo only (see `_offline`)."""
    with _offline(browser, demo) as page:
        yield page


@pytest.fixture
def lm_page(browser, lm_demo) -> Iterator[tuple[sync_api.Page, list[str], list[str]]]:
    """A page that may load from the LM demo only (see `_offline`)."""
    with _offline(browser, lm_demo) as page:
        yield page


def icon_width_ratio(locator: sync_api.Locator) -> float:
    """Width over height of an icon's box: about 1 for a glyph, several for its name as text."""
    box = locator.bounding_box()
    assert box is not None and box["height"] > 0
    return box["width"] / box["height"]


def test_sig_from_the_salience_module(offline_page, demo, tmp_path):
    page, elsewhere, errors = offline_page
    example = call_ok(demo, "/get_dataset", {"dataset_name": DATASET})[0]
    sentence = example["data"]["sentence"]
    tokens = call_ok(demo, "/get_preds", {"model": MODEL, "dataset_name": DATASET}, {"inputs": [example["id"]]})[0][
        "tokens_sentence"
    ]

    page.goto(demo + "/")
    row = page.get_by_text(sentence, exact=True).first
    row.wait_for()
    page.keyboard.press("Escape")  # Closes the welcome tour, if it shows.
    row.click()

    sig = page.locator(SIG_ROW)
    sig.locator(".expansion-label").click()  # Expanding a method runs it.
    chips = sig.locator(".salient-token")
    try:
        chips.first.wait_for(timeout=SIG_TIMEOUT_MS)
    except sync_api.TimeoutError:
        pytest.fail(f"No SIG salience in the salience module; console errors: {json.dumps(errors, indent=1)}")
    sig.locator("lit-spinner").wait_for(state="detached")
    sig.scroll_into_view_if_needed()  # Within the salience module.
    screenshot = tmp_path / "lit_sig_sig.png"
    page.screenshot(path=screenshot)
    shutil.copyfile(screenshot, SCREENSHOT_COPY)

    assert [text.strip() for text in chips.locator("span.pre-wrap").all_inner_texts()] == tokens
    # The values the UI shows (each chip's tooltip) are the API's for the UI's default config: same signs, same order.
    shown = [float(chip.locator("lit-tooltip").get_attribute("content")) for chip in chips.all()]
    info = call_ok(demo, "/get_info")
    config = {k: v.get("default") for k, v in info["interpreters"][SIG_NAME]["configSpec"].items()}
    params = {"model": MODEL, "dataset_name": DATASET, "interpreter": SIG_NAME, "do_predict": "1"}
    api = call_ok(demo, "/get_interpretations", params, {"inputs": [example["id"]], "config": config})[0]
    assert_same_signs_and_order(shown, api["token_grad_sentence"]["salience"])
    colours = [chip.evaluate("el => getComputedStyle(el).backgroundColor") for chip in chips.all()]
    for colour, value in zip(colours, shown):
        if abs(value) >= 0.1 * max(map(abs, shown)):  # Every clearly salient token is coloured.
            assert colour not in WHITE_OR_NONE, (colours, shown)

    statuses = page.evaluate(
        """async () => {
            await document.fonts.ready;
            return [...document.fonts].map(f => [f.family.replace(/["']/g, ''), f.status]);
        }"""
    )
    assert ["Material Icons", "loaded"] in statuses, statuses
    assert ["Roboto", "loaded"] in statuses, statuses
    assert icon_width_ratio(sig.locator("mwc-icon.min-button")) < 1.5  # "expand_less"
    assert icon_width_ratio(page.locator("span.material-icon-outlined", has_text="smart_toy").first) < 1.5
    module = page.locator("salience-map-module").first.bounding_box()
    assert module["y"] + module["height"] <= VIEWPORT["height"], "the salience module is not on the first screen"
    assert not elsewhere, f"the page asked for other hosts: {json.dumps(elsewhere)}"
    assert not errors, f"console errors: {json.dumps(errors, indent=1)}"


def assert_same_signs_and_order(shown: list[float], api: list[float]) -> None:
    """`shown` (3 significant digits, maybe rescaled) has `api`'s signs and order, up to ties at display precision."""
    assert len(shown) == len(api)
    scale = max(map(abs, api))
    for s, a in zip(shown, api):
        if abs(a) > 1e-3 * scale:
            assert (s > 0) == (a > 0), (shown, api)
    for i, j in itertools.combinations(range(len(api)), 2):
        if abs(api[i] - api[j]) > 0.01 * scale:
            assert (shown[i] > shown[j]) == (api[i] > api[j]) or shown[i] == shown[j], (i, j, shown, api)


def test_a_captum_method_from_the_salience_module(offline_page, demo):
    """captum's FeatureAblation (bridged) renders in the salience module with the API's values."""
    page, elsewhere, errors = offline_page
    name = "captum FeatureAblation"
    example = call_ok(demo, "/get_dataset", {"dataset_name": DATASET})[1]
    page.goto(demo + "/")
    row = page.get_by_text(example["data"]["sentence"], exact=True).first
    row.wait_for()
    page.keyboard.press("Escape")  # Closes the welcome tour, if it shows.
    row.click()
    method = page.locator(f'div.method-row[id="{name.lower()}"]')
    method.locator(".expansion-label").click()  # Expanding a method runs it.
    chips = method.locator(".salient-token")
    chips.first.wait_for(timeout=SIG_TIMEOUT_MS)
    method.locator("lit-spinner").wait_for(state="detached")
    shown = [float(chip.locator("lit-tooltip").get_attribute("content")) for chip in chips.all()]
    info = call_ok(demo, "/get_info")
    config = {k: v.get("default") for k, v in info["interpreters"][name]["configSpec"].items()}
    params = {"model": MODEL, "dataset_name": DATASET, "interpreter": name, "do_predict": "1"}
    api = call_ok(demo, "/get_interpretations", params, {"inputs": [example["id"]], "config": config})[0]
    assert [t.strip() for t in chips.locator("span.pre-wrap").all_inner_texts()] == api["token_grad_sentence"]["tokens"]
    assert_same_signs_and_order(shown, api["token_grad_sentence"]["salience"])
    assert not elsewhere and not errors, (elsewhere, errors)


def test_layer_and_neuron_choices_for_lit_sigs_methods(offline_page, demo):
    """Every lit_sig method's settings show a Layer (default: embeddings) and a Neuron choice; SIG at layer 3,
    applied from there, shows [CLS] and [SEP] with the API's values for the same config."""
    page, elsewhere, errors = offline_page
    example = call_ok(demo, "/get_dataset", {"dataset_name": DATASET})[2]
    page.goto(demo + "/")
    row = page.get_by_text(example["data"]["sentence"], exact=True).first
    row.wait_for()
    page.keyboard.press("Escape")  # Closes the welcome tour, if it shows.
    row.click()
    for name in LIT_SIG_INTERPRETERS:
        method = page.locator(f'div.method-row[id="{name.lower()}"]')
        method.locator(".controls-toggle").click()
        controls = method.locator("lit-interpreter-controls")
        names = [text.strip() for text in controls.locator(".control-name").all_inner_texts()]
        assert "Layer" in names and "Neuron" in names, (name, names)
        assert control(controls, "Layer").input_value() == "embeddings"
        assert control(controls, "Neuron").input_value() == ""
        method.locator(".controls-toggle").click()  # Closes the panel.

    sig = page.locator(SIG_ROW)
    sig.locator(".controls-toggle").click()
    controls = sig.locator("lit-interpreter-controls")
    controls.locator(".control-holder", has_text="Integration method").locator("select").select_option(label="exact")
    control(controls, "Layer").fill("3")
    controls.get_by_role("button", name="Apply").click()
    sig.locator(".controls-toggle").click()
    sig.locator(".expansion-label").click()  # SIG is collapsed (no autorun): expanding runs it with the applied config.
    chips = sig.locator(".salient-token")
    chips.first.wait_for(timeout=SIG_TIMEOUT_MS)
    sig.locator("lit-spinner").wait_for(state="detached")
    info = call_ok(demo, "/get_info")
    config = {k: v.get("default") for k, v in info["interpreters"][SIG_NAME]["configSpec"].items()}
    config |= {"Integration method": "exact", "Layer": "3"}
    params = {"model": MODEL, "dataset_name": DATASET, "interpreter": SIG_NAME, "do_predict": "1"}
    api = call_ok(demo, "/get_interpretations", params, {"inputs": [example["id"]], "config": config})[0]
    tokens = [text.strip() for text in chips.locator("span.pre-wrap").all_inner_texts()]
    assert tokens == api["token_grad_sentence"]["tokens"] and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    shown = [float(chip.locator("lit-tooltip").get_attribute("content")) for chip in chips.all()]
    assert_same_signs_and_order(shown, api["token_grad_sentence"]["salience"])
    assert not elsewhere and not errors, (elsewhere, errors)


def control(controls: sync_api.Locator, name: str) -> sync_api.Locator:
    """The text input of the config key `name` in an interpreter's settings panel."""
    return controls.locator(".control-holder", has_text=name).locator("input")


def test_lm_sequence_salience_draws_exact_sig_signed(lm_page, lm_demo, tiny_lm_dir, tmp_path):
    """Prompt, sequence, a clicked target token and exact SIG, as a user would; the values are the API's and
    negative ones are drawn pink, positive ones green (LIT's own client would draw negatives white)."""
    page, elsewhere, errors = lm_page
    name = lm_demo_lib.model_name(str(tiny_lm_dir))
    example = call_ok(lm_demo, "/get_dataset", {"dataset_name": lm_demo_lib.DATASET})[3]["data"]
    data = {k: v for k, v in example.items() if not k.startswith("_")}
    params = {"model": f"_{name}_tokenizer", "dataset_name": lm_demo_lib.DATASET}
    tokens = call_ok(lm_demo, "/get_preds", params, {"inputs": [added_input(data)]})[0]["tokens"]

    lm_ui.open_prompt(page, lm_demo, data["prompt"])
    lm_ui.choose_sequence(page, data["target"])
    lm_ui.set_granularity(page, "Tokens")
    lm_ui.chips(page).first.wait_for()
    assert lm_ui.chips(page).count() == len(tokens)
    selected = len(tokens) - 2  # The target's second-to-last token.
    lm_ui.explain(page, [selected], "exact_sig", timeout_ms=TIMEOUT_MS)
    page.screenshot(path=tmp_path / "lm_demo.png")
    shutil.copyfile(tmp_path / "lm_demo.png", SCREENSHOT_COPY.with_name("lit_sig_lm_screenshot.png"))
    _, values, colours = lm_ui.shown(page)

    mask = [1 if i == selected else 0 for i in range(len(tokens))]
    params = {"model": f"_{name}_salience", "dataset_name": lm_demo_lib.DATASET}
    api = call_ok(lm_demo, "/get_preds", params, {"inputs": [added_input(data | {"target_mask": mask})]})[0]
    assert_same_signs_and_order(values, api["exact_sig"])
    scale = max(map(abs, values))
    rgb = [tuple(int(c) for c in colour.removeprefix("rgb(").removesuffix(")").split(",")) for colour in colours]
    clearly = [(v, c) for v, c in zip(values, rgb) if abs(v) >= 0.3 * scale]
    assert any(v < 0 for v, _ in clearly) and any(v > 0 for v, _ in clearly), values  # Both signs to draw.
    for value, (red, green, _) in clearly:
        assert (red > green) if value < 0 else (green > red), (value, (red, green))  # Pink (mage) / green (cyea).
    assert not elsewhere, f"the page asked for other hosts: {json.dumps(elsewhere)}"
    assert not errors, f"console errors: {json.dumps(errors, indent=1)}"
