"""Run chapter notebooks in place and keep their outputs (figures, tables) so a reader sees results: `./run.sh outputs`.

Each notebook runs in its own process, in its own folder (`nbs/`), with `OMP_NUM_THREADS=1`, through execnb's `CaptureShell` exactly
as `nbdev_test` runs it (same directive handling; cells flagged with a `tst_flags` flag such as `#| slow` are skipped
and keep no output). Outputs that change from run to run without meaning anything are dropped: widget views (their
ids are random; the text and the PNG the explorers draw stay) and widget state, progress bars on stderr, memory addresses, execution
counts. A display that a later cell updates (an explorer redrawing its figure) shows its last state, as in Jupyter.
Figures are stored small: at most 1000 px wide (about what a notebook viewer shows), a 256-colour palette on white.
A cell marked with Quarto's `#| output: false` runs but keeps no output (for a figure a cell above already shows).
Then the notebook is cleaned as `nbdev_clean` cleans it, so rendering twice gives no diff. A notebook whose run
fails is left unchanged and the command fails.

    python nbs/render_outputs.py [notebook ...]    # default: the chapters in CHAPTERS
"""
from __future__ import annotations
import os, re, subprocess, sys, time
from pathlib import Path

NBS = Path(__file__).resolve().parent
CHAPTERS = ["01_archs.ipynb", "03_criteria.ipynb", "04_cria.ipynb", "06_data.ipynb", "08_metrics.ipynb", "14_explore.ipynb"]
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")
_progress = re.compile(r"\d+%\|.*\||\d+(\.\d+)?(it/s|s/it)\]")   # a tqdm bar: '40%|████  | 2/5 [00:01<00:02, 1.9it/s]'
_address = re.compile(r" at 0x[0-9a-fA-F]+")
MAX_WIDTH = 1000                                               # px of a stored figure

def small_png(b64:str)->str:
    "A base64 PNG flattened on white, at most `MAX_WIDTH` px wide, as a 256-colour palette PNG (deterministic)."
    import base64, io
    from PIL import Image
    im = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGBA")
    flat = Image.new("RGB", im.size, "white"); flat.paste(im, mask=im.getchannel("A"))
    if flat.width > MAX_WIDTH: flat = flat.resize((MAX_WIDTH, round(flat.height * MAX_WIDTH / flat.width)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    flat.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode() + "\n"

def _lines(text)->list: return text if isinstance(text, list) else text.splitlines(True)

def tidy_outputs(outputs:list)->list:
    "The outputs that mean something, without run-to-run noise (widget views, progress bars, memory addresses)."
    out = []
    for o in outputs:
        o = dict(o)
        if o["output_type"] == "stream":
            # a progress bar redraws with '\r': keep only what is not a bar
            kept = [l for l in "".join(_lines(o["text"])).replace("\r", "\n").splitlines(True)
                    if l.strip() and not _progress.search(l)]
            if not kept: continue
            o["text"] = [_address.sub("", l) for l in kept]
        elif o["output_type"] in ("display_data", "execute_result"):
            data = {k: v for k, v in o["data"].items() if k not in WIDGET_MIMES}
            if not data: continue
            o["data"] = {k: ([_address.sub("", l) for l in _lines(v)] if k.startswith("text/") else
                             small_png("".join(v)) if k == "image/png" else v) for k, v in data.items()}
            o["metadata"] = {}                                   # sizes of the original image no longer apply
            if "execution_count" in o: o["execution_count"] = None
        out.append(o)
    return out

def _keep_display_ids(o, fmt):
    "execnb's `_out_nb`, with each display output tagged with its display id and whether it is an update."
    res = _out_nb(o, fmt)
    for r, x in zip([r for r in res if r["output_type"] == "display_data"], o.display_objects):
        r["display_id_"], r["update_"] = (x.transient or {}).get("display_id"), x.update
    return res

def apply_updates(cells:list):
    "Jupyter's display updates: an update replaces every earlier display with its id and shows nothing itself."
    shown = {}
    for c in cells:
        kept = []
        for o in c.outputs:
            did, upd = o.pop("display_id_", None), o.pop("update_", False)
            if upd:
                for t in shown.get(did, []): t["data"], t["metadata"] = o["data"], o["metadata"]
                continue
            if did is not None: shown.setdefault(did, []).append(o)
            kept.append(o)
        c.outputs = kept

def render_one(fn:Path)->float:
    "Run notebook `fn` as nbdev_test would and write it back with its tidied outputs; seconds taken."
    from fastcore.xtras import working_directory
    from execnb.nbio import read_nb, write_nb
    from execnb import shell as execnb_shell
    from execnb.shell import CaptureShell
    global _out_nb
    _out_nb = execnb_shell._out_nb; execnb_shell._out_nb = _keep_display_ids
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.clean import clean_nb
    flags = set(get_config(path=NBS).tst_flags.split())
    def no_eval(cell):                                  # nbdev.test.test_nb's rule, with the default flags
        if cell.cell_type != "code": return True
        if "nbdev_export" + "(" in cell.source: return True
        direc = getattr(cell, "directives_", {}) or {}
        if direc.get("eval:", [""])[0].lower() == "false": return True
        return flags & direc.keys()
    start = time.time()
    os.environ["IN_TEST"] = "1"                          # as nbdev_test sets it
    run = NBProcessor(fn, procs=FrontmatterProc, process=True).nb   # the code nbdev_test runs
    ran = {}                                             # cell id -> fresh outputs, for the cells that ran
    def pre(cell):
        if cell.cell_type == "code": cell.outputs = []
        return no_eval(cell)
    def post(cell):
        direc = getattr(cell, "directives_", {}) or {}
        ran[cell.id] = cell if direc.get("output:", [""])[0].lower() != "false" else None
    shell = CaptureShell(fn, mpl_format="png")
    with working_directory(fn.parent):
        try: shell.run_all(run, exc_stop=True, preproc=pre, postproc=post)
        except BaseException:
            sys.stderr.write(shell.prettytb(fname=fn) + "\n"); raise SystemExit(f"{fn}: a cell failed; notebook left unchanged")
    apply_updates([c for c in ran.values() if c is not None])
    nb = read_nb(fn)
    for c in nb.cells:
        if c.cell_type != "code": continue
        r = ran.get(c.id)                                  # None: skipped (a test flag) or `output: false`
        c.outputs, c.execution_count = (tidy_outputs(r.outputs) if r is not None else []), None
    nb.metadata.pop("widgets", None)                   # widget state: random ids, and no kernel behind it
    cfg = get_config(path=NBS)
    clean_nb(nb, cfg.clear_all, cfg.allowed_metadata_keys.split(), cfg.allowed_cell_metadata_keys.split(), cfg.clean_ids)
    write_nb(nb, fn)
    return time.time() - start

def main(args:list)->int:
    if args[:1] == ["--one"]:                          # the child process: one notebook
        print(f"{args[1]}: {render_one(Path(args[1]).resolve()):.1f} s", flush=True); return 0
    names = args or CHAPTERS
    paths = [p if p.exists() else NBS / p.name for p in map(Path, names)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rc = 0
    for p in paths:
        if not p.exists(): print(f"{p}: no such notebook", file=sys.stderr); rc = 1; continue
        rc |= subprocess.run([sys.executable, __file__, "--one", str(p)], env=env).returncode
    return rc

if __name__ == "__main__": sys.exit(main(sys.argv[1:]))
