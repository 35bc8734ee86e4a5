"""Regenerate the README screenshots of the exploration widgets (docs/img/explore_*.png) in a real browser.

    python tests/make_screenshots.py            # about three minutes on one CPU core

Runs a clean copy of nbs/14_explore.ipynb in JupyterLab on loopback with Debian's headless Chromium (the same set-up
as tests/test_browser.py), then photographs the output of each widget cell (its controls and its figure). Each PNG is
reduced to a 256-colour palette (and scaled down if needed) so that it stays under 300 KB.
"""
import argparse, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_helpers import (CHROMIUM, CHROMIUM_ARGS, EXPLORE, REPO, WIDGETS, clean_copy, jupyterlab, open_notebook, hide_left_sidebar,
                         run_all, widget_cell, figure_image)

MAX_BYTES = 300_000


def shrink(src:Path, dest:Path, max_bytes:int=MAX_BYTES)->Path:
    "`src` as a 256-colour PNG at `dest`, scaled down by 10% steps until it is under `max_bytes`."
    from PIL import Image
    im = Image.open(src).convert("RGB")
    scale = 1.0
    while True:
        w, h = round(im.width * scale), round(im.height * scale)
        small = im if scale == 1.0 else im.resize((w, h), Image.LANCZOS)
        small.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dest, optimize=True)
        if dest.stat().st_size < max_bytes or scale < 0.3: return dest
        scale *= 0.9


def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "img"), help="folder for the PNG files")
    a = ap.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"make_screenshots: {CHROMIUM} not found; install Debian's chromium (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d); root = d / "root"; root.mkdir()
        clean_copy(EXPLORE, root / "explore.ipynb")
        with jupyterlab(root, d) as (url, token), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
            try:
                page = browser.new_page(viewport={"width": 1450, "height": 2600})   # tall: a whole widget output fits on screen
                page.set_default_timeout(60_000)
                open_notebook(page, url, token, "explore.ipynb")
                hide_left_sidebar(page)
                run_all(page)
                conflicts = widget_cell(page, "conflicts")            # the notebook's checks left it elsewhere: back to the paper's partition
                src = figure_image(conflicts).get_attribute("src")
                conflicts.locator("select").first.select_option("cria")
                conflicts.locator("input[type=checkbox]").first.check()
                last, still = src, 0
                for _ in range(180):                                   # each change redraws (a new image element): wait until it settles
                    now = figure_image(conflicts).get_attribute("src")
                    still = still + 1 if now == last and now != src else 0; last = now
                    if still >= 4: break
                    page.wait_for_timeout(1000)
                for name in WIDGETS:
                    cell = widget_cell(page, name)
                    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=figure_image(cell).element_handle())
                    raw, area = d / f"{name}.png", cell.locator(".jp-Cell-outputWrapper")
                    area.evaluate("e => e.scrollIntoView({block: 'start'})")
                    page.wait_for_timeout(500)
                    area.screenshot(path=str(raw))
                    f = shrink(raw, out / f"explore_{name}.png")
                    print(f"{f}: {f.stat().st_size // 1024} KB")
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
