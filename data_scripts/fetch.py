"""Download, verify and prepare the criasr datasets.

    python -m data_scripts.fetch NAME [NAME ...] --root DIR [--mirror URL] [--scales 2 3 4]
    criasr-fetch --list

Every dataset ends up in the layout `criasr.data` reads (see `nbs/04_data.ipynb`):

    <root>/<name>/manifest.json                 (written last: present = complete)
    <root>/<name>/<split>/x<scale>/{hr,lr}/<id>.png

Archives are kept in `<root>/_downloads/` (checksums verified where published, sha256 recorded where not, in
`_downloads/checksums.json` and in the manifest). Extraction refuses absolute paths, `..`, and links or devices that
escape the target; it happens in a temporary folder inside `root`, and the finished dataset is moved into place
with one rename, so an interrupted run never leaves a dataset that looks complete.
"""
from __future__ import annotations
import argparse, hashlib, json, logging, os, re, shutil, stat, sys, tarfile, tempfile, time, zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

import numpy as np
from PIL import Image

from criasr.data import DATASETS, MANIFEST, MANIFEST_VERSION, decode_image, datasets_table

log = logging.getLogger("data_scripts.fetch")
DOWNLOADS = "_downloads"
RECORDS = "checksums.json"
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

# ----------------------------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    "One file to download: a direct URL and/or a Google Drive id, a published checksum if any, and where a human finds it."
    filename: str                 # name under <root>/_downloads/
    url: str | None = None        # direct download URL
    gdrive: str | None = None     # Google Drive file id (downloaded with gdown)
    known_hash: str | None = None # "md5:..." / "sha256:..." as published; None = record the sha256 of what we fetch
    page: str = ""                # web page that links to the file (for manual downloads)

    def mirror_path(self) -> str:
        "Path of this file on a mirror: the URL's path, or gdrive/<filename> for Drive-only files."
        if self.url: return urlsplit(self.url).path.lstrip("/")
        return "gdrive/" + quote(self.filename)

    def resolve_url(self, mirror: str | None) -> str | None:
        "The URL to fetch: `mirror` replaces the origin (scheme, host, port) of the direct URL."
        if mirror: return mirror.rstrip("/") + "/" + self.mirror_path()
        return self.url

ETH = "https://data.vision.ee.ethz.ch"
NTIRE = f"{ETH}/alugmayr/real-world-sr/NTIRE20"
# DIV2K: md5 as published by torchSR, sha256 where TensorFlow Datasets publishes one.
_DIV2K_HASH = {
    "DIV2K_train_HR.zip": "sha256:9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335",
    "DIV2K_valid_HR.zip": "sha256:20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc",
    "DIV2K_train_LR_bicubic_X2.zip": "sha256:a53a424317575838dadce4bcd97cf7b744d6855f43740ed5f0245af3cf4bd850",
    "DIV2K_valid_LR_bicubic_X2.zip": "sha256:60eed9875c697df51204aa579e2a699e1d5215095788a097ff54dd17e2664d57",
    "DIV2K_train_LR_bicubic_X3.zip": "md5:ad80b9fe40c049a07a8a6c51bfab3b6d",
    "DIV2K_valid_LR_bicubic_X3.zip": "md5:18b1d310f9f88c13618c287927b29898",
    "DIV2K_train_LR_bicubic_X4.zip": "md5:76c43ec4155851901ebbe8339846d93d",
    "DIV2K_valid_LR_bicubic_X4.zip": "md5:21962de700c8d368c6ff83314480eff0",
}

def _div2k(f): return Source(f, f"{ETH}/cvl/DIV2K/{f}", known_hash=_DIV2K_HASH[f], page=f"{ETH}/cvl/DIV2K/")

def sources(name: str, scales=()) -> list:
    "The files dataset `name` needs (DIV2K's LR archives depend on `scales`)."
    if name == "realsr_v3":
        return [Source("RealSR(V3).tar.gz", gdrive="17ZMjo-zwFouxnm_aFM6CUHBwgRrLZqIM",
                       known_hash="md5:83e946bf4b5c22b30d1663231bb2e53e", page="https://github.com/csjcai/RealSR")]
    if name == "ntire2020":
        return [Source(f, f"{NTIRE}/{f}", page="https://competitions.codalab.org/competitions/22220")
                for f in ("track1-train-source.zip", "train-target.zip", "track1-valid-input.zip", "track1-valid-gt.zip")]
    if name == "camerasr":
        return [Source("CameraSR-master.zip", "https://github.com/ngchc/CameraSR/archive/refs/heads/master.zip",
                       page="https://github.com/ngchc/CameraSR")]
    if name == "realsr_zero":
        return [Source("realsr-zero.zip", "https://raw.githubusercontent.com/House-Leo/RealSR-Zero/main/dataset/realsr-zero.zip",
                       page="https://github.com/House-Leo/RealSR-Zero (dataset/realsr-zero.zip, or its Google Drive link)")]
    if name == "div2k":
        return [_div2k(f"DIV2K_{sp}_HR.zip") for sp in ("train", "valid")] + \
               [_div2k(f"DIV2K_{sp}_LR_bicubic_X{s}.zip") for s in scales for sp in ("train", "valid")]
    if name == "flickr2k":
        return [Source("Flickr2K.tar", "https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar",
                       known_hash="md5:5d3f39443d5e9489bff8963f8f26cb03", page="https://github.com/limbee/NTIRE2017")]
    return []

# ----------------------------------------------------------------------------------------------- errors

class FetchError(RuntimeError): "A dataset could not be fetched or prepared."
class ChecksumError(FetchError): "A file does not match its published checksum."
class UnsafeArchiveError(FetchError): "An archive member would be written outside the target folder."
class ManualDownload(FetchError): "A file must be downloaded by hand; the message says what and where."

# ----------------------------------------------------------------------------------------------- helpers

def file_hash(path, alg: str = "sha256") -> str:
    "Hex digest of a file."
    h = hashlib.new(alg)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""): h.update(chunk)
    return h.hexdigest()

def _check(path: Path, known: str) -> bool:
    alg, _, digest = known.partition(":")
    return file_hash(path, alg) == digest.lower()

def write_json(path: Path, obj) -> None:
    "Write JSON atomically (temp file + os.replace)."
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f: json.dump(obj, f, indent=1, sort_keys=True); f.write("\n")
    os.replace(tmp, path)

def _records(dl: Path) -> dict:
    p = dl/RECORDS
    return json.loads(p.read_text()) if p.is_file() else {}

def _record(dl: Path, fname: str, rec: dict) -> None:
    recs = _records(dl); recs[fname] = rec; write_json(dl/RECORDS, recs)

def manual_instructions(src: Source, dest: Path, why: str = "") -> str:
    "What to download by hand and where to put it."
    where = src.url or (f"https://drive.google.com/file/d/{src.gdrive}" if src.gdrive else src.page)
    lines = [f"{src.filename}: {why}" if why else f"{src.filename} must be downloaded by hand.",
             f"  1. download {src.filename} from {where}" + (f"\n     (linked from {src.page})" if src.page and src.page != where else ""),
             f"  2. save it as {dest}",
             f"  3. re-run this command: it verifies the file ({src.known_hash or 'sha256 recorded'}) and prepares the dataset"]
    return "\n".join(lines)

# ----------------------------------------------------------------------------------------------- download

def download(src: Source, dl: Path, mirror: str | None = None, known_hash=..., retries: int = 3) -> dict:
    "Fetch `src` into `dl` unless present and verified; return its record (filename, url, sha256, size, verified)."
    dl.mkdir(parents=True, exist_ok=True)
    known = src.known_hash if known_hash is ... else known_hash
    dest = dl/src.filename
    if dest.is_file():
        if known:
            if _check(dest, known): return _finish(dl, src, dest, known, "known", src.resolve_url(mirror))
            bad = dest.with_name(dest.name + ".mismatch")
            log.warning("%s does not match %s: moved to %s, downloading it again", dest, known, bad.name)
            os.replace(dest, bad)
        else:
            rec = _records(dl).get(src.filename)
            if rec and rec.get("size") == dest.stat().st_size and rec.get("sha256") == file_hash(dest):
                return rec
            if rec is None:  # placed by hand: record what is there
                return _finish(dl, src, dest, None, "recorded", "manual")
            log.warning("%s changed since it was recorded: downloading it again", dest); dest.unlink()
    url = src.resolve_url(mirror)
    last = None
    for attempt in range(1, retries + 1):
        try:
            if url is None and src.gdrive: _gdrive(src, dest, known)
            elif url is None: raise ManualDownload(manual_instructions(src, dest))
            else:
                import pooch
                pooch.get_logger().setLevel(logging.WARNING)  # we record the sha256 ourselves
                print(f"downloading {url} -> {dest}", file=sys.stderr)
                pooch.retrieve(url, known_hash=known, fname=src.filename, path=dl,
                               downloader=ResumableDownloader(dl/(src.filename + ".part")))
            return _finish(dl, src, dest, known, "known" if known else "recorded", url or f"gdrive:{src.gdrive}")
        except ManualDownload: raise
        except ValueError as e:  # pooch: hash mismatch (the bad file is removed)
            if dest.exists() and known and not _check(dest, known): dest.unlink()
            raise ChecksumError(f"{src.filename} from {url}: checksum mismatch, refused ({e}). The file was not kept; "
                                f"a corrupted mirror or a changed upstream file?") from e
        except Exception as e:  # network trouble: restart (or resume) the download; a 4xx will not go away
            last = e
            code = getattr(getattr(e, "response", None), "status_code", None)
            if code is not None and 400 <= code < 500 and code not in (408, 429): break
            log.warning("download of %s failed (attempt %d/%d): %s", src.filename, attempt, retries, e)
            if attempt < retries: time.sleep(min(2 ** attempt, 10) if not mirror else 0.1)
    raise ManualDownload(manual_instructions(src, dest, f"automatic download failed ({type(last).__name__}: {last})"))

class ResumableDownloader:
    "A pooch downloader that keeps a `<file>.part` between runs and resumes it with an HTTP Range request."
    def __init__(self, part: Path, progressbar: bool = True, timeout: float = 60, chunk: int = 1 << 20):
        self.part, self.progressbar, self.timeout, self.chunk = part, progressbar, timeout, chunk

    def __call__(self, url, output_file, pooch, check_only=False):
        import requests
        from tqdm.auto import tqdm
        if check_only: return requests.head(url, timeout=self.timeout, allow_redirects=True).status_code == 200
        have = self.part.stat().st_size if self.part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as r:
            if have and r.status_code == 416: r.close(); have = -1  # .part already complete (or bigger): restart below
            elif have and r.status_code != 206: have = 0           # server ignores Range: restart from zero
            if have == -1:
                self.part.unlink(); return self(url, output_file, pooch)
            r.raise_for_status()
            if have: print(f"resuming {self.part.name} at {have} bytes", file=sys.stderr)
            total = int(r.headers.get("content-length", 0)) + have
            bar = tqdm(total=total or None, initial=have, unit="B", unit_scale=True, ncols=79, disable=not self.progressbar,
                       desc=self.part.name[:-5])
            with open(self.part, "ab" if have else "wb") as f:
                for chunk in r.iter_content(self.chunk):
                    f.write(chunk); bar.update(len(chunk))
            bar.close()
        if total and self.part.stat().st_size != total:
            raise OSError(f"{self.part.name}: got {self.part.stat().st_size} of {total} bytes; re-run to resume")
        shutil.move(str(self.part), str(output_file))   # pooch checks the hash and moves it into place

def _gdrive(src: Source, dest: Path, known: str | None) -> None:
    "Google Drive download with gdown (resumes a partial file), then verify."
    import gdown
    part = dest.with_name(dest.name + ".part")
    out = gdown.download(id=src.gdrive, output=str(part), quiet=False, resume=True)
    if out is None or not part.is_file(): raise OSError(f"gdown could not fetch Google Drive id {src.gdrive}")
    if known and not _check(part, known):
        part.unlink(); raise ValueError(f"{known} mismatch")
    os.replace(part, dest)

def _finish(dl, src, dest, known, verified, url) -> dict:
    rec = dict(filename=src.filename, url=url, sha256=file_hash(dest), size=dest.stat().st_size,
               known_hash=known, verified=verified)
    _record(dl, src.filename, rec)
    return rec

# ----------------------------------------------------------------------------------------------- safe extraction

def _member_target(name: str, dest: Path) -> Path:
    "Where member `name` lands under `dest`; refuses absolute paths, drive letters and `..`."
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n) or ".." in PurePosixPath(n).parts:
        raise UnsafeArchiveError(f"refusing archive member {name!r}: absolute path or '..'")
    t = (dest/n).resolve()
    if t != dest and dest not in t.parents: raise UnsafeArchiveError(f"refusing archive member {name!r}: escapes the target")
    return t

def _link_ok(member: str, link: str, dest: Path, hard: bool) -> None:
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        raise UnsafeArchiveError(f"refusing link {member!r} -> {link!r}: absolute target")
    base = dest if hard else (dest/member).parent
    t = (base/link).resolve()
    if t != dest and dest not in t.parents:
        raise UnsafeArchiveError(f"refusing link {member!r} -> {link!r}: points outside the target")

def safe_extract(archive: Path, dest: Path) -> None:
    "Extract a zip or tar archive into `dest`, after checking every member; a hostile archive writes nothing."
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
            links = {}
            for i in infos:
                _member_target(i.filename, dest)
                if stat.S_ISLNK(i.external_attr >> 16):
                    links[i.filename] = z.read(i).decode("utf-8", "replace")
                    _link_ok(i.filename, links[i.filename], dest, hard=False)
            for i in infos:
                t = _member_target(i.filename, dest)
                if i.is_dir(): t.mkdir(parents=True, exist_ok=True); continue
                t.parent.mkdir(parents=True, exist_ok=True)
                if i.filename in links: os.symlink(links[i.filename], t); continue
                with z.open(i) as fi, open(t, "wb") as fo: shutil.copyfileobj(fi, fo, 1 << 20)
        return
    if not tarfile.is_tarfile(archive): raise FetchError(f"{archive}: neither a zip nor a tar archive (corrupt download?)")
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _member_target(m.name, dest)
            if m.issym(): _link_ok(m.name, m.linkname, dest, hard=False)
            elif m.islnk(): _link_ok(m.name, m.linkname, dest, hard=True)
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"refusing archive member {m.name!r}: device, fifo or other special file")
        tf.extractall(dest, members=members, filter="data")

# ----------------------------------------------------------------------------------------------- preparation helpers

def _images(folder: Path) -> list:
    "Image files under `folder`, recursively, sorted; skips macOS resource forks and hidden files."
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(folder).parts))

def _place(src: Path, dst: Path, link: bool = False) -> None:
    "Move (or hard-link, falling back to copy) `src` to `dst`."
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not link: os.replace(src, dst); return
    try: os.link(src, dst)
    except OSError: shutil.copy2(src, dst)

def _dst(split: str, scale: int, kind: str, stem: str, ext: str) -> str:
    return f"{split}/x{scale}/{kind}/{stem}{ext.lower()}"

class Staging:
    "Collects prepared files and subsets in a staging folder."
    def __init__(self, folder: Path):
        self.dir, self.subsets = folder, {}
        folder.mkdir(parents=True, exist_ok=True)
    def add(self, split, scale, name, lr: Path | None, hr: Path | None, camera=None, link=False, paired=True):
        "Put one pair (or LR-only image) into the layout."
        e = dict(name=name)
        for kind, src in (("lr", lr), ("hr", hr)):
            if src is None: continue
            rel = _dst(split, scale, kind, name, src.suffix)
            _place(src, self.dir/rel, link); e[kind] = rel
        if camera: e["camera"] = camera
        self.subsets.setdefault((split, scale, paired), []).append(e)
    def write_image(self, split, scale, kind, name, array) -> Path:
        "Write a generated uint8 image into the layout; returns its path."
        p = self.dir/_dst(split, scale, kind, name, ".png"); p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(p, compress_level=3)
        return p

def _size(path: Path) -> list:
    with Image.open(path) as im:
        w, h = im.size
        o = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
    return [h, w] if o in (5, 6, 7, 8) else [w, h]

def build_manifest(stage: Staging, name: str, records: list, notes: dict) -> dict:
    "Sizes and sha256 of every prepared file, per subset, plus the source records."
    subsets, problems = [], []
    for (split, scale, paired), pairs in sorted(stage.subsets.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        pairs = sorted(pairs, key=lambda e: e["name"])
        for e in pairs:
            for kind in ("lr", "hr"):
                if kind in e:
                    p = stage.dir/e[kind]
                    e[f"{kind}_size"], e[f"{kind}_sha256"] = _size(p), file_hash(p)
            if "hr" in e and (e["hr_size"][0] != scale * e["lr_size"][0] or e["hr_size"][1] != scale * e["lr_size"][1]):
                problems.append(f"{e['name']} ({split} ×{scale}): HR {e['hr_size']} != {scale} × LR {e['lr_size']}")
        subsets.append(dict(split=split, scale=scale, paired=paired, count=len(pairs), pairs=pairs))
    for p in problems: log.warning("size mismatch: %s", p)
    return dict(name=name, version=MANIFEST_VERSION, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                sources=records, notes=notes, size_mismatches=problems, subsets=subsets)

# ----------------------------------------------------------------------------------------------- per-dataset preparation

def prep_realsr_v3(ext: Path, st: Staging, scales) -> dict:
    "RealSR(V3)/{Canon,Nikon}/{Train,Test}/{2,3,4}/Canon_001_{HR,LR4}.png → <split>/x<s>/{hr,lr}/Canon_001.png."
    pat = re.compile(r"^(?P<cam>[A-Za-z]+)_(?P<id>\d+)_(?P<kind>HR|LR\d)$", re.I)
    found, resampled = {}, []
    for p in _images(ext):
        m = pat.match(p.stem)
        if not m or not p.parent.name.isdigit(): continue
        scale, split = int(p.parent.name), p.parent.parent.name.lower()
        if split not in ("train", "test") or (scales and scale not in scales): continue
        key = (split, scale, f"{m['cam'].capitalize()}_{m['id']}")
        found.setdefault(key, {})["hr" if m["kind"].upper() == "HR" else "lr"] = p
    for (split, scale, name), d in sorted(found.items()):
        if "hr" not in d or "lr" not in d: log.warning("realsr_v3: %s %s ×%d has no partner, skipped", split, name, scale); continue
        lr = d["lr"]
        with Image.open(lr) as a, Image.open(d["hr"]) as b: same, (w, h) = a.size == b.size, b.size
        if same and scale > 1:  # LR stored at HR size: bring it to HR / scale (bicubic), and say so in the manifest
            arr = np.asarray(Image.open(lr).convert("RGB").resize((w // scale, h // scale), Image.BICUBIC))
            hr_arr = np.asarray(Image.open(d["hr"]).convert("RGB"))[: (h // scale) * scale, : (w // scale) * scale]
            st.write_image(split, scale, "lr", name, arr); st.write_image(split, scale, "hr", name, hr_arr)
            st.subsets.setdefault((split, scale, True), []).append(
                dict(name=name, lr=_dst(split, scale, "lr", name, ".png"), hr=_dst(split, scale, "hr", name, ".png"),
                     camera=name.split("_")[0].lower()))
            resampled.append(name)
            continue
        st.add(split, scale, name, lr, d["hr"], camera=name.split("_")[0].lower())
    return {"lr_resampled_from_hr_size": resampled} if resampled else {}

def _noise_pool(source_images: list, rng, patch: int = 32, max_images: int = 200, per_image: int = 8, max_std: float = 12.0) -> list:
    "Zero-mean noise patches from flat regions of real degraded photos (Ji et al., CVPR-W 2020 'noise injection')."
    pool = []
    for p in source_images[:max_images]:
        try: a = decode_image(p)[0]
        except Exception as e: log.warning("noise pool: skipping %s: %s", p, e); continue
        a = a.astype(np.float32) / (257.0 if a.dtype == np.uint16 else 1.0)
        if min(a.shape[:2]) < patch: continue
        H, W, got = a.shape[0], a.shape[1], 0
        for _ in range(per_image * 4):
            y, x = int(rng.integers(0, H - patch + 1)), int(rng.integers(0, W - patch + 1))
            c = a[y:y+patch, x:x+patch]
            # flat = little structure: the mean of 4×4 blocks barely varies
            blocks = c.reshape(patch // 4, 4, patch // 4, 4, 3).mean((1, 3))
            if blocks.std() < 3.0 and c.std() < max_std:
                pool.append((c - c.mean((0, 1), keepdims=True)).astype(np.float32)); got += 1
                if got == per_image: break
    return pool

def prep_ntire2020(ext: Path, st: Staging, scales) -> dict:
    "Track 1: valid = 100 official pairs; train = 800 DIV2K targets with LR synthesised (bicubic ×4 + real noise); train_source = LR only."
    def folder(stem):
        d = ext/stem
        return d if d.is_dir() else ext
    by_stem = lambda ps: {p.stem: p for p in ps}
    vin, vgt = by_stem(_images(folder("track1-valid-input.zip"))), by_stem(_images(folder("track1-valid-gt.zip")))
    for k in sorted(set(vin) & set(vgt)): st.add("valid", 4, k, vin[k], vgt[k])
    for k in sorted(set(vin) ^ set(vgt)): log.warning("ntire2020 valid: %s has no partner, skipped", k)
    src = _images(folder("track1-train-source.zip"))
    rng = np.random.default_rng(2020)
    pool = _noise_pool(src, rng)
    if not pool: log.warning("ntire2020: no flat noise patches found in the source images; train LR is plain bicubic")
    for i, p in enumerate(_images(folder("train-target.zip"))):
        hr = decode_image(p)[0]
        if hr.dtype != np.uint8: hr = (hr // 257).astype(np.uint8)
        h, w = (hr.shape[0] // 4) * 4, (hr.shape[1] // 4) * 4
        hr = np.ascontiguousarray(hr[:h, :w])
        lr = np.asarray(Image.fromarray(hr).resize((w // 4, h // 4), Image.BICUBIC)).astype(np.float32)
        if pool:
            r = np.random.default_rng([2020, i]); ps = pool[0].shape[0]
            for y in range(0, lr.shape[0], ps):
                for x in range(0, lr.shape[1], ps):
                    n = pool[int(r.integers(len(pool)))]
                    lr[y:y+ps, x:x+ps] += n[: lr.shape[0] - y, : lr.shape[1] - x]
        lr = np.clip(lr.round(), 0, 255).astype(np.uint8)
        lp, hp = st.write_image("train", 4, "lr", p.stem, lr), st.write_image("train", 4, "hr", p.stem, hr)
        st.subsets.setdefault(("train", 4, True), []).append(
            dict(name=p.stem, lr=str(lp.relative_to(st.dir)), hr=str(hp.relative_to(st.dir))))
    for p in src: st.add("train_source", 4, p.stem, p, None, paired=False)
    return {"train": "LR = bicubic x4 of the 800 train-target images + zero-mean noise patches taken from flat regions "
                     f"of the unpaired track1-train-source images ({len(pool)} patches; Ji et al. 2020 noise injection)",
            "train_source": "the 2650 unpaired source-domain images, LR only",
            "valid": "the 100 official track1 validation pairs"}

def prep_camerasr(ext: Path, st: Staging, scales) -> dict:
    "City100/City100_{NikonD5500,iPhoneX}/NNN{H,L}.PNG → <split>/x1/{hr,lr}/<camera>_NNN.png (021-100 train, 001-020 test)."
    found = {}
    for p in _images(ext):
        m = re.match(r"^(\d{3})([HL])$", p.stem, re.I)
        d = p.parent.name.lower()
        if not m or "city100" not in d: continue
        cam = "iphonex" if "iphone" in d else "nikon"
        found.setdefault((cam, m[1]), {})["hr" if m[2].upper() == "H" else "lr"] = p
    for (cam, nnn), d in sorted(found.items()):
        if len(d) != 2: log.warning("camerasr: %s %s has no partner, skipped", cam, nnn); continue
        st.add("train" if int(nnn) >= 21 else "test", 1, f"{cam}_{nnn}", d["lr"], d["hr"], camera=cam)
    return {"split": "NNN 021-100 train, 001-020 test (as the paper); same-size pairs (scale 1)"}

def prep_realsr_zero(ext: Path, st: Staging, scales) -> dict:
    "Every image of realsr-zero.zip → test/x4/lr/<stem>.png (LR only)."
    for p in _images(ext): st.add("test", 4, p.stem, p, None, paired=False)
    return {"note": "LR only: for no-reference metrics (NIQE)"}

def _bicubic_pairs(st: Staging, split: str, hr_dir: Path, lr_dirs: dict, scales) -> None:
    "DIV2K/Flickr2K style: <hr_dir>/0001.png with <lr_dirs[s]>/0001x<s>.png."
    hrs = {p.stem: p for p in _images(hr_dir)} if hr_dir.is_dir() else {}
    if not hrs: raise FetchError(f"no HR images found under {hr_dir.name} in the archive (unexpected layout)")
    for i, s in enumerate(scales):
        lrs = {re.sub(rf"x{s}$", "", p.stem, flags=re.I): p for p in _images(lr_dirs[s])} if lr_dirs[s].is_dir() else {}
        if not lrs: raise FetchError(f"no ×{s} LR images found under {lr_dirs[s]} in the archive (unexpected layout)")
        last = i == len(scales) - 1
        for k in sorted(hrs):
            if k not in lrs: log.warning("%s: %s has no ×%d LR, skipped", split, k, s); continue
            st.add(split, s, k, lrs[k], hrs[k], link=not last)  # HR shared by all scales: link, move on the last

def _find(ext: Path, dirname: str) -> Path:
    "The folder called `dirname` anywhere in the extracted tree (archives differ in their top level)."
    hits = sorted(p for p in ext.rglob(dirname) if p.is_dir())
    return hits[0] if hits else ext/dirname

def prep_div2k(ext: Path, st: Staging, scales) -> dict:
    "DIV2K_{train,valid}_HR/0001.png + DIV2K_{train,valid}_LR_bicubic/X4/0001x4.png → <split>/x<s>/{hr,lr}/0001.png."
    for sp in ("train", "valid"):
        lr_dirs = {s: _find(ext, f"DIV2K_{sp}_LR_bicubic")/f"X{s}" for s in scales}
        _bicubic_pairs(st, sp, _find(ext, f"DIV2K_{sp}_HR"), lr_dirs, scales)
    return {}

def prep_flickr2k(ext: Path, st: Staging, scales) -> dict:
    "Flickr2K/Flickr2K_HR/000001.png + Flickr2K_LR_bicubic/X4/000001x4.png → train/x<s>/{hr,lr}/000001.png."
    _bicubic_pairs(st, "train", _find(ext, "Flickr2K_HR"), {s: _find(ext, "Flickr2K_LR_bicubic")/f"X{s}" for s in scales}, scales)
    return {}

PREPARE = {"realsr_v3": prep_realsr_v3, "ntire2020": prep_ntire2020, "camerasr": prep_camerasr,
           "realsr_zero": prep_realsr_zero, "div2k": prep_div2k, "flickr2k": prep_flickr2k}

# ----------------------------------------------------------------------------------------------- driver

def is_prepared(root: Path, name: str, scales=()) -> bool:
    "True when `<root>/<name>/manifest.json` exists, lists the wanted scales and every listed file exists."
    p = root/name/MANIFEST
    if not p.is_file(): return False
    try: man = json.loads(p.read_text())
    except ValueError: return False
    have = {s["scale"] for s in man.get("subsets", [])}
    if scales and DATASETS[name].paired and not set(scales) <= have: return False
    return all((root/name/e[k]).is_file() for s in man["subsets"] for e in s["pairs"] for k in ("lr", "hr") if k in e)

def verify(root, name: str) -> list:
    "Re-hash every prepared file of `name`; returns the files that differ from the manifest."
    root = Path(root); man = json.loads((root/name/MANIFEST).read_text()); bad = []
    for s in man["subsets"]:
        for e in s["pairs"]:
            for k in ("lr", "hr"):
                if k in e and (not (root/name/e[k]).is_file() or file_hash(root/name/e[k]) != e[f"{k}_sha256"]): bad.append(e[k])
    return bad

def _default_scales(name: str, scales) -> tuple:
    info = DATASETS[name]
    if not scales: return (4,) if name in ("div2k", "flickr2k", "df2k") else info.scales
    bad = [s for s in scales if s not in info.scales]
    if bad: raise FetchError(f"{name}: scales {bad} not available; choose from {info.scales}")
    return tuple(sorted(set(scales)))

def fetch(name: str, root, mirror: str | None = None, scales=(), force: bool = False,
          known_hashes: dict | None = None, keep_archives: bool = True) -> Path:
    "Download, verify and prepare dataset `name` under `root`; a no-op when it is already prepared."
    if name not in DATASETS: raise FetchError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if name == "demo":
        print("demo is built in memory from scikit-image's photographs: nothing to download"); return Path()
    root = Path(root).expanduser().resolve(); root.mkdir(parents=True, exist_ok=True)
    scales = _default_scales(name, scales)
    out = root/name
    if not force and is_prepared(root, name, scales):
        print(f"{name}: already prepared in {out} (use --force to prepare again)"); return out
    if (out/MANIFEST).is_file() and DATASETS[name].paired:  # add scales to an existing preparation
        scales = tuple(sorted(set(scales) | {s["scale"] for s in json.loads((out/MANIFEST).read_text())["subsets"]}))
    if name == "df2k": return _fetch_df2k(root, mirror, scales, force, known_hashes)
    dl = root/DOWNLOADS
    records, manual = [], []
    for src in sources(name, scales):
        kh = (known_hashes or {}).get(src.filename, ...)
        try: records.append(download(src, dl, mirror, known_hash=kh))
        except ManualDownload as e: manual.append(str(e))
    if manual: raise ManualDownload(f"{name}: some files must be fetched by hand:\n" + "\n".join(manual))
    work = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=root))
    try:
        ext = work/"extract"
        for r in records:
            print(f"extracting {r['filename']}", file=sys.stderr)
            safe_extract(dl/r["filename"], ext/r["filename"])
        st = Staging(work/name)
        notes = PREPARE[name](ext, st, scales)
        if not st.subsets: raise FetchError(f"{name}: no images found in the archives (unexpected layout?)")
        _install(st, out, build_manifest(st, name, records, notes), work)
    finally: shutil.rmtree(work, ignore_errors=True)
    if not keep_archives:
        for r in records: (dl/r["filename"]).unlink(missing_ok=True)
    _summary(out)
    return out

def _install(st: Staging, out: Path, manifest: dict, work: Path) -> None:
    "Write the manifest last, then move the staged dataset into place with one rename."
    write_json(st.dir/MANIFEST, manifest)
    if out.exists(): os.replace(out, work/"previous")
    os.replace(st.dir, out)

def _fetch_df2k(root: Path, mirror, scales, force, known_hashes) -> Path:
    "DF2K = DIV2K train + Flickr2K, as hard links into df2k/train/x<s>/{hr,lr}/."
    parts = [fetch(n, root, mirror, scales, force=False, known_hashes=known_hashes) for n in ("div2k", "flickr2k")]
    work = Path(tempfile.mkdtemp(prefix=".df2k-partial-", dir=root))
    try:
        st, records = Staging(work/"df2k"), []
        for part in parts:
            man = json.loads((part/MANIFEST).read_text()); records += man["sources"]
            for s in man["subsets"]:
                if s["split"] != "train" or s["scale"] not in scales: continue
                for e in s["pairs"]: st.add("train", s["scale"], e["name"], part/e["lr"], part/e["hr"], link=True)
        _install(st, root/"df2k", build_manifest(st, "df2k", records, {"derived": "div2k train + flickr2k (hard links)"}), work)
    finally: shutil.rmtree(work, ignore_errors=True)
    _summary(root/"df2k")
    return root/"df2k"

def _summary(out: Path) -> None:
    man = json.loads((out/MANIFEST).read_text())
    subs = ", ".join(f"{s['split']} ×{s['scale']}: {s['count']}" for s in man["subsets"])
    print(f"{man['name']}: prepared in {out} ({subs})")

# ----------------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    "Command line: python -m data_scripts.fetch NAME [NAME ...] --root DIR [--mirror URL] [--scales 2 4]."
    ap = argparse.ArgumentParser(prog="criasr-fetch", description="Download, verify and prepare criasr datasets.",
                                 epilog="datasets: " + ", ".join(DATASETS))
    ap.add_argument("names", nargs="*", metavar="NAME", help="dataset(s) to prepare, or 'all'")
    ap.add_argument("--root", default=os.environ.get("CRIASR_DATA", "data"), help="folder for prepared datasets (default $CRIASR_DATA or ./data)")
    ap.add_argument("--mirror", help="replace the origin (scheme://host[:port]) of every direct download, e.g. http://127.0.0.1:8000/")
    ap.add_argument("--scales", type=int, nargs="+", default=(), help="scales to prepare (div2k/flickr2k/df2k default 4)")
    ap.add_argument("--force", action="store_true", help="prepare again even if a complete manifest exists")
    ap.add_argument("--delete-archives", action="store_true", help="delete downloaded archives after preparation")
    ap.add_argument("--verify", action="store_true", help="re-hash the prepared files of NAME against the manifest")
    ap.add_argument("--list", action="store_true", help="print the datasets table and exit")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if a.list or not a.names: print(datasets_table()); return 0
    names = [n for n in DATASETS if n != "demo"] if a.names == ["all"] else a.names
    code = 0
    for n in names:
        try:
            if a.verify:
                bad = verify(a.root, n)
                print(f"{n}: {'all files match the manifest' if not bad else f'{len(bad)} files differ: ' + ', '.join(bad[:10])}")
                code = code or (1 if bad else 0); continue
            fetch(n, a.root, a.mirror, a.scales, a.force, keep_archives=not a.delete_archives)
        except ManualDownload as e: print(str(e), file=sys.stderr); code = 2
        except (FetchError, FileNotFoundError) as e: print(f"error: {e}", file=sys.stderr); code = 1
    return code

if __name__ == "__main__": sys.exit(main())
