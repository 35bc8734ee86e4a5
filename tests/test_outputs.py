"Chapters keep their outputs (figures, tables), and `./run.sh outputs` (nbs/render_outputs.py) reproduces them byte for byte."
import json, re, subprocess, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / "nbs"
SCRIPT = NBS / "render_outputs.py"
sys.path.insert(0, str(NBS))
import render_outputs as R

# what must never be in a kept output: it differs from run to run or from machine to machine
NOISE = {
    "temporary path": re.compile(r"(/tmp/|/var/folders/|\\Temp\\)"),
    "home folder": re.compile(r"(/root/|/home/[^/\s]+/|/Users/[^/\s]+/)"),
    "memory address": re.compile(r"\bat 0x[0-9a-fA-F]+"),
    "progress bar or timing": re.compile(r"\d+(\.\d+)?\s?(it/s|s/it)\b|\[\d\d:\d\d<\d\d:\d\d|\d+%\|"),
}

def _nb(path): return json.loads(Path(path).read_text(encoding="utf-8"))

def _texts(o):
    "Every text an output holds (streams, text/* and JSON data)."
    if "text" in o: yield "".join(o["text"])
    for k, v in o.get("data", {}).items():
        if not k.startswith("image/"): yield "".join(v) if isinstance(v, list) else json.dumps(v)

def _noise(nb)->list:
    "(cell id, what) for every kept output that carries run-to-run noise or widget state."
    bad = [("notebook", "widget state")] if "widgets" in nb.get("metadata", {}) else []
    for c in nb["cells"]:
        if c.get("execution_count") is not None: bad.append((c.get("id"), "execution count"))
        for o in c.get("outputs", []):
            if any(k in o.get("data", {}) for k in R.WIDGET_MIMES): bad.append((c.get("id"), "widget view"))
            if o.get("execution_count") is not None: bad.append((c.get("id"), "execution count"))
            for t in _texts(o): bad += [(c.get("id"), what) for what, rx in NOISE.items() if rx.search(t)]
    return bad

def _shows_result(nb)->bool:
    "Does the notebook keep a figure (PNG) or a table (HTML table, or a stored DataFrame's text)?"
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            d = o.get("data", {})
            if "image/png" in d or "<table" in "".join(d.get("text/html", "")): return True
    return False

@pytest.mark.parametrize("path", sorted(NBS.glob("[0-9]*.ipynb")), ids=lambda p: p.name)
def test_kept_outputs_are_free_of_noise(path):
    assert _noise(_nb(path)) == [], f"{path.name}: re-render it with `./run.sh outputs {path.relative_to(REPO)}`"

def test_noise_patterns_catch_what_they_name():
    "The checker itself: each kind of noise is caught, a clean output is not flagged."
    cell = lambda outs: {"cells": [{"id": "x", "cell_type": "code", "execution_count": None, "outputs": outs}], "metadata": {}}
    stream = lambda t: {"output_type": "stream", "name": "stdout", "text": [t]}
    for t in ["saved to /tmp/tmpab12cd/run\n", "cache /root/.cache/torch\n", "<Foo object at 0x7f3a2b>\n",
              " 40%|████      | 2/5 [00:01<00:02,  1.9it/s]\n"]:
        assert _noise(cell([stream(t)])), t
    assert _noise(cell([{"output_type": "display_data", "metadata": {},
                         "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "ab"}, "text/plain": ["w"]}}]))
    assert _noise({**cell([]), "metadata": {"widgets": {}}})
    assert _noise(cell([stream("PSNR 30.08 dB, 24 iterations\n"), stream("$TORCH_HOME/hub\n")])) == []

@pytest.mark.parametrize("name", R.CHAPTERS)
def test_chapter_keeps_a_figure_or_table(name):
    assert _shows_result(_nb(NBS / name)), f"{name} keeps no figure or table: run `./run.sh outputs nbs/{name}`"

def test_tidy_outputs_and_updates():
    "Progress bars, widget views and addresses go; a display updated later shows its last state, once."
    outs = R.tidy_outputs([
        {"output_type": "stream", "name": "stderr", "text": ["evaluate:  50%|#####     | 1/2 [00:00<00:00, 3.1it/s]\r",
                                                            "evaluate: 100%|##########| 2/2 [00:00<00:00, 3.3it/s]\n"]},
        {"output_type": "stream", "name": "stdout", "text": ["<Net at 0x7fab12> loaded\n"]},
        {"output_type": "display_data", "metadata": {}, "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "1"},
                                                                 "text/plain": ["Widget: controls"]}}])
    assert outs == [{"output_type": "stream", "name": "stdout", "text": ["<Net> loaded\n"]},
                    {"output_type": "display_data", "metadata": {}, "data": {"text/plain": ["Widget: controls"]}}]
    from fastcore.basics import AttrDict
    a = AttrDict(outputs=[{"output_type": "display_data", "metadata": {}, "data": {"text/plain": ["v1"]}, "display_id_": "d", "update_": False}])
    b = AttrDict(outputs=[{"output_type": "display_data", "metadata": {}, "data": {"text/plain": ["v2"]}, "display_id_": "d", "update_": True}])
    R.apply_updates([a, b])
    assert a.outputs == [{"output_type": "display_data", "metadata": {}, "data": {"text/plain": ["v2"]}}] and b.outputs == []

def _render(path):
    subprocess.run([sys.executable, str(SCRIPT), str(path)], cwd=REPO, check=True, timeout=240,
                   env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return path.read_bytes()

def _code(i:int, source:str)->dict:
    return {"cell_type": "code", "execution_count": 7, "id": f"c{i:07d}", "metadata": {"scrolled": True},
            "outputs": [{"output_type": "stream", "name": "stdout", "text": ["stale\n"]}], "source": source}

FIXTURE = [  # a tiny chapter: a figure, a table, a progress bar, a skipped cell, an unkept output, a display that updates
    "import matplotlib.pyplot as plt, numpy as np\nfig, ax = plt.subplots(figsize=(3, 2)); ax.plot(np.arange(5) ** 2); ax.set_title('squares');",
    "from IPython.display import HTML\nHTML('<table><tr><th>n</th><th>n²</th></tr><tr><td>3</td><td>9</td></tr></table>')",
    "from tqdm import tqdm\nfor _ in tqdm(range(3)): pass\nprint('done')",
    "#| slow\nprint('a slow cell')",
    "#| output: false\nprint('not kept')",
    "from IPython.display import display\nh = display('first', display_id=True)",
    "h.update('last')\nobject()",
]

def test_render_fixture_twice_is_identical(tmp_path):
    "The script on a tiny notebook: what is kept and dropped, and the same bytes on a second run."
    nb = {"cells": [{"cell_type": "markdown", "id": "m0000001", "metadata": {}, "source": "# Fixture"}] + [_code(i, s) for i, s in enumerate(FIXTURE)],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}, "widgets": {}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "fixture.ipynb"; path.write_text(json.dumps(nb))
    first = _render(path)
    assert _render(path) == first
    got = _nb(path)
    outs = [c["outputs"] for c in got["cells"][1:]]
    assert [o["output_type"] for o in outs[0]] == ["display_data"] and "image/png" in outs[0][0]["data"]
    assert "<table>" in "".join(outs[1][0]["data"]["text/html"])
    assert outs[2] == [{"output_type": "stream", "name": "stdout", "text": ["done\n"]}]      # the bar (stderr) is gone
    assert outs[3] == [] and outs[4] == []                                                  # `#| slow`, `output: false`
    assert [o["data"]["text/plain"] for o in outs[5]] == [["'last'"]] and outs[6][0]["data"]["text/plain"] == ["<object>"]
    assert _noise(got) == [] and all(c.get("metadata", {}) == {} for c in got["cells"])

@pytest.mark.timeout(300)
def test_render_chapter_twice_is_identical(tmp_path):
    "The cheapest chapter (03_criteria, about 10 s a run), rendered from a copy twice: the same bytes, with its figure."
    path = tmp_path / "03_criteria.ipynb"; path.write_bytes((NBS / "03_criteria.ipynb").read_bytes())
    first = _render(path)
    assert _render(path) == first
    assert _shows_result(_nb(path)) and _noise(_nb(path)) == []
