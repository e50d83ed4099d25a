"""docs/lm_demo.png: the LM demo's Sequence Salience on SmolLM2, in headless Chromium.

    .venv/bin/python -m benchmarks.lm_demo_screenshot [--url http://127.0.0.1:5432] [--out docs/lm_demo.png]

Start the demo first (`make lm-demo`, or `python -m demos.lm_demo`). The script selects a
built-in prompt, its response or target, clicks target tokens, picks a method and saves a
screenshot; `tests/test_browser.py` drives the page with the same functions.
"""

import argparse
import pathlib
import time

from playwright import sync_api

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
VIEWPORT = {"width": 1440, "height": 900}
MODULE = "sequence-salience-module"
PENDING = ".loading-indicator"
WHITE = "rgb(255, 255, 255)"


def open_prompt(page: sync_api.Page, base: str, prompt: str) -> None:
    """Loads the demo and selects the data table's row of `prompt`."""
    page.goto(base + "/")
    row = page.get_by_text(prompt, exact=True).first
    row.wait_for()
    page.keyboard.press("Escape")  # Closes the welcome tour, if it shows.
    row.click()


def choose_sequence(page: sync_api.Page, text: str | None = None) -> None:
    """Picks the sequence to explain: the option whose text is `text` (None: the first, the data set's target)."""
    options = page.locator(MODULE).locator(".interstitial-target-option")
    (options.first if text is None else options.filter(has_text=text).first).click()


def set_granularity(page: sync_api.Page, mode: str) -> None:
    """ "Tokens", "Words", "Sentences" or "Lines"."""
    page.locator(MODULE).locator("#granularity-selector").get_by_text(mode, exact=True).click()


def chips(page: sync_api.Page) -> sync_api.Locator:
    return page.locator(MODULE).locator(".salient-token")


def explain(page: sync_api.Page, segments: list[int], method: str, timeout_ms: float = 120_000) -> None:
    """Clicks `segments` (consecutive indices) as the target span, picks `method`, and waits for its salience."""
    for index in segments:
        chips(page).nth(index).click()
    page.locator(MODULE).locator("#method-selector").get_by_text(method, exact=True).click()
    deadline = time.monotonic() + timeout_ms / 1000
    while page.locator(MODULE).locator(PENDING).count():
        if time.monotonic() > deadline:
            raise TimeoutError(f"No {method} salience in {timeout_ms / 1000:.0f} s.")
        time.sleep(0.2)


def shown(page: sync_api.Page) -> tuple[list[str], list[float], list[str]]:
    """Each chip's text, value (its tooltip: 3 significant digits) and background colour."""
    all_chips = chips(page).all()
    texts = [chip.locator("span.pre-wrap").inner_text() for chip in all_chips]
    values = [float(chip.locator("lit-tooltip").get_attribute("content")) for chip in all_chips]
    colours = [chip.evaluate("el => getComputedStyle(el).backgroundColor") for chip in all_chips]
    return texts, values, colours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5432")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/lm_demo.png"))
    parser.add_argument("--prompt", default="Review: I expected to hate it, yet it turned out to be the best film I")
    parser.add_argument("--sequence", default=None, help="Text of the sequence to explain (default: the target).")
    parser.add_argument("--segments", default="-1", help="Comma-separated word indices of the target span.")
    parser.add_argument("--method", default="exact_sig")
    args = parser.parse_args()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(300_000)
        page.goto(args.url + "/")
        row = page.get_by_text(args.prompt).first
        row.wait_for()
        page.keyboard.press("Escape")
        row.click()
        choose_sequence(page, args.sequence)
        chips(page).first.wait_for()
        count = chips(page).count()
        explain(page, [int(i) % count for i in args.segments.split(",")], args.method, timeout_ms=600_000)
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
