"""Real-browser test: JupyterLab on loopback + Debian's headless Chromium (Playwright, no browser download).

Opens a copy of the exploration notebook (its cells up to the loss-landscape widget), runs it, moves the `t`
slider with the keyboard and checks that the rendered plot changed. Needs /usr/bin/chromium
(`apt-get install -y chromium`); skipped without it unless the environment variable CI is set.
"""
import json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

CHROMIUM = Path(os.environ.get("CRIASR_CHROMIUM", "/usr/bin/chromium"))   # Debian's package; never a downloaded browser
REPO = Path(__file__).resolve().parents[1]
NB = REPO / "nbs" / "11_explore.ipynb"
LAST_CELL = re.compile(r"^lw = LandscapeWidget\(", re.M)   # the copy ends with the cell that shows this widget


def _need(cond:bool, why:str):
    "Skip (or fail under CI) when a requirement is missing."
    if cond: return
    if os.environ.get("CI"): pytest.fail(f"{why} (CI is set, so this is an error)")
    pytest.skip(why)

def _free_port()->int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _test_notebook(dest:Path)->Path:
    "The exploration notebook's cells up to the loss-landscape widget, outputs cleared."
    nb = json.loads(NB.read_text())
    cells = []
    for c in nb["cells"]:
        cells.append(c)
        if c["cell_type"] == "code" and LAST_CELL.search("".join(c["source"])): break
    else: raise AssertionError(f"{NB} has no cell matching {LAST_CELL.pattern!r}; update tests/test_browser.py")
    for c in cells:
        if c["cell_type"] == "code": c["outputs"], c["execution_count"] = [], None
    nb["cells"] = cells
    dest.write_text(json.dumps(nb, indent=1))
    return dest

@pytest.fixture
def jupyterlab(tmp_path):
    "A JupyterLab server on 127.0.0.1 (free port, random token) serving a temp folder; killed afterwards."
    _need(CHROMIUM.exists(), f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`)")
    jupyter = Path(sys.executable).parent / "jupyter"
    _need(jupyter.exists(), f"{jupyter} not found: install the dev requirements (jupyterlab)")
    root = tmp_path / "root"; root.mkdir()
    _test_notebook(root / "explore_browser.ipynb")
    cfg = tmp_path / "jupyter_config"; (cfg / "labconfig").mkdir(parents=True)
    # no "Would you like to get notified about news?" toast over the notebook
    (cfg / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               IPYTHONDIR=str(tmp_path / "ipython"), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen([str(jupyter), "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2); break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"JupyterLab did not start (see {tmp_path / 'jupyterlab.log'}):\n"
                                         + (tmp_path / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url, token
    finally:
        try: os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); proc.wait(10)
        log.close()

def test_landscape_slider_redraws_in_jupyterlab(jupyterlab, tmp_path):
    try: from playwright.sync_api import sync_playwright
    except ImportError: _need(False, "the Python package playwright is not installed")
    url, token = jupyterlab
    shot = tmp_path / "explore_landscape_after_slider.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"], timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/lab/tree/explore_browser.ipynb?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
            # the kernel must be up (status bar "… | Idle"), else "Run All Cells" is silently dropped
            page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\|\s*Idle")).first.wait_for(timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            page.locator(".jp-InputPrompt", has_text=re.compile(r"\[\d+\]")).first.wait_for(timeout=120_000)
            # the widget: a row of sliders and the PNG of the landscapes
            slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=re.compile(r"^t$")))
            slider.wait_for(timeout=240_000)
            plot = page.locator(".jp-OutputArea-output img.widget-image").last
            plot.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=plot.element_handle())
            readout = slider.locator(".widget-readout")
            before_value = readout.inner_text()
            before = plot.screenshot()
            handle = slider.locator(".noUi-handle")
            handle.focus()
            page.keyboard.press("ArrowRight")
            deadline, after = time.time() + 90, before
            while after == before and time.time() < deadline:
                time.sleep(0.5)
                after = plot.screenshot()
            page.locator(".jp-OutputArea-output", has=slider).screenshot(path=str(shot))
            print(f"\nscreenshot of the widget after moving the slider: {shot}")
            assert readout.inner_text() != before_value, "the slider's readout did not move"
            assert after != before, "the plot did not change after the slider moved (see the screenshot)"
        finally:
            browser.close()
