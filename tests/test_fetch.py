"Download → verify → prepare → read, against a loopback HTTP server serving tiny archives in each dataset's real layout."
import hashlib, io, json, os, subprocess, sys, tarfile, threading, zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from criasr import fetch as F
from criasr.data import get_dataset, read_manifest

REPO = Path(__file__).resolve().parents[1]
CONSOLE = REPO/".venv"/"bin"/"criasr-fetch"   # the installed console script

# ------------------------------------------------------------------------------------------- fixtures

class Server:
    "A loopback HTTP server over a folder, with a request log and injectable failures."
    def __init__(self, root: Path):
        self.dir, self.log, self.fail_next, self.ranges, self.no_length = root, [], 0, [], {}
        srv = self
        class H(SimpleHTTPRequestHandler):
            def do_GET(self):
                srv.log.append(self.path)
                if srv.fail_next > 0:
                    srv.fail_next -= 1
                    self.send_error(503, "try again"); return
                rng = self.headers.get("Range")
                f = Path(self.translate_path(self.path))
                if self.path in srv.no_length and f.is_file():   # no Content-Length, only the first N bytes, then close
                    self.send_response(200); self.send_header("Connection", "close"); self.end_headers()
                    self.wfile.write(f.read_bytes()[: srv.no_length[self.path]]); self.wfile.flush()
                    self.close_connection = True; return
                if rng and f.is_file():              # minimal 'bytes=N-' support, as real servers have
                    srv.ranges.append(rng)
                    start, data = int(rng.split("=")[1].rstrip("-")), f.read_bytes()
                    if start >= len(data): self.send_error(416); return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data)-1}/{len(data)}")
                    self.send_header("Content-Length", str(len(data) - start)); self.end_headers()
                    self.wfile.write(data[start:]); return
                super().do_GET()
            def log_message(self, *a): pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(H, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True); self.thread.start()
    def put(self, src: F.Source, data: bytes) -> str:
        "Serve `data` where the mirror will look for `src`; returns its sha256."
        from urllib.parse import unquote
        p = self.dir/unquote(src.mirror_path()); p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(data)
        return "sha256:" + hashlib.sha256(data).hexdigest()
    def close(self): self.httpd.shutdown(); self.httpd.server_close()

@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path/"served"); s.dir.mkdir(exist_ok=True)
    yield s
    s.close()

@pytest.fixture
def root(tmp_path):
    r = tmp_path/"data"; r.mkdir(); return r

def png(h, w, seed=0, ext="PNG", mode="RGB") -> bytes:
    a = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    b = io.BytesIO(); Image.fromarray(a).convert(mode).save(b, format=ext); return b.getvalue()

def make_zip(files: dict) -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        for n, d in files.items(): z.writestr(zipfile.ZipInfo(n, (2020, 1, 1, 0, 0, 0)), d)
    return b.getvalue()

def make_tar(files: dict, mode="w:gz") -> bytes:
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode=mode) as t:
        for n, d in files.items():
            ti = tarfile.TarInfo(n); ti.size = len(d); t.addfile(ti, io.BytesIO(d))
    return b.getvalue()

def src(name, i=0, scales=(4,)): return F.sources(name, scales)[i]

# ------------------------------------------------------------------------------------------- fake archives per dataset

def fake_realsr():
    f = {}
    for cam in ("Canon", "Nikon"):
        for sp, ids in (("Train", (1, 2)), ("Test", (3,))):
            for s in (2, 4):
                for i in ids:
                    f[f"RealSR(V3)/{cam}/{sp}/{s}/{cam}_{i:03d}_HR.png"] = png(8 * s, 12 * s, i)
                    f[f"RealSR(V3)/{cam}/{sp}/{s}/{cam}_{i:03d}_LR{s}.png"] = png(8, 12, i + 100)
    return make_tar(f)

def fake_ntire():
    rng = np.random.default_rng(0)
    flat = lambda: (np.full((40, 48, 3), 120) + rng.normal(0, 4, (40, 48, 3))).clip(0, 255).astype(np.uint8)
    def enc(a): b = io.BytesIO(); Image.fromarray(a).save(b, format="PNG"); return b.getvalue()
    return {"track1-train-source.zip": make_zip({f"track1-train-source/{i:04d}.png": enc(flat()) for i in (1, 2, 3)}),
            "train-target.zip": make_zip({f"train-target/{i:04d}.png": png(34, 42, i) for i in (1, 2)}),
            "track1-valid-input.zip": make_zip({f"track1-valid-input/{i:04d}.png": png(6, 8, i) for i in (801, 802)}),
            "track1-valid-gt.zip": make_zip({f"track1-valid-gt/{i:04d}.png": png(24, 32, i) for i in (801, 802)})}

def fake_camerasr(extra=None):
    f = {"CameraSR-master/README.md": b"City100"}
    for cam in ("City100_iPhoneX", "City100_NikonD5500"):
        for i in (1, 2, 21, 22, 23):
            f[f"CameraSR-master/City100/{cam}/{i:03d}H.PNG"] = png(16, 20, i)
            f[f"CameraSR-master/City100/{cam}/{i:03d}L.PNG"] = png(16, 20, i + 50)
    f.update(extra or {})
    return make_zip(f)

def fake_div2k(kind, scale=4):
    sp, lr = kind
    ids = range(1, 4) if sp == "train" else range(801, 803)
    if lr: return make_zip({f"DIV2K_{sp}_LR_bicubic/X{scale}/{i:04d}x{scale}.png": png(20 // scale, 24 // scale, i + 7) for i in ids})
    return make_zip({f"DIV2K_{sp}_HR/{i:04d}.png": png(20, 24, i) for i in ids})

def fake_flickr2k():
    f = {f"Flickr2K/Flickr2K_HR/{i:06d}.png": png(20, 24, i) for i in (1, 2)}
    f.update({f"Flickr2K/Flickr2K_LR_bicubic/X4/{i:06d}x4.png": png(5, 6, i) for i in (1, 2)})
    return make_tar(f, "w")

# ------------------------------------------------------------------------------------------- end to end, per dataset

def test_realsr_v3(server, root):
    h = {src("realsr_v3").filename: server.put(src("realsr_v3"), fake_realsr())}
    out = F.fetch("realsr_v3", root, mirror=server.url, known_hashes=h)
    man = read_manifest("realsr_v3", root)
    assert {(s["split"], s["scale"]) for s in man["subsets"]} == {("train", 2), ("train", 4), ("test", 2), ("test", 4)}
    assert (out/"train/x4/hr/Canon_001.png").is_file() and (out/"train/x4/lr/Canon_001.png").is_file()
    ds, va = get_dataset("realsr_v3", root, "train", scale=4, patch=16), get_dataset("realsr_v3", root, "val", scale=4)
    assert len(ds) + len(va) == 4 and len(va) >= 1 and not set(ds.names) & set(va.names)
    assert ds[0]["hr"].shape == (3, 16, 16) and ds[0]["lr"].shape == (3, 4, 4)
    assert get_dataset("realsr_v3", root, "test", scale=2, camera="nikon").names == ["Nikon_003"]
    assert man["sources"][0]["verified"] == "known"

def test_realsr_v3_published_md5_refuses_a_fake(server, root):
    server.put(src("realsr_v3"), fake_realsr())  # does not match torchSR's md5
    with pytest.raises(F.ChecksumError, match="checksum mismatch"):
        F.fetch("realsr_v3", root, mirror=server.url)
    assert not (root/"realsr_v3").exists()
    assert not (root/F.DOWNLOADS/"RealSR(V3).tar.gz").exists()

def test_ntire2020(server, root):
    fake = fake_ntire()   # zip entries carry timestamps: build the archives once
    for s in F.sources("ntire2020"): server.put(s, fake[s.filename])
    F.fetch("ntire2020", root, mirror=server.url)
    man = read_manifest("ntire2020", root)
    assert {s["split"]: s["count"] for s in man["subsets"]} == {"train": 2, "valid": 2, "train_source": 3}
    assert all(s["sha256"] for s in man["sources"]) and man["sources"][0]["verified"] == "recorded"
    rec = json.loads((root/F.DOWNLOADS/F.RECORDS).read_text())
    assert rec["train-target.zip"]["sha256"] == hashlib.sha256(fake["train-target.zip"]).hexdigest()
    te = get_dataset("ntire2020", root, "test", scale=4)   # the 100 official pairs: the paper's test set
    assert te.names == ["0801", "0802"] and te[0]["hr"].shape == (3, 24, 32)
    t, v = get_dataset("ntire2020", root, "train", scale=4), get_dataset("ntire2020", root, "val", scale=4)
    assert sorted(t.names + v.names) == ["0001", "0002"] and len(v) == 1 and not set(v.names) & set(te.names)
    assert all("/train/" in str(p["hr"]) for p in v.pairs)   # val is cut from train, never from the test folder
    assert t[0]["hr"].shape == (3, 32, 40) and t[0]["lr"].shape == (3, 8, 10)   # HR cropped to a multiple of 4
    with pytest.raises(ValueError, match="'test' is the paper's test set"): get_dataset("ntire2020", root, "valid")
    lo = get_dataset("ntire2020", root, "train_source")
    assert "hr" not in lo[0] and not lo.paired
    pool = np.load(root/"ntire2020"/"noise_pool.npy")   # saved for the impressionism degradation: zero-mean real noise
    assert pool.ndim == 4 and pool.shape[1:] == (32, 32, 3) and np.abs(pool.mean((1, 2))).max() < 1e-3
    from criasr.config import TrainConfig
    from criasr.train import make_degrader
    d = make_degrader(TrainConfig.from_params(dataset="ntire2020", root=str(root), degradation="impressionism", patch=32).data)
    assert d.noise is not None and len(d.noise) == len(pool)   # found under the dataset root without noise_source

def test_camerasr_cli_and_rerun_is_noop(server, root, capsys):
    server.put(src("camerasr"), fake_camerasr())
    assert F.main(["camerasr", "--root", str(root), "--mirror", server.url, "-q"]) == 0
    man_path = root/"camerasr"/"manifest.json"
    mt = {p: p.stat().st_mtime_ns for p in (root/"camerasr").rglob("*")}
    n = len(server.log)
    assert F.main(["camerasr", "--root", str(root), "--mirror", server.url, "-q"]) == 0
    assert len(server.log) == n, "second run must not download"
    assert {p: p.stat().st_mtime_ns for p in (root/"camerasr").rglob("*")} == mt
    assert "already prepared" in capsys.readouterr().out
    tr, va = get_dataset("camerasr", root, "train", scale=1), get_dataset("camerasr", root, "val", scale=1)
    assert sorted(tr.names + va.names) == ["iphonex_021", "iphonex_022", "iphonex_023"] and len(va) >= 1
    nik = get_dataset("camerasr", root, "val", scale=1, camera="nikon")   # a scene is held out for both cameras
    assert [n.split("_")[1] for n in nik.names] == [n.split("_")[1] for n in va.names]
    assert get_dataset("camerasr", root, "test", scale=1, camera="nikon").names == ["nikon_001", "nikon_002"]
    with pytest.raises(ValueError, match=r"choose one of \(1,\)"): get_dataset("camerasr", root, scale=4)
    assert F.main(["camerasr", "--root", str(root), "--verify"]) == 0
    assert json.loads(man_path.read_text())["subsets"][0]["pairs"][0]["hr_size"] == [20, 16]

def test_realsr_zero_manual_download(server, root, capsys):
    # not served: the automatic download fails and the user is told what to fetch and where to put it
    rc = F.main(["realsr_zero", "--root", str(root), "--mirror", server.url, "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "realsr-zero.zip" in err and str(root/F.DOWNLOADS/"realsr-zero.zip") in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (root/"realsr_zero").exists()
    data = make_zip({f"realsr-zero/{i}.png": png(10, 12, i) for i in range(3)})
    (root/F.DOWNLOADS/"realsr-zero.zip").write_bytes(data)        # the user puts it there by hand
    n = len(server.log)
    assert F.main(["realsr_zero", "--root", str(root), "--mirror", server.url, "-q"]) == 0
    assert len(server.log) == n
    man = read_manifest("realsr_zero", root)
    assert man["sources"][0]["sha256"] == hashlib.sha256(data).hexdigest() and man["sources"][0]["url"] == "manual"
    ds = get_dataset("realsr_zero", root, "test")
    assert len(ds) == 3 and set(ds[0]) == {"lr", "name"}

def test_div2k_flickr2k_df2k(server, root):
    h = {}
    for s in F.sources("div2k", (4,)):
        sp = "train" if "train" in s.filename else "valid"
        h[s.filename] = server.put(s, fake_div2k((sp, "LR" in s.filename)))
    h[src("flickr2k").filename] = server.put(src("flickr2k"), fake_flickr2k())
    F.fetch("df2k", root, mirror=server.url, known_hashes=h)
    tr, va, te = (get_dataset("div2k", root, s) for s in ("train", "val", "test"))
    assert sorted(tr.names + va.names) == ["0001", "0002", "0003"] and te.names == ["0801", "0802"]
    df, dfv = get_dataset("df2k", root, "train", patch=8), get_dataset("df2k", root, "val")
    assert sorted(df.names + dfv.names) == ["000001", "000002", "0001", "0002", "0003"] and not set(df.names) & set(dfv.names)
    assert os.path.samefile(root/"df2k/train/x4/hr/0001.png", root/"div2k/train/x4/hr/0001.png")   # hard link
    with pytest.raises(ValueError, match="--scales 2"): get_dataset("div2k", root, scale=2)

def test_div2k_two_scales(server, root):
    "Each LR archive is extracted into its own folder: every scale finds its own X<s> folder, and the HR file is shared."
    h = {}
    for s in F.sources("div2k", (2, 4)):
        sp, lr = ("train" if "train" in s.filename else "valid"), "LR" in s.filename
        h[s.filename] = server.put(s, fake_div2k((sp, lr), int(s.filename[-5]) if lr else 4))
    F.fetch("div2k", root, mirror=server.url, scales=(2, 4), known_hashes=h)
    for sc in (2, 4):
        te = get_dataset("div2k", root, "test", scale=sc)
        assert te.names == ["0801", "0802"] and te[0]["hr"].shape[-2:] == tuple(sc * n for n in te[0]["lr"].shape[-2:])
    assert os.path.samefile(root/"div2k/train/x2/hr/0001.png", root/"div2k/train/x4/hr/0001.png")

# ------------------------------------------------------------------------------------------- robustness

def test_download_restarts_after_server_errors(server, root):
    server.put(src("camerasr"), fake_camerasr())
    server.fail_next = 2
    F.fetch("camerasr", root, mirror=server.url)
    assert len(server.log) == 3 and (root/"camerasr/manifest.json").is_file()

def test_interrupted_download_resumes(server, root):
    data = fake_camerasr()
    server.put(src("camerasr"), data)
    (root/F.DOWNLOADS).mkdir(); (root/F.DOWNLOADS/"CameraSR-master.zip.part").write_bytes(data[:1000])  # a broken earlier run
    F.fetch("camerasr", root, mirror=server.url)
    assert server.ranges == ["bytes=1000-"]
    assert (root/F.DOWNLOADS/"CameraSR-master.zip").read_bytes() == data
    assert not (root/F.DOWNLOADS/"CameraSR-master.zip.part").exists()

def test_corrupted_download_is_replaced(server, root):
    h = {src("flickr2k").filename: server.put(src("flickr2k"), fake_flickr2k())}
    (root/F.DOWNLOADS).mkdir(); (root/F.DOWNLOADS/"Flickr2K.tar").write_bytes(b"half a file")
    F.fetch("flickr2k", root, mirror=server.url, known_hashes=h)
    assert len(server.log) == 1 and len(get_dataset("flickr2k", root)) + len(get_dataset("flickr2k", root, "val")) == 2
    assert (root/F.DOWNLOADS/"Flickr2K.tar.mismatch").read_bytes() == b"half a file"   # kept aside, not deleted

@pytest.mark.parametrize("member", ["../evil.png", "/tmp/criasr_evil.png", "CameraSR-master/../../evil.png"])
def test_hostile_zip_refused(server, root, member):
    server.put(src("camerasr"), fake_camerasr({member: b"pwned"}))
    before = set(root.parent.rglob("*"))
    with pytest.raises(F.UnsafeArchiveError, match="refusing"):
        F.fetch("camerasr", root, mirror=server.url)
    new = set(root.parent.rglob("*")) - before
    assert all(root/F.DOWNLOADS in p.parents or p == root/F.DOWNLOADS for p in new), new  # only the archive itself
    assert not (root/"camerasr").exists() and not Path("/tmp/criasr_evil.png").exists()
    assert not list(root.glob(".camerasr-partial-*"))

def _tar_with(tmp, entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as t:
        for kind, name, target in entries:
            ti = tarfile.TarInfo(name)
            if kind == "sym": ti.type, ti.linkname = tarfile.SYMTYPE, target
            elif kind == "hard": ti.type, ti.linkname = tarfile.LNKTYPE, target
            elif kind == "dev": ti.type = tarfile.CHRTYPE
            else: ti.size = len(target)
            t.addfile(ti, io.BytesIO(target) if kind == "file" else None)
    p = tmp/"a.tar"; p.write_bytes(b.getvalue()); return p

@pytest.mark.parametrize("entries", [
    [("sym", "d/link", "../../outside"), ("file", "d/link/x.png", b"x")],
    [("sym", "link", "/etc")],
    [("hard", "h", "../../etc/passwd")],
    [("dev", "d/null", None)],
    [("file", "/abs.png", b"x")],
    [("file", "a/../../up.png", b"x")],
])
def test_hostile_tar_refused(tmp_path, entries):
    arch, dest = _tar_with(tmp_path, entries), tmp_path/"root"/"extract"
    with pytest.raises(F.UnsafeArchiveError):
        F.safe_extract(arch, dest)
    assert not any(dest.rglob("*")) and not (tmp_path/"outside").exists() and not (tmp_path/"up.png").exists()

def _zip_links(links):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        for name, target in links:
            zi = zipfile.ZipInfo(name); zi.external_attr = (0o120777 << 16); z.writestr(zi, target)
    return b.getvalue()

@pytest.mark.parametrize("links", [[("d/link", "../../../outside")],      # escaping by name
                                   [("a/g.png", "f.png")]])                 # harmless by name: refused all the same
def test_zip_symlinks_refused_outright(tmp_path, links):
    p = tmp_path/"s.zip"; p.write_bytes(_zip_links(links))
    with pytest.raises(F.UnsafeArchiveError, match=r"s.zip: refusing archive member .*symlink") as e:
        F.safe_extract(p, tmp_path/"x")
    assert "\n" not in str(e.value) and not (tmp_path/"x").exists()

# each link lexically inside the target; once `up` exists, x.png resolves to a file next to the target
CHAIN = [("a/b/c/up", "../../.."), ("a/b/c/x.png", "up/../secret.png")]

def test_zip_link_chain_refused(tmp_path):
    (tmp_path/"secret.png").write_bytes(b"outside")
    p = tmp_path/"chain.zip"; p.write_bytes(_zip_links(CHAIN))
    with pytest.raises(F.UnsafeArchiveError, match="chain.zip: refusing archive member 'a/b/c/up'"):
        F.safe_extract(p, tmp_path/"x")
    assert not (tmp_path/"x").exists()

def test_tar_link_chain_refused_in_one_line(tmp_path):
    (tmp_path/"secret.png").write_bytes(b"outside")
    arch = _tar_with(tmp_path, [("sym", n, t) for n, t in CHAIN])
    with pytest.raises(F.UnsafeArchiveError, match=r"a.tar: refusing archive member 'a/b/c/up': a symlink") as e:
        F.safe_extract(arch, tmp_path/"x")
    assert "\n" not in str(e.value) and not (tmp_path/"x").exists()

@pytest.mark.parametrize("kind", ["sym", "hard"])
def test_tar_links_refused_outright(tmp_path, kind):
    "Datasets hold no links: even one pointing next to itself is refused, and the file before it is not written."
    arch = _tar_with(tmp_path, [("file", "a/f.png", b"x"), (kind, "a/g.png", "f.png" if kind == "sym" else "a/f.png")])
    (tmp_path/"x").mkdir()
    with pytest.raises(F.UnsafeArchiveError, match=r"refusing archive member 'a/g.png': a (symlink|hard link)"):
        F.safe_extract(arch, tmp_path/"x")
    assert not any((tmp_path/"x").iterdir())

def test_failed_preparation_leaves_nothing_that_looks_complete(server, root, monkeypatch):
    server.put(src("camerasr"), fake_camerasr())
    def boom(ext, st, scales):
        F.prep_camerasr(ext, st, scales); raise RuntimeError("disk full")
    monkeypatch.setitem(F.PREPARE, "camerasr", boom)
    with pytest.raises(RuntimeError, match="disk full"): F.fetch("camerasr", root, mirror=server.url)
    assert not (root/"camerasr").exists() and not list(root.glob(".camerasr-partial-*"))
    with pytest.raises(FileNotFoundError, match="criasr-fetch camerasr"): get_dataset("camerasr", root, scale=1)

def test_incomplete_dataset_message(root):
    (root/"div2k"/"train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="incomplete"): get_dataset("div2k", root)

def test_mirror_replaces_origin():
    s = F.Source("x.zip", "https://data.vision.ee.ethz.ch/cvl/DIV2K/x.zip")
    assert s.resolve_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/cvl/DIV2K/x.zip"
    assert s.resolve_url(None) == s.url
    assert F.sources("realsr_v3")[0].resolve_url("http://m") == "http://m/gdrive/RealSR%28V3%29.tar.gz"

def test_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_scripts.fetch", "--list"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and "realsr_v3" in r.stdout and "df2k" in r.stdout

def test_manual_instructions_for_google_drive():
    msg = F.manual_instructions(src("realsr_v3"), Path("/data/_downloads/RealSR(V3).tar.gz"), "quota exceeded")
    assert "drive.google.com/file/d/17ZMjo-zwFouxnm_aFM6CUHBwgRrLZqIM" in msg and "github.com/csjcai/RealSR" in msg
    assert "save it as /data/_downloads/RealSR(V3).tar.gz" in msg and "md5:83e946bf4b5c22b30d1663231bb2e53e" in msg
    assert "\n" not in msg and "quota exceeded" in msg

# ------------------------------------------------------------------------------------------- truncated downloads

def _mirror_path(s): return "/" + s.mirror_path()

def test_truncated_download_without_content_length_is_refused(server, root):
    data = fake_camerasr()
    server.put(src("camerasr"), data)
    server.no_length[_mirror_path(src("camerasr"))] = len(data) // 2     # the connection drops halfway, nothing says so
    with pytest.raises(F.CorruptArchiveError, match="incomplete or corrupt after 3 attempts.*deleted it") as e:
        F.fetch("camerasr", root, mirror=server.url)
    assert "\n" not in str(e.value) and len(server.log) == 3
    assert not (root/F.DOWNLOADS/"CameraSR-master.zip").exists()               # not kept
    assert "CameraSR-master.zip" not in (json.loads((root/F.DOWNLOADS/F.RECORDS).read_text())
                                         if (root/F.DOWNLOADS/F.RECORDS).exists() else {})   # and no sha256 recorded
    assert not (root/"camerasr").exists()
    server.no_length[_mirror_path(src("camerasr"))] = len(data)                # complete, still without Content-Length
    F.fetch("camerasr", root, mirror=server.url)
    assert json.loads((root/F.DOWNLOADS/F.RECORDS).read_text())["CameraSR-master.zip"]["sha256"] == hashlib.sha256(data).hexdigest()

def test_short_file_recorded_by_an_old_version_is_fetched_again(server, root):
    data = fake_camerasr(); server.put(src("camerasr"), data)
    (root/F.DOWNLOADS).mkdir(); short = data[: len(data) // 2]; (root/F.DOWNLOADS/"CameraSR-master.zip").write_bytes(short)
    old = dict(filename="CameraSR-master.zip", url="x", sha256=hashlib.sha256(short).hexdigest(), size=len(short),
               known_hash=None, verified="recorded")                       # no read_to_end: the old record format
    (root/F.DOWNLOADS/F.RECORDS).write_text(json.dumps({"CameraSR-master.zip": old}))
    F.fetch("camerasr", root, mirror=server.url)
    assert (root/F.DOWNLOADS/"CameraSR-master.zip").read_bytes() == data and len(server.log) == 1
    assert json.loads((root/F.DOWNLOADS/F.RECORDS).read_text())["CameraSR-master.zip"]["read_to_end"] is True

@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_verify_archive_reads_to_the_end(tmp_path, kind):
    files = {f"d/{i}.png": png(24, 24, i) for i in range(4)}
    data = make_zip(files) if kind == "zip" else make_tar(files, "w:gz" if kind == "tar.gz" else "w")
    good, cut = tmp_path/f"good.{kind}", tmp_path/f"cut.{kind}"
    good.write_bytes(data)
    assert F.verify_archive(good) == 4
    end = len(data) - 20                                  # zip: no end of central directory; gzip: no trailer
    if kind == "tar":                                     # a cut exactly after the last member: only the end marker is missing
        with tarfile.open(good) as t: end = (list(t), t.offset)[1]
    for n in (len(data) // 2, end):
        cut.write_bytes(data[:n])
        with pytest.raises(F.CorruptArchiveError, match=f"cut.{kind}"): F.verify_archive(cut)

def test_hand_placed_truncated_archive_moved_aside(root):
    data = make_zip({f"realsr-zero/{i}.png": png(10, 12, i) for i in range(3)})
    (root/F.DOWNLOADS).mkdir(); (root/F.DOWNLOADS/"realsr-zero.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(F.CorruptArchiveError, match="moved it to .*realsr-zero.zip.corrupt"):
        F.fetch("realsr_zero", root)
    assert (root/F.DOWNLOADS/"realsr-zero.zip.corrupt").exists() and not (root/F.DOWNLOADS/"realsr-zero.zip").exists()

# ------------------------------------------------------------------------------------------- the installed console script

def _start(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", CRIASR_DATA="/nonexistent-criasr-data")
    return subprocess.Popen([str(CONSOLE), *args, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

def test_console_script_bad_inputs(server, tmp_path):
    "Every user mistake: one line on stderr, no traceback, exit 2 (usage) or 1 (a dataset failed)."
    assert CONSOLE.is_file(), "install the package: pip install -e ."
    (tmp_path/"a_file").write_text("x")
    cam = fake_camerasr(); server.put(src("camerasr"), cam)
    server.no_length[_mirror_path(src("camerasr"))] = len(cam) // 2
    fake = fake_ntire(); fake["track1-valid-gt.zip"] = _zip_links(CHAIN)       # a hostile archive inside ntire2020
    for s in F.sources("ntire2020"): server.put(s, fake[s.filename])
    r = lambda i: str(tmp_path/f"root{i}")                                     # one data root per case
    cases = [
        (["ntire2002", "--root", r(0)], 2, "unknown dataset 'ntire2002' (did you mean 'ntire2020'?)"),
        (["camerasr", "--root", str(tmp_path/"a_file"/"data")], 2, "is a file, not a folder"),
        (["camerasr", "--root", "/sys/criasr-no-such-dir/data"], 2, "cannot write there"),
        (["camerasr", "--root", r(3), "--mirror", "127.0.0.1:8000"], 2, "--mirror '127.0.0.1:8000' is not an http(s) URL"),
        (["div2k", "--root", r(4), "--scales", "5"], 2, "div2k: --scales 5 not available; choose from 2 3 4"),
        (["camerasr", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["realsr_zero", "--root", r(6), "--mirror", server.url], 1, "realsr-zero.zip: automatic download failed"),
        (["camerasr", "--root", r(7), "--mirror", server.url], 1, "CameraSR-master.zip from"),
        (["ntire2020", "--root", r(8), "--mirror", server.url], 1, "track1-valid-gt.zip: refusing archive member 'a/b/c/up'"),
        (["camerasr", "--root", r(9), "--verify"], 1, "is not prepared; prepare it with: criasr-fetch camerasr"),
    ]
    for k in range(0, len(cases), 3):            # a few at a time: each start imports torch
        batch = [(c, _start(c[0])) for c in cases[k:k + 3]]
        for (args, code, msg), p in batch:
            _, err = p.communicate(timeout=300)
            lines = err.strip().splitlines()
            assert "Traceback" not in err, (args, err)
            assert (p.returncode, len(lines)) == (code, 1), (args, p.returncode, err)
            assert lines[0].startswith("criasr-fetch: ") and msg in lines[0], (args, lines[0])
    assert not (tmp_path/"root8"/"ntire2020").exists() and not (tmp_path/"root7"/"camerasr").exists()
    assert not (tmp_path/"root7"/F.DOWNLOADS/"CameraSR-master.zip").exists()
