"The house: chapters import only earlier chapters, no cycles, one owner of atomic writes and of the metrics log."
import ast, re, json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "criasr"
# a function-level import of our own modules is allowed only where the reason is written here
DEFERRED_OK = {("cli", "infer"): "criasr-sr --help must not import torch; the CLI imports the inference module when it runs"}

def chapters()->dict:
    "module name -> chapter number, from the notebooks' `default_exp` (and `#| export <module>` cells)."
    out = {}
    for nb in sorted((REPO / "nbs").glob("[0-9][0-9]_*.ipynb")):
        n = int(nb.name[:2]); cells = json.loads(nb.read_text())["cells"]
        for c in cells:
            src = "".join(c["source"])
            for m in re.findall(r"^#\|\s*default_exp\s+(\w+)", src, re.M) + re.findall(r"^#\|\s*export[s]?\s+(\w+)\s*$", src, re.M):
                out.setdefault(m, n)
    return out

def imports(mod:str)->list:
    "(imported criasr module, top_level) pairs of criasr/<mod>.py."
    tree = ast.parse((PKG / f"{mod}.py").read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 1: names = [node.module.split(".")[0]]
            elif node.module.startswith("criasr."): names = [node.module.split(".")[1]]
            elif node.module == "criasr": names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("criasr.")]
        found += [(n, id(node) in top or _in_top_try(tree, node)) for n in names]
    return found

def _in_top_try(tree, node)->bool:
    return any(isinstance(t, ast.Try) and node in ast.walk(t) for t in tree.body)

def test_every_module_comes_from_a_numbered_chapter():
    mods = {p.stem for p in PKG.glob("*.py") if not p.stem.startswith("_")}
    assert mods <= set(chapters()), f"modules without a chapter: {mods - set(chapters())}"

def test_chapters_import_only_earlier_chapters():
    ch = chapters(); bad = []
    for mod in ch:
        if not (PKG / f"{mod}.py").exists(): continue
        for dep, top in imports(mod):
            if dep == mod or dep not in ch: continue
            if ch[dep] > ch[mod]:
                bad.append(f"{mod} (chapter {ch[mod]:02d}) imports {dep} (chapter {ch[dep]:02d})")
            if not top and (mod, dep) not in DEFERRED_OK:
                bad.append(f"{mod} imports {dep} inside a function (move it to the top)")
    assert not bad, "\n".join(bad)

def test_no_import_cycle():
    ch = chapters()
    g = {m: {d for d, _ in imports(m) if d in ch and d != m} for m in ch if (PKG / f"{m}.py").exists()}
    def reach(a, b, seen):
        return b in g.get(a, ()) or any(reach(c, b, seen | {c}) for c in g.get(a, ()) if c not in seen)
    cycles = sorted({tuple(sorted((a, b))) for a in g for b in g[a] if reach(b, a, {b})})
    assert not cycles, cycles

def test_one_atomic_writer_and_one_metrics_writer():
    src = {p.stem: p.read_text() for p in PKG.glob("*.py") if not p.stem.startswith("_")}
    replacers = sorted(m for m, s in src.items() if "os.replace(" in s or ".replace(tmp" in s)
    assert replacers == ["runs"], f"temp-file-and-rename written outside criasr.runs: {replacers}"
    writers = sorted(m for m, s in src.items() if re.search(r"open\([^)]*metrics[^)]*,\s*['\"]a", s))
    assert writers == [], writers
    assert len(re.findall(r"^class MetricsLog\b", src["runs"], re.M)) == 1
    globbers = sorted(m for m, s in src.items() if m != "runs" and re.search(r"glob\([\"'](\*/params\.json|net_g_|state_|ckpt_)", s))
    assert globbers == [], f"modules that glob run folders themselves: {globbers}"

def test_wheel_installs_only_criasr():
    setup = (REPO / "setup.py").read_text()
    assert "data_scripts" not in re.search(r"packages=.*", setup).group(0), "setup.py would install a top-level data_scripts package"
