"""Real-browser test: JupyterLab on loopback + Debian's headless Chromium (Playwright, no browser download).

Runs a clean copy of the exploration notebook in JupyterLab (Run All), then checks what a person sees:
every widget figure's smallest text is at least 9 pt as displayed; the smoothing slider keeps its width; moving the
`t` slider redraws the landscape; *Refresh* works after Run All; and after saving, shutting the kernel down and
reopening, every widget cell still shows its figure as an image (and nbconvert's HTML holds them too).
Needs /usr/bin/chromium (`apt-get install -y chromium`); skipped without it unless the environment variable CI is set.
"""
import json, os, re, subprocess, sys, time
from pathlib import Path
import pytest

from lab_helpers import (CHROMIUM, CHROMIUM_ARGS, EXPLORE, WIDGETS, clean_copy, jupyterlab, api, open_notebook, hide_left_sidebar,
                         run_all, widget_cell, figure_image, rendered_min_font_pt, save)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]
NB = "explore_browser.ipynb"


def _need(cond:bool, why:str):
    "Skip (or fail under CI) when a requirement is missing."
    if cond: return
    if os.environ.get("CI"): pytest.fail(f"{why} (CI is set, so this is an error)")
    pytest.skip(why)


@pytest.fixture
def lab(tmp_path):
    _need(CHROMIUM.exists(), f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`)")
    _need((Path(sys.executable).parent / "jupyter").exists(), "jupyter not found: install the dev requirements (jupyterlab)")
    try: import playwright.sync_api  # noqa: F401
    except ImportError: _need(False, "the Python package playwright is not installed")
    root = tmp_path / "root"; root.mkdir()
    clean_copy(EXPLORE, root / NB)
    with jupyterlab(root, tmp_path) as (url, token): yield url, token, root


def test_explore_widgets_read_well_and_survive_saving(lab, tmp_path):
    from playwright.sync_api import sync_playwright
    url, token, root = lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1100})
            page.set_default_timeout(60_000)
            open_notebook(page, url, token, NB)
            hide_left_sidebar(page)
            run_all(page)

            # every widget: controls, then its figure as an image whose smallest text shows at >= 9 pt
            for name in WIDGETS:
                cell = widget_cell(page, name)
                assert cell.locator(".jupyter-widgets").count(), f"{name}: no widget view"
                pt = rendered_min_font_pt(page, figure_image(cell))
                assert pt >= 9 - 1e-6, f"{name}: smallest figure text shows at {pt:.2f} pt"
                status = cell.locator(".widget-html-content").all_inner_texts()
                assert not any("Error" in s for s in status), f"{name}: {status}"

            # the curves widget: the smoothing slider is never squeezed; Refresh works after Run All
            curves = widget_cell(page, "curves")
            slider = curves.locator(".widget-slider", has=page.locator(".widget-label", has_text=re.compile(r"^smoothing$")))
            assert slider.bounding_box()["width"] >= 250
            before = figure_image(curves).get_attribute("src")
            curves.locator("button", has_text="Refresh").click()
            time.sleep(3)
            assert not any("Error" in s for s in curves.locator(".widget-html-content").all_inner_texts())
            assert figure_image(curves).get_attribute("src")                         # still drawn

            # the landscape: one keyboard step of the t slider redraws the figure in place
            land = widget_cell(page, "landscape")
            t = land.locator(".widget-slider", has=page.locator(".widget-label", has_text=re.compile(r"^t$")))
            src0, readout = figure_image(land).get_attribute("src"), t.locator(".widget-readout").inner_text()
            t.locator(".noUi-handle").focus(); page.keyboard.press("ArrowRight")
            deadline = time.time() + 90
            while figure_image(land).get_attribute("src") == src0 and time.time() < deadline: time.sleep(0.5)
            assert t.locator(".widget-readout").inner_text() != readout, "the slider did not move"
            assert figure_image(land).get_attribute("src") != src0, "the figure did not change after the slider moved"

            # save, shut the kernel down, reopen: the widgets cannot come back, their figures do
            save(page)
            for s in api(url, token, "/api/sessions"): api(url, token, f"/api/sessions/{s['id']}", "DELETE")
            page.reload()
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
            for name in WIDGETS:
                img = figure_image(widget_cell(page, name))
                img.wait_for(timeout=60_000)
                page.wait_for_function("img => img.complete && img.naturalWidth > 300", arg=img.element_handle())
        finally:
            browser.close()

    saved = json.loads((root / NB).read_text())
    for name, start in WIDGETS.items():
        cell = next(c for c in saved["cells"] if c["cell_type"] == "code" and start in "".join(c["source"]))
        kinds = [set(o.get("data", {})) for o in cell["outputs"]]
        assert any("image/png" in k for k in kinds), f"{name}: the saved cell holds no image ({kinds})"
    html = tmp_path / "explore.html"
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(root / NB), "--output", str(html)],
                   check=True, capture_output=True, timeout=300)
    assert html.read_text().count('src="data:image/png;base64,') >= len(WIDGETS) + 3   # the widgets' figures and the static plots
