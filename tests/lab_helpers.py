"""JupyterLab on loopback driven by Debian's headless Chromium through Playwright (never a downloaded browser).

Shared by tests/test_browser.py and tests/make_screenshots.py: start a server on a free port with a random token in a
temporary folder, open a notebook, run all cells, find the widget cells, read the PNG metadata of a figure image.
"""
import base64, contextlib, io, json, os, re, secrets, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

CHROMIUM = Path(os.environ.get("CRIASR_CHROMIUM", "/usr/bin/chromium"))   # Debian's package (apt-get install chromium)
REPO = Path(__file__).resolve().parents[1]
EXPLORE = REPO / "nbs" / "14_explore.ipynb"
# the cells that show the four widgets of the exploration chapter: name -> start of the cell's source
WIDGETS = {"landscape": "lw = LandscapeWidget(", "criteria": "cw = CriteriaWidget(", "curves": "cv = CurvesWidget(",
           "conflicts": "xw = ConflictWidget("}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def clean_copy(src:Path, dest:Path)->Path:
    "`src` with every output and execution count removed, written to `dest`."
    nb = json.loads(Path(src).read_text())
    for c in nb["cells"]:
        if c["cell_type"] == "code": c["outputs"], c["execution_count"] = [], None
    dest.write_text(json.dumps(nb, indent=1))
    return dest


def _free_port()->int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root:Path, work:Path, startup_s:float=90):
    "A JupyterLab server serving `root` on 127.0.0.1 (free port, random token); yields (url, token); killed afterwards."
    jupyter = Path(sys.executable).parent / "jupyter"
    cfg, settings = work / "jupyter_config", work / "lab_settings"
    (cfg / "labconfig").mkdir(parents=True, exist_ok=True)
    # no "Would you like to get notified about news?" toast over the notebook
    (cfg / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    # every cell stays in the page (no virtual scrolling), so all outputs can be inspected
    tracker = settings / "@jupyterlab" / "notebook-extension"; tracker.mkdir(parents=True, exist_ok=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_RUNTIME_DIR=str(work / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"), IPYTHONDIR=str(work / "ipython"), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    logf = work / "jupyterlab.log"
    log = open(logf, "w")
    proc = subprocess.Popen([str(jupyter), "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + startup_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2); break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start (see {logf}):\n" + logf.read_text()[-3000:])
                time.sleep(0.5)
        yield url, token
    finally:
        with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); proc.wait(10)
        log.close()


def api(url:str, token:str, path:str, method:str="GET"):
    "One call of the Jupyter server's REST API."
    req = urllib.request.Request(f"{url}{path}?token={token}", method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def open_notebook(page, url:str, token:str, name:str):
    "Open `name` in Lab and wait for an idle kernel (else 'Run All' is silently dropped)."
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\|\s*Idle")).first.wait_for(timeout=120_000)


def hide_left_sidebar(page):
    "More room for the notebook: collapse the file browser."
    if page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").count():
        page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").first.click()


def run_all(page, timeout_s:float=540):
    "Run → Run All Cells, then wait until every code cell has an execution count (a failing cell stops the wait with its error)."
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state = page.evaluate("""() => {
            const ps = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
            const err = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], .jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]')]
                        .map(e => e.textContent).filter(t => t.includes('Traceback') || t.includes('Error'));
            return {done: ps.filter(p => /\\[\\d+\\]/.test(p)).length, total: ps.length, busy: ps.some(p => p.includes('*')), err: err.slice(0, 1)};
        }""")
        errors = [e for e in state["err"] if "Traceback" in e]
        if errors: raise AssertionError("a cell failed in JupyterLab:\n" + errors[0][-3000:])
        if state["total"] and state["done"] == state["total"] and not state["busy"]: return state
        time.sleep(1)
    raise AssertionError(f"Run All did not finish in {timeout_s} s: {state}")


def widget_cell(page, name:str):
    "The code cell that shows widget `name` (see `WIDGETS`)."
    return page.locator(".jp-Notebook .jp-CodeCell", has_text=WIDGETS[name]).first


def figure_image(cell):
    "The figure image output of a widget cell (the PNG after the controls)."
    return cell.locator(".jp-OutputArea-output img").last


def png_text(src:str)->dict:
    "The tEXt chunks of a PNG given as a data: URI (the figure's `criasr_min_font_pt`, `criasr_dpi`)."
    from PIL import Image
    data = base64.b64decode(src.split(",", 1)[1])
    im = Image.open(io.BytesIO(data)); im.load()
    return dict(im.info)


def rendered_min_font_pt(page, img)->float:
    "The smallest text of the figure as the browser shows it, in CSS points: font pt × dpi/96 × displayed/natural width."
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    info = png_text(img.get_attribute("src"))
    shown, natural = img.evaluate("i => [i.getBoundingClientRect().width, i.naturalWidth]")
    return float(info["criasr_min_font_pt"]) * float(info["criasr_dpi"]) / 96 * shown / natural


def save(page):
    "Save the notebook (Ctrl+S) and wait until the tab is no longer dirty."
    page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.jp-NotebookPanel.jp-mod-dirty, .lm-TabBar-tab.jp-mod-dirty')", timeout=60_000)
