"""Reliability (issue 21): hostile archives, checksums checked by every reader, weights of the wrong dtype, a torn log line,
output names, decoded-cache checksums, names that act as paths, papermill's unknown parameters, a resume with changed
parameters; and every console script over a table of bad inputs: one line on stderr, no traceback, the documented exit code."""
import hashlib, io, json, os, resource, shutil, signal, subprocess, sys, tarfile, time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from criasr import data as D
from criasr import fetch as F
from criasr.runs import Run, CheckpointError, find_checkpoint, read_json, BEST_FILE, MetricsLog

def committed_iterations(ckdir:Path)->list:
    "Iterations with a commit mark (independent of criasr.runs' own listing)."
    return sorted(int(m.name[5:12]) for m in Path(ckdir).glob("ckpt_*.json"))

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN = "demo_paper_cria_x4_s0"
# a tiny CPU run (paper preset with its heads and projector; a discriminator), as in tests/test_train.py
TINY = dict(dataset="demo", iters=4, batch=2, patch=32, arch=dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1),
            disc_arch=dict(num_feat=8), num_workers=0, val_every=0, save_every=2, log_every=1, val_images=1, lr=1e-3,
            val_metrics=["psnr"], n_samples=1, progress=False, cpu=True, vgg_weights="random", deterministic=True, pixel_warmup=0,
            precision="fp32")

def env(**kw): return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", **kw)

def args_of(d:dict)->list:
    out = []
    for k, v in d.items(): out += [f"--{k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
    return out

def flip_bit(f:Path, at:int=-9):
    b = bytearray(f.read_bytes()); b[at] ^= 0x40; f.write_bytes(bytes(b))

# ------------------------------------------------------------------------------------------- 1. archives

def pathmax_tar(victim:str, up:int=1)->bytes:
    """CVE-2025-4517's pattern: 16 nested 247-character folders with one-letter symlinks, a link whose resolution passes PATH_MAX,
    an escaping symlink through it (`up` folders above the target), a hard link through that and a regular file of that name."""
    comp, steps, b, path = "d" * 247, "abcdefghijklmnop", io.BytesIO(), ""
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name, kind=tarfile.REGTYPE, link="", data=b""):
            ti = tarfile.TarInfo(name); ti.type, ti.linkname, ti.size = kind, link, len(data); t.addfile(ti, io.BytesIO(data))
        add("README.txt", data=b"an innocent first member")
        for s in steps:
            add(f"{path}{comp}", tarfile.DIRTYPE); add(f"{path}{s}", tarfile.SYMTYPE, comp); path += comp + "/"
        long_link = "/".join(steps) + "/" + "l" * 254
        add(long_link, tarfile.SYMTYPE, "../" * len(steps))
        add("escape", tarfile.SYMTYPE, long_link + "/.." * up)
        add(victim, tarfile.LNKTYPE, "escape/" + victim)
        add(victim, data=b"overwritten from inside the archive")
    return b.getvalue()

def test_pathmax_tar_refused_before_anything_is_written(tmp_path):
    "Links are refused whatever the interpreter's tar filter does; the (existing, so kept) target stays empty."
    victim = tmp_path / "victim"; victim.write_bytes(b"mine")
    (tmp_path / "evil.tar").write_bytes(pathmax_tar("victim")); dest = tmp_path / "out"; dest.mkdir()
    with pytest.raises(F.UnsafeArchiveError, match=r"evil.tar: refusing archive member 'a': a symlink") as e:
        F.safe_extract(tmp_path / "evil.tar", dest)
    assert "\n" not in str(e.value) and victim.read_bytes() == b"mine" and list(dest.iterdir()) == []

@pytest.mark.parametrize("name,why", [("x/" + "n" * 300 + ".png", "longer than this platform allows"),
                                      ("/".join(["d" * 200] * 25) + "/x.png", "longer than this platform allows"),
                                      ("a/../../up.png", "absolute path or '..'"), ("/abs.png", "absolute path or '..'")])
def test_tar_names_refused_before_extraction(tmp_path, name, why):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for n in ("first.png", name):
            ti = tarfile.TarInfo(n); ti.size = 1; t.addfile(ti, io.BytesIO(b"x"))
    (tmp_path / "n.tar").write_bytes(b.getvalue()); (tmp_path / "out").mkdir()
    with pytest.raises(F.UnsafeArchiveError, match=why): F.safe_extract(tmp_path / "n.tar", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []

def test_tar_of_a_plain_dataset_still_extracts(tmp_path):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w:gz") as t:
        for n, d in (("./", None), ("./Flickr2K/", None), ("./Flickr2K/a.png", b"png bytes")):
            ti = tarfile.TarInfo(n)
            if d is None: ti.type = tarfile.DIRTYPE
            else: ti.size = len(d)
            t.addfile(ti, io.BytesIO(d) if d else None)
    (tmp_path / "ok.tar.gz").write_bytes(b.getvalue())
    F.safe_extract(tmp_path / "ok.tar.gz", tmp_path / "out")
    assert (tmp_path / "out" / "Flickr2K" / "a.png").read_bytes() == b"png bytes"

# ------------------------------------------------------------------------------------------- a trained run, shared

@pytest.fixture(scope="module")
def trained(tmp_path_factory)->Path:
    "out_dir of a 4-iteration tiny run: committed checkpoints 2 and 4, net_g_best chosen on val, metrics.jsonl."
    from criasr.train import train
    out = tmp_path_factory.mktemp("trained")
    train(**TINY, out_dir=str(out))
    return out

@pytest.fixture
def run_copy(trained, tmp_path)->Path:
    "A private copy of the trained out_dir (tests damage it)."
    shutil.copytree(trained, tmp_path / "runs"); return tmp_path / "runs"

# ------------------------------------------------------------------------------------------- 2. checksums at load

def test_readers_verify_checkpoint_hashes(run_copy):
    from criasr.infer import load_model
    run = run_copy / RUN; ck = run / "checkpoints"
    rec = read_json(ck / BEST_FILE)
    assert rec["sha256"] == hashlib.sha256((ck / "net_g_best.safetensors").read_bytes()).hexdigest()
    (ck / "net_g_0000006.safetensors").write_bytes((ck / "net_g_0000004.safetensors").read_bytes()[:-7])   # no commit mark
    assert find_checkpoint(run).name == "net_g_0000004.safetensors" and committed_iterations(ck) == [2, 4]
    assert load_model(run).checkpoint.name == "net_g_0000004.safetensors"
    flip_bit(ck / "net_g_0000004.safetensors")
    with pytest.raises(CheckpointError, match=r"net_g_0000004.safetensors: checksum does not match ckpt_0000004.json.*iteration 2"):
        load_model(run)
    assert load_model(run, which=2).checkpoint.name == "net_g_0000002.safetensors"
    flip_bit(ck / "net_g_best.safetensors")
    with pytest.raises(CheckpointError, match="net_g_best.safetensors: checksum does not match best.json"): load_model(run, which="best")

# ------------------------------------------------------------------------------------------- 3. weights of the wrong dtype

def tiny_esrgan_sd()->dict:
    from criasr.archs import build_generator
    return build_generator("esrgan", num_feat=8, num_block=1, num_grow_ch=4).state_dict()

@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory)->Path:
    d = tmp_path_factory.mktemp("weights"); sd = tiny_esrgan_sd()
    save_file({k: v.to(torch.int8) for k, v in sd.items()}, d / "int8.safetensors")
    save_file({k: v > 0 for k, v in sd.items()}, d / "bool.safetensors")
    torch.save({**sd, "conv_last.weight": sd["conv_last.weight"].to(torch.int32)}, d / "one_int32.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "ok.safetensors")
    return d

@pytest.mark.parametrize("f,tensor", [("int8.safetensors", r"[\w.]+"), ("bool.safetensors", r"[\w.]+"),
                                      ("one_int32.pth", "conv_last.weight")])
def test_non_floating_weights_refused_naming_file_and_tensor(bad_weights, f, tensor):
    from criasr.infer import load_model
    from criasr.archs import build_generator, load_pretrained
    with pytest.raises(ValueError, match=rf"{f}: tensor '{tensor}' is \w+, not floating point"): load_model(bad_weights / f)
    m = build_generator("esrgan", num_feat=8, num_block=1, num_grow_ch=4)
    with pytest.raises(ValueError, match=rf"{f}: tensor '{tensor}'"): load_pretrained(m, bad_weights / f)
    load_model(bad_weights / "ok.safetensors")                              # the float file of the same network loads

def test_init_from_refuses_int_weights(bad_weights, tmp_path):
    from criasr.train import train
    cfg = {**TINY, "preset": "esrgan", "objective": "plain", "arch": dict(num_feat=8, num_block=1, num_grow_ch=4), "iters": 1}
    with pytest.raises(ValueError, match=r"one_int32.pth: tensor 'conv_last.weight' is int32"):
        train(**cfg, out_dir=str(tmp_path), init_from=str(bad_weights / "one_int32.pth"))

def test_one_weights_reader():
    "infer's, the zoo's and the trainer's weights go through criasr.archs.read_weights: one list of accepted suffixes."
    import criasr.archs as A, criasr.infer as I
    assert I.read_weights is A.read_weights and I.WEIGHT_SUFFIXES is A.WEIGHT_SUFFIXES
    src = (REPO / "criasr" / "infer.py").read_text() + (REPO / "criasr" / "zoo.py").read_text() + (REPO / "criasr" / "train.py").read_text()
    assert "torch.load(" not in (REPO / "criasr" / "infer.py").read_text() and "safe_open(" not in src

# ------------------------------------------------------------------------------------------- 4. a torn metrics line

def test_torn_last_log_line_does_not_block_resume(run_copy, capsys):
    from criasr.train import train
    log = run_copy / RUN / "metrics.jsonl"
    with open(log, "a") as f: f.write('{"iter": 41, "loss/to')               # what a crash or a full disk leaves
    train(**{**TINY, "iters": 6}, out_dir=str(run_copy))
    out = capsys.readouterr().out
    assert "metrics.jsonl: dropped its torn last line" in out and "resumed from" in out and "iteration 4 of 6" in out
    rows = [json.loads(l) for l in log.read_text().splitlines()]            # every line parses again
    assert max(r["iter"] for r in rows) == 6 and 41 not in {r["iter"] for r in rows}

def test_damaged_middle_log_line_named_and_dropped(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for i in (1, 2, 3): log.write({"iter": i})
    lines = log.path.read_text().splitlines(); lines[1] = lines[1][:5]; log.path.write_text("\n".join(lines) + "\n")
    said = []; log.truncate(3, log=said.append)
    assert said == [f"WARNING: {log.path}: line 2 is not a JSON row (damaged): dropped: '{{\"ite'"]
    assert [r["iter"] for _, r in log.lines()] == [1, 3]

# ------------------------------------------------------------------------------------------- 7. papermill's unknown parameters

@pytest.mark.parametrize("given,error", [({"val_images": 1}, None), ({"val_image": 1}, "unknown parameter 'val_image' (did you mean 'val_images'?)")])
def test_train_notebook_refuses_unknown_parameters(given, error):
    "papermill injects -p values after the parameters cell; the first cell after it checks them (run here as papermill lays them out)."
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    nb = parameterize_notebook(load_notebook_node(str(REPO / "nbs" / "train.ipynb")), given)
    i = next(k for k, c in enumerate(nb.cells) if "injected-parameters" in c.metadata.get("tags", []))
    ns = {"In": [""], "Out": {}}
    for c in nb.cells[:i + 1]:                                             # the parameters cell, then papermill's injected one
        if c.cell_type == "code": exec(compile(c.source, "cell", "exec"), ns)
    check = nb.cells[i + 1].source
    assert "check_notebook_parameters" in check.split("import os")[0]      # the first cell after the parameters
    if error is None: exec(compile(check, "cell", "exec"), ns)
    else:
        with pytest.raises(ValueError) as e: exec(compile(check, "cell", "exec"), ns)
        assert error in str(e.value) and "\n" not in str(e.value)

# ------------------------------------------------------------------------------------------- 8. the decoded-image cache

def test_decoded_cache_checked_once_per_file_and_redecoded_on_mismatch(tmp_path, monkeypatch):
    a = (np.random.default_rng(0).random((16, 20, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "lr.png"); Image.fromarray(a.repeat(2, 0).repeat(2, 1)).save(tmp_path / "hr.png")
    mk = lambda: D.PairedImages([dict(name="p", lr=tmp_path / "lr.png", hr=tmp_path / "hr.png")], scale=2, patch=8,
                                cache="disk", cache_dir=tmp_path / ".decoded")
    mk()[0]                                                                # decodes and writes the cache
    f = D._cache_file(tmp_path / ".decoded", tmp_path / "lr.png"); b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF; b[-30] ^= 0xFF; f.write_bytes(bytes(b))                 # two flipped bytes in the pixels
    monkeypatch.setattr(D, "_CACHE_VERIFIED", set())                       # a new process
    calls = []; real = D.file_sha256
    monkeypatch.setattr(D, "file_sha256", lambda p: calls.append(p) or real(p))
    ds = mk()
    for i in range(5): ds[(0, i)]                                          # five patches (memory-mapped)
    assert np.array_equal(np.asarray(ds._load_pair(0)[0]), a)              # the source's pixels, not the damaged ones
    assert sorted(Path(c).name for c in calls) == sorted({f.name, D._cache_file(tmp_path / ".decoded", tmp_path / "hr.png").name})
    assert D._cache_ok(f)                                                  # rewritten with its hash

# ------------------------------------------------------------------------------------------- 10. resume with changed parameters

def test_resume_with_another_batch_warns_and_keeps_history(run_copy, capsys):
    from criasr.train import train
    train(**{**TINY, "iters": 6, "batch": 1}, out_dir=str(run_copy))
    out = capsys.readouterr().out
    assert "WARNING: resuming" in out and "batch 2 -> 1" in out and "iters 4 -> 6" in out
    p = read_json(run_copy / RUN / "params.json")
    assert p["batch"] == 1 and [h["batch"] for h in p["history"]] == [2] and p["history"][0]["replaced_at_iter"] == 4

# ------------------------------------------------------------------------------------------- 5. -o equal to -i

def test_sr_output_folder_equal_to_input_keeps_the_users_files(bad_weights, tmp_path):
    d = tmp_path / "imgs"; d.mkdir()
    rng = np.random.default_rng(1)
    for n in ("x.png", "x_out.png"): Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(d / n)
    mine = (d / "x_out.png").read_bytes()
    r = subprocess.run([str(BIN / "criasr-sr"), "-i", str(d), "-o", str(d), "-w", str(bad_weights / "ok.safetensors"), "--fp32"],
                       capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (d / "x_out.png").read_bytes() == mine                          # the user's file is untouched
    assert sorted(p.name for p in d.iterdir()) == ["x.png", "x2_out.png", "x_out.png", "x_out_out.png"]
    assert "x.png: its result would replace the input x_out.png; writing x2_out.png instead" in r.stderr

# ------------------------------------------------------------------------------------------- 6. every console script, bad inputs

def prepared(root:Path, name="div2k", n=4, broken=None)->Path:
    "A tiny prepared folder dataset (train ×4) with its manifest; `broken`: a pair whose LR file is made unreadable."
    pairs = []
    for i in range(n):
        k = f"{i:04d}"; d = root / name / "train" / "x4"
        h = (np.random.default_rng(i).random((48, 48, 3)) * 255).astype(np.uint8)
        for kind, a in (("hr", h), ("lr", h[::4, ::4])):
            (d / kind).mkdir(parents=True, exist_ok=True); Image.fromarray(np.ascontiguousarray(a)).save(d / kind / f"{k}.png")
        pairs.append(dict(name=k, lr=f"train/x4/lr/{k}.png", hr=f"train/x4/hr/{k}.png"))
    (root / name / "manifest.json").write_text(json.dumps(dict(name=name, version=1, sources=[],
                                               subsets=[dict(split="train", scale=4, paired=True, count=n, pairs=pairs)])))
    if broken is not None:
        train_names = D.get_dataset(name, root, "train", scale=4).names
        (root / name / "train" / "x4" / "lr" / f"{train_names[broken]}.png").write_bytes(b"\x89PNG not really")
    return root

def small_files(limit:int):
    "In the child: files beyond `limit` bytes cannot be written (EFBIG, as on a full disk); Python ignores SIGXFSZ."
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

def test_console_scripts_bad_inputs_one_line(tmp_path, run_copy, bad_weights):
    "criasr-train, criasr-sr, criasr-fetch over the issue's bad inputs: one stderr line, no traceback, the documented status."
    t = tmp_path
    (t / "a_file").write_text("x")
    prepared(t / "bad_img", broken=0)
    for case, text in (("empty", "{}"), ("list", "[]"), ("nopairs", '{"subsets": [{"split": "train", "scale": 4}]}'),
                       ("notjson", "{\"subsets\": [")):
        prepared(t / f"man_{case}"); (t / f"man_{case}" / "div2k" / "manifest.json").write_text(text)
    nohash = prepared(t / "man_nohash")                                    # fine to train from, but --verify has nothing to check
    (t / "evil" / F.DOWNLOADS).mkdir(parents=True)
    (t / "evil" / F.DOWNLOADS / "realsr-zero.zip").write_bytes(pathmax_tar("victim", up=4)); (t / "victim").write_bytes(b"mine")
    (t / "imgs").mkdir(); Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(t / "imgs" / "a.png")
    flip_bit(run_copy / RUN / "checkpoints" / "net_g_0000004.safetensors")
    w, imgs = str(bad_weights / "ok.safetensors"), str(t / "imgs")
    tiny = ["--cpu", "true", "--vgg_weights", "random", "--progress", "false", "--iters", "2", "--batch", "2", "--patch", "32",
            "--arch", json.dumps(TINY["arch"]), "--disc_arch", '{"num_feat": 8}', "--val_images", "1", "--val_metrics", '["psnr"]',
            "--precision", "fp32", "--n_samples", "0"]
    trn = lambda *a, out=str(t / "runs"): ["criasr-train", "--out_dir", out, *tiny, *a]
    div2k = lambda r: ["--dataset", "div2k", "--root", str(t / r)]
    cases = [  # argv, exit status, stderr fragment, preexec
        (trn(*div2k("bad_img")), 2, "train/x4/lr/", None),                                             # a worker's error (num_workers auto)
        (trn(out=str(t / "a_file")), 2, f"parameter 'out_dir': {t / 'a_file'} is a file, not a folder", None),
        (trn("--run_name", "../escaped_run"), 2, "parameter 'run_name': '../escaped_run' is not a plain name", None),
        (trn("--run_name", str(t / "abs_run")), 2, "is not a plain name", None),
        (trn("--save_every", "1"), 1, "the disk is full or a file-size limit was hit", small_files(2_000)),
        *[(trn(*div2k(f"man_{c}")), 2, f"man_{c}/div2k/manifest.json is not", None) for c in ("empty", "list", "nopairs", "notjson")],
        (["criasr-sr", "-i", imgs, "-o", str(t / "o1"), "-w", w, "-s", "100000"], 2, "-s 100000 would make a.png (8×8) a 800000×800000", None),
        (["criasr-sr", "-i", imgs, "-o", str(t / "o2"), "-w", w, "--suffix", "/../../x"], 2, "parameter '--suffix'", None),
        (["criasr-sr", "-i", imgs, "-o", str(t / "o3"), "-w", str(run_copy / RUN)], 2, "checksum does not match ckpt_0000004.json", None),
        (["criasr-sr", "-i", imgs, "-o", str(t / "o4"), "-w", str(bad_weights / "bool.safetensors")], 2, "bool.safetensors: tensor '", None),
        (["criasr-fetch", "realsr_zero", "--root", str(t / "evil"), "-q"], 1, "realsr-zero.zip: refusing archive member 'a': a symlink", None),
        *[(["criasr-fetch", "div2k", "--root", str(t / f"man_{c}"), "--verify"], 1, "manifest.json is not", None) for c in ("empty", "list", "notjson")],
        (["criasr-fetch", "div2k", "--root", str(nohash), "--verify"], 1, "cannot verify: pair '0000' has no lr_sha256", None),
    ]
    def start(argv, pre):
        return subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env(), cwd=t, preexec_fn=pre)
    bad = []
    for k in range(0, len(cases), 3):                                      # a few at a time: each start imports torch
        batch = [(c, start(c[0], c[3])) for c in cases[k:k + 3]]
        for (argv, code, frag, _), p in batch:
            _, err = p.communicate(timeout=300)
            lines = [l for l in err.splitlines() if l.strip()]
            if "Traceback" in err or p.returncode != code or len(lines) != 1 or frag not in lines[0]:
                bad.append((argv[0], argv[-2:], p.returncode, err[-1500:]))
    assert not bad, bad
    assert (t / "victim").read_bytes() == b"mine" and not (t / "escaped_run").exists() and not (t / "abs_run").exists()
    # a plain fetch over a broken manifest prepares the dataset again (from a hand-placed archive: no network here)
    (t / "zero" / F.DOWNLOADS).mkdir(parents=True); (t / "zero" / "realsr_zero").mkdir(); (t / "zero" / "realsr_zero" / "manifest.json").write_text("[]")
    png = io.BytesIO(); Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    zb = io.BytesIO()
    with __import__("zipfile").ZipFile(zb, "w") as z: z.writestr("realsr-zero/001.png", png.getvalue())
    (t / "zero" / F.DOWNLOADS / "realsr-zero.zip").write_bytes(zb.getvalue())
    p = start(["criasr-fetch", "realsr_zero", "--root", str(t / "zero"), "-q"], None); _, err = p.communicate(timeout=300)
    assert (p.returncode, err) == (0, ""), err
    assert D.read_manifest("realsr_zero", t / "zero")["subsets"][0]["count"] == 1

def test_ctrl_c_on_criasr_train_says_where_it_resumes(tmp_path):
    cfg = {**TINY, "iters": 400, "save_every": 2, "debug_sleep": 0.05, "out_dir": str(tmp_path)}
    p = subprocess.Popen([str(BIN / "criasr-train"), *args_of(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(), cwd=tmp_path)
    ck, t0 = tmp_path / RUN / "checkpoints", time.time()
    while not (ck / "ckpt_0000004.json").exists():
        assert p.poll() is None, p.communicate()[1][-2000:]
        assert time.time() - t0 < 150; time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    lines = [l for l in err.splitlines() if l.strip()]
    assert p.returncode == 130 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    last = committed_iterations(ck)[-1]
    assert lines[0] == (f"criasr-train: interrupted; re-run the same command to resume {tmp_path / RUN} from its last checkpoint, "
                        f"iteration {last} of 400")
