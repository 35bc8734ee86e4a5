"Readers: every image mode, broken files, size checks, crops/augmentation, demo set, deterministic resumable loader."
import json, logging, os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from criasr import data as D
from criasr.data import (DataError, ImageReadError, PairedImages, get_dataset, make_train_loader, read_image,
                         decode_image, demo_pairs)

RNG = np.random.default_rng(0)
RGB = (RNG.random((12, 16, 3)) * 255).astype(np.uint8)

# ------------------------------------------------------------------------------------------- read_image: every mode

def _save(p, im, **kw): im.save(p, **kw); return p

def test_rgb_png_and_upper_case_extension(tmp_path):
    a, info = read_image(_save(tmp_path/"x.PNG", Image.fromarray(RGB)))
    assert a.dtype == np.float32 and a.shape == (12, 16, 3) and info == dict(bit_depth=8, alpha=None, gray=False)
    np.testing.assert_allclose(a, RGB / 255, atol=1e-7)

def test_gray_8_and_16_bit(tmp_path):
    a, info = read_image(_save(tmp_path/"g.png", Image.fromarray(RGB[..., 0])))
    assert info["gray"] and info["bit_depth"] == 8 and a.shape == (12, 16, 3)
    np.testing.assert_allclose(a[..., 0], a[..., 2]); np.testing.assert_allclose(a[..., 1], RGB[..., 0] / 255, atol=1e-7)
    g16 = (RNG.random((12, 16)) * 65535).astype(np.uint16)
    a, info = read_image(_save(tmp_path/"g16.png", Image.fromarray(g16)))
    assert info["bit_depth"] == 16 and info["gray"]
    np.testing.assert_allclose(a[..., 0], g16 / 65535, atol=1e-6)

def test_rgb_16_bit(tmp_path):
    cv2 = pytest.importorskip("cv2")
    a16 = (RNG.random((12, 16, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path/"c16.png"), a16[..., ::-1])
    a, info = read_image(tmp_path/"c16.png")
    assert info["bit_depth"] == 16 and not info["gray"]
    np.testing.assert_allclose(a, a16 / 65535, atol=1e-6)   # full 16-bit precision, RGB order
    rgba16 = np.dstack([a16, np.full((12, 16), 65535, np.uint16)])
    cv2.imwrite(str(tmp_path/"c16a.png"), rgba16[..., [2, 1, 0, 3]])
    a, info = read_image(tmp_path/"c16a.png")
    np.testing.assert_allclose(a, a16 / 65535, atol=1e-6); np.testing.assert_allclose(info["alpha"], 1.0)

def png_bytes(a: np.ndarray) -> bytes:
    "A 16-bit PNG of H×W×C uint16 `a` (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA), written by hand from the PNG spec."
    import struct, zlib
    h, w, c = a.shape
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))   # filter 0 on every row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

@pytest.mark.parametrize("chans", [1, 2, 3, 4])
def test_16_bit_png_every_colour_type_full_precision(tmp_path, chans):
    "16-bit gray (type 0), gray+alpha (4), RGB (2), RGBA (6): full precision, right gray/alpha/bit_depth info."
    pytest.importorskip("cv2")
    q = (np.random.default_rng(chans).random((7, 9, chans)) * 65535).astype(np.uint16)
    q[0, 0] = 1; q[0, 1] = 65534                      # values an 8-bit reduction would lose
    p = tmp_path/f"c{chans}.png"; p.write_bytes(png_bytes(q))
    a, info = read_image(p)
    color = q[..., :1] if chans <= 2 else q[..., :3]
    assert info["bit_depth"] == 16 and info["gray"] == (chans <= 2) and a.shape == (7, 9, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(np.round(a * 65535).astype(np.uint16), np.broadcast_to(color, (7, 9, 3)))
    if chans in (2, 4):
        assert info["alpha"].shape == (7, 9) and info["alpha"].dtype == np.float32
        np.testing.assert_array_equal(np.round(info["alpha"] * 65535).astype(np.uint16), q[..., -1])
    else: assert info["alpha"] is None
    b, binfo = decode_image(p)                         # the integer view keeps the 16-bit values too
    assert b.dtype == np.uint16 and binfo["bit_depth"] == 16

def test_rgba_la_palette(tmp_path):
    alpha = np.linspace(0, 255, 16 * 12).reshape(12, 16).astype(np.uint8)
    a, info = read_image(_save(tmp_path/"a.png", Image.fromarray(np.dstack([RGB, alpha]))))
    np.testing.assert_allclose(a, RGB / 255, atol=1e-7); np.testing.assert_allclose(info["alpha"], alpha / 255, atol=1e-7)
    a, info = read_image(_save(tmp_path/"la.png", Image.fromarray(np.dstack([RGB[..., 0], alpha]), "LA")))
    assert info["gray"] and info["alpha"].shape == (12, 16)
    pal = Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=16)
    a, info = read_image(_save(tmp_path/"p.png", pal))
    np.testing.assert_allclose(a, np.asarray(pal.convert("RGB")) / 255, atol=1e-7)
    pal.info["transparency"] = 0
    a, info = read_image(_save(tmp_path/"pt.png", pal, transparency=0))
    assert info["alpha"] is not None and info["alpha"].min() == 0
    a, info = read_image(_save(tmp_path/"bw.png", Image.fromarray(RGB[..., 0] > 128)))
    assert set(np.unique(a)) <= {0.0, 1.0}

def test_cmyk_jpeg(tmp_path):
    p = _save(tmp_path/"c.jpg", Image.fromarray(RGB).convert("CMYK"), quality=98)
    a, info = read_image(p)
    assert a.shape == (12, 16, 3) and np.abs(a - RGB / 255).mean() < 0.06

@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation(tmp_path, orientation):
    im = Image.fromarray(RGB); ex = im.getexif(); ex[0x0112] = orientation
    p = _save(tmp_path/"o.png", im, exif=ex)
    a, _ = read_image(p)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) / 255
    np.testing.assert_allclose(a, ref, atol=1e-7)

@pytest.mark.parametrize("content,msg", [(b"", "zero-byte"), (b"not an image at all", "cannot decode"),
                                         ("trunc", "cannot decode")])
def test_broken_files_name_the_file(tmp_path, content, msg):
    if content == "trunc":
        full = _save(tmp_path/"full.png", Image.fromarray((RNG.random((64, 64, 3)) * 255).astype(np.uint8))).read_bytes()
        content = full[: len(full) // 2]
    p = tmp_path/"bad_file.png"; p.write_bytes(content)
    with pytest.raises(ImageReadError, match=f"bad_file.png.*{msg}|{msg}"):
        read_image(p)
    with pytest.raises(ImageReadError) as e: read_image(p)
    assert "bad_file.png" in str(e.value)

def test_truncated_jpeg(tmp_path):
    full = _save(tmp_path/"f.jpg", Image.fromarray((RNG.random((64, 64, 3)) * 255).astype(np.uint8))).read_bytes()
    (tmp_path/"t.jpg").write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageReadError, match="t.jpg"): read_image(tmp_path/"t.jpg")

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"): read_image(tmp_path/"nope.png")

# ------------------------------------------------------------------------------------------- a prepared folder dataset

def make_prepared(root: Path, name="div2k", n=4, scale=4, hr=32, broken=(), mismatch=(), split="train"):
    "Write a tiny dataset in the prepared layout with its manifest."
    pairs = []
    for i in range(n):
        k = f"{i:04d}"
        h = (np.random.default_rng(i).random((hr, hr + 8, 3)) * 255).astype(np.uint8)
        l = np.asarray(Image.fromarray(h).resize(((hr + 8) // scale, hr // scale), Image.BICUBIC))
        if i in mismatch: l = l[:-1]
        d = root/name/split/f"x{scale}"
        (d/"hr").mkdir(parents=True, exist_ok=True); (d/"lr").mkdir(parents=True, exist_ok=True)
        Image.fromarray(h).save(d/"hr"/f"{k}.png"); Image.fromarray(l).save(d/"lr"/f"{k}.png")
        if i in broken: (d/"lr"/f"{k}.png").write_bytes(b"")
        pairs.append(dict(name=k, lr=f"{split}/x{scale}/lr/{k}.png", hr=f"{split}/x{scale}/hr/{k}.png"))
    man = dict(name=name, version=1, sources=[], subsets=[dict(split=split, scale=scale, paired=True, count=n, pairs=pairs)])
    (root/name/"manifest.json").write_text(json.dumps(man))
    return root

def test_folder_dataset_reads_and_crops(tmp_path):
    root = make_prepared(tmp_path)
    ds = get_dataset("div2k", root, "train", scale=4, patch=16)
    assert ds.augment and "div2k/train" in repr(ds) and ds.cache == "disk"           # the disk cache is the default
    assert sorted(ds.names + get_dataset("div2k", root, "val").names) == ["0000", "0001", "0002", "0003"]
    it = ds[1]
    assert it["lr"].shape == (3, 4, 4) and it["hr"].shape == (3, 16, 16) and it["name"] == ds.names[1]
    full = get_dataset("div2k", root, "train", scale=4)
    assert full[0]["hr"].shape == (3, 32, 40) and not full.augment

def test_size_mismatch_names_both_files(tmp_path):
    root = make_prepared(tmp_path, mismatch=(2,))
    ds = next(d for d in (get_dataset("div2k", root, sp) for sp in ("train", "val")) if "0002" in d.names)
    with pytest.raises(DataError) as e: ds[ds.names.index("0002")]
    assert "hr/0002.png" in str(e.value) and "lr/0002.png" in str(e.value) and "expected HR = 4 × LR" in str(e.value)

def test_skip_drops_bad_pairs_for_the_run_logged_once(tmp_path, caplog):
    root = make_prepared(tmp_path, n=5, broken=(1,), mismatch=(2,))
    pairs = [dict(name=f"{i:04d}", lr=root/f"div2k/train/x4/lr/{i:04d}.png", hr=root/f"div2k/train/x4/hr/{i:04d}.png")
             for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="criasr.data"):
        ds = PairedImages(pairs, scale=4, patch=16, augment=True, on_error="skip", label="toy")
        assert ds.names == ["0000", "0003", "0004"] and ds.skipped == ["0001", "0002"]
        it = iter(make_train_loader(ds, 3, seed=0, num_workers=0))
        drawn = [n for _ in range(4) for n in next(it)["name"]]   # 4 epochs of the 3 good pairs
    assert {n: drawn.count(n) for n in set(drawn)} == {"0000": 4, "0003": 4, "0004": 4}   # uniform: no neighbour drawn twice
    assert caplog.text.count("skipping pair '0001'") == 1 and "zero-byte" in caplog.text
    assert caplog.text.count("skipping pair '0002'") == 1 and "size mismatch" in caplog.text
    # get_dataset passes on_error through (train and val together hold the 5 pairs); the default raises, naming the file
    got = [get_dataset("div2k", root, sp, on_error="skip", cache=False) for sp in ("train", "val")]
    assert sorted(got[0].skipped + got[1].skipped) == ["0001", "0002"] and sorted(got[0].names + got[1].names) == ["0000", "0003", "0004"]
    with pytest.raises(ImageReadError, match="0001.png"):
        full = PairedImages(pairs, scale=4); full[1]

def test_patch_larger_than_image(tmp_path):
    root = make_prepared(tmp_path)
    with pytest.raises(DataError, match=r"\d{4}.png: image 40×32 \(HR px\) is smaller than patch=64"):
        get_dataset("div2k", root, "train", patch=64)[0]
    with pytest.raises(ValueError, match="multiple of scale"): get_dataset("div2k", root, patch=30)

def test_get_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="known datasets: realsr_v3, ntire2020"): get_dataset("div3k")
    with pytest.raises(FileNotFoundError, match=r"criasr-fetch realsr_v3 --root"): get_dataset("realsr_v3", tmp_path)
    with pytest.raises(ValueError, match="did you mean 'realsr_v3'"): get_dataset("realsr_v2")
    with pytest.raises(ValueError, match="choose one of"): get_dataset("demo", split="nope")
    with pytest.raises(ValueError, match="camera"): get_dataset("realsr_v3", tmp_path, camera="sony")
    with pytest.raises(ValueError, match="on_error"): get_dataset("demo", on_error="ignore")

# ------------------------------------------------------------------------------------------- crops, augmentation, determinism

def _toy(augment=True, seed=0):
    lr = (np.random.default_rng(3).random((10, 12, 3)) * 255).astype(np.uint8)
    hr = lr.repeat(4, 0).repeat(4, 1)   # each LR pixel is a 4×4 HR block: alignment survives any flip/rotation
    return PairedImages([dict(name="t", lr=lr, hr=hr)], scale=4, patch=16, augment=augment, seed=seed)

def test_crops_aligned_and_deterministic():
    ds = _toy()
    seen = set()
    for draw in range(40):
        it = ds[(0, draw)]
        assert torch.equal(it["hr"][:, ::4, ::4], it["lr"])
        assert torch.equal(ds[(0, draw)]["hr"], it["hr"])
        seen.add(it["hr"].numpy().tobytes())
    assert len(seen) > 30
    assert not torch.equal(_toy(seed=1)[(0, 3)]["hr"], ds[(0, 3)]["hr"])

def test_augmentation_covers_the_8_symmetries():
    hr = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    ds = PairedImages([dict(name="t", lr=hr[::4, ::4].copy(), hr=hr)], scale=4, patch=16, augment=True)
    outs = {ds[(0, d)]["hr"].numpy().tobytes() for d in range(200)}
    assert len(outs) == 8

def test_demo_dataset():
    tr, te = get_dataset("demo", split="train", scale=4), get_dataset("demo", split="test", scale=4)
    va = get_dataset("demo", split="val", scale=4)
    assert len(tr) == 6 and va.names == ["camera", "coins"] and te.names == ["chelsea", "coffee"]
    assert not set(tr.names) & set(te.names) and not set(tr.names) & set(va.names) and not set(va.names) & set(te.names)
    assert va[0]["hr"].shape[0] == 3 and va[1]["lr"].shape[-2:] == tuple(s // 4 for s in va[1]["hr"].shape[-2:])
    for it in (tr[0], te[1]):
        assert it["hr"].shape[-2:] == tuple(4 * s for s in it["lr"].shape[-2:]) and max(it["hr"].shape) <= 384
        assert it["lr"].dtype == torch.float32 and 0 <= it["lr"].min() and it["lr"].max() <= 1
    one = get_dataset("demo", split="test", scale=1)[0]
    assert one["lr"].shape == one["hr"].shape
    assert get_dataset("demo", split="test", scale=2)[0]["lr"].shape[-1] * 2 == one["hr"].shape[-1]
    # degraded, not identical; deterministic across rebuilds
    lr0 = demo_pairs("test", 2)[0]["lr"].copy()
    D._DEMO_CACHE.pop(("test", 2))
    np.testing.assert_array_equal(demo_pairs("test", 2)[0]["lr"], lr0)

def test_demo_uses_only_offline_images(monkeypatch, tmp_path):
    "The demo set is rebuilt, identical, from the photographs shipped inside scikit-image: no download cache, no pooch, no network."
    import socket
    import skimage.data._fetchers as fetchers
    before = {s: [(p["name"], p["lr"].copy(), p["hr"].copy()) for p in demo_pairs(s, 4)] for s in ("train", "val", "test")}
    monkeypatch.setattr(fetchers, "_image_fetcher", None)                        # no pooch: an image not shipped would raise
    monkeypatch.setattr(fetchers, "_skip_pytest_case_requiring_pooch", lambda name: None)   # (under pytest it would skip instead)
    monkeypatch.setattr(fetchers, "data_dir", str(tmp_path / "no_cache" / "data"))  # and no earlier download to fall back on
    def no_network(*a, **k): raise AssertionError("building the demo set tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(D, "_DEMO_CACHE", {})                                   # rebuilt from the image files
    for s, pairs in before.items():
        again = demo_pairs(s, 4)
        assert [p["name"] for p in again] == [n for n, _, _ in pairs]
        for p, (_, lr, hr) in zip(again, pairs):
            np.testing.assert_array_equal(p["hr"], hr); np.testing.assert_array_equal(p["lr"], lr)
    with pytest.raises(ModuleNotFoundError):                                    # the set-up does refuse a non-shipped file
        fetchers._fetch("data/cells3d.tif")

# ------------------------------------------------------------------------------------------- train loader

def test_loader_pure_function_of_seed_iter_rank():
    ds = get_dataset("demo", split="train", scale=4, patch=32)
    it = iter(make_train_loader(ds, 3, seed=5, num_workers=0))
    batches = [next(it) for _ in range(5)]
    assert batches[0]["lr"].shape == (3, 3, 8, 8) and batches[0]["hr"].shape == (3, 3, 32, 32)
    res = next(iter(make_train_loader(ds, 3, seed=5, start_iter=4, num_workers=0)))
    assert torch.equal(res["hr"], batches[4]["hr"]) and res["name"] == batches[4]["name"]
    other = next(iter(make_train_loader(ds, 3, seed=6, num_workers=0)))
    assert not torch.equal(other["hr"], batches[0]["hr"])
    names = [n for b in batches[:2] for n in b["name"]]
    assert sorted(names) == sorted(ds.names)   # one epoch (6 images) covers every image once

def test_loader_independent_of_workers_and_ranks_disjoint():
    ds = get_dataset("demo", split="train", scale=2, patch=16)
    ref = iter(make_train_loader(ds, 2, seed=1, start_iter=3, num_workers=0))
    w2 = iter(make_train_loader(ds, 2, seed=1, start_iter=3, num_workers=2))
    for _ in range(4):
        a, b = next(ref), next(w2)
        assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
    s = D.InfiniteBatchSampler(6, 3, seed=0, rank=0, world_size=2), D.InfiniteBatchSampler(6, 3, seed=0, rank=1, world_size=2)
    k0, k1 = s[0].batch(0), s[1].batch(0)
    assert not {k[0] for k in k0} & {k[0] for k in k1}   # ranks share the epoch permutation, disjoint slices

def test_loader_needs_patches():
    with pytest.raises(ValueError, match="patch="): make_train_loader(get_dataset("demo", split="test"), 2)

def test_disk_cache_matches_and_recovers(tmp_path):
    root = make_prepared(tmp_path, n=3)
    plain = get_dataset("div2k", root, "train", patch=16, cache=False)
    disk = get_dataset("div2k", root, "train", patch=16, cache="disk")
    n = len(plain)
    for i in range(n): assert torch.equal(plain[(i, 9)]["hr"], disk[(i, 9)]["hr"])
    files = sorted((root/"div2k"/".decoded").glob("*.npy"))
    assert len(files) == 2 * n and not list((root/"div2k"/".decoded").glob(".*"))   # no temp files left
    files[0].write_bytes(b"\x93NUMPY broken")                      # a torn cache file is rebuilt, not trusted
    fresh = get_dataset("div2k", root, "train", patch=16, cache="disk")
    for i in range(n): assert torch.equal(plain[(i, 9)]["lr"], fresh[(i, 9)]["lr"])


def test_folder_passed_as_image(tmp_path):
    with pytest.raises(IsADirectoryError, match="folder"): read_image(tmp_path)

# ------------------------------------------------------------------------------------------- the disk cache: default, bounded, optional

def test_disk_cache_is_bounded_and_can_move_or_be_off(tmp_path, monkeypatch, caplog):
    root = make_prepared(tmp_path/"data", n=3)
    monkeypatch.setenv("CRIASR_CACHE_LIMIT_GB", "0.000001")                # 1 kB: three 32×40 pairs need ~12 kB
    with caplog.at_level(logging.WARNING, logger="criasr.data"):
        ds = get_dataset("div2k", root, "train", patch=16)
    assert ds.cache is False and "CRIASR_CACHE_LIMIT_GB" in caplog.text and str(root/"div2k"/".decoded") in caplog.text
    ds[0]; assert not (root/"div2k"/".decoded").exists()                   # nothing written past the bound
    monkeypatch.delenv("CRIASR_CACHE_LIMIT_GB")
    moved = get_dataset("div2k", root, "train", patch=16, cache_dir=tmp_path/"elsewhere")
    moved[0]; assert moved.cache == "disk" and len(list((tmp_path/"elsewhere").glob("*.npy"))) == 2
    off = get_dataset("div2k", root, "train", patch=16, cache=False)
    off[0]; assert off.cache is False and not (root/"div2k"/".decoded").exists()
    assert get_dataset("demo", split="test").cache is False                # demo lives in memory already

def test_unwritable_disk_cache_falls_back_once(tmp_path, monkeypatch, caplog):
    root = make_prepared(tmp_path, n=3)
    def refuse(path, data): raise OSError(30, f"could not write {path}: Read-only file system")
    monkeypatch.setattr(D, "atomic_write", refuse)
    ref = get_dataset("div2k", root, "train", cache=False)
    with caplog.at_level(logging.WARNING, logger="criasr.data"):
        ds = get_dataset("div2k", root, "train")
        got = [ds[i]["hr"] for i in range(len(ds))]
    assert all(torch.equal(g, ref[i]["hr"]) for i, g in enumerate(got)) and ds.cache is False
    assert caplog.text.count("cannot write the decoded-patch cache") == 1

# ------------------------------------------------------------------------------------------- three disjoint splits, every reader

from criasr import fetch as FE
from criasr.runs import write_json

def _tiny(src: Path, name: str, hr_scale: int, seed: int) -> tuple:
    "An LR/HR PNG pair of sizes 6×8 · scale, written under `src`."
    a = (np.random.default_rng(seed).random((6 * hr_scale, 8 * hr_scale, 3)) * 255).astype(np.uint8)
    src.mkdir(parents=True, exist_ok=True)
    hr, lr = src/f"{name}_hr{seed}.png", src/f"{name}_lr{seed}.png"
    Image.fromarray(a).save(hr); Image.fromarray(a[::hr_scale, ::hr_scale]).save(lr)
    return lr, hr

def fixture_dataset(root: Path, name: str, layout: dict) -> Path:
    "Write dataset `name` with the fetch chapter's Staging + build_manifest: layout maps (split, scale) to [(image, camera)]."
    st, k = FE.Staging(root/f".{name}-stage"), 0
    for (split, scale), items in layout.items():
        for img, cam in items:
            k += 1
            lr, hr = _tiny(root/".src", img, max(scale, 1), k)
            st.add(split, scale, img, lr, None if name == "realsr_zero" or split == "train_source" else hr, camera=cam,
                   paired=not (name == "realsr_zero" or split == "train_source"))
    write_json(st.dir/"manifest.json", FE.build_manifest(st, name, [], {}))
    os.replace(st.dir, root/name)
    return root

def _ids(a, b, fmt="{:04d}"): return [fmt.format(i) for i in range(a, b)]

LAYOUTS = {
    "realsr_v3": {("train", 4): [(f"{c}_{i:03d}", c.lower()) for c in ("Canon", "Nikon") for i in range(1, 16)],
                  ("test", 4): [(f"{c}_{i:03d}", c.lower()) for c in ("Canon", "Nikon") for i in range(101, 104)]},
    "ntire2020": {("train", 4): [(n, None) for n in _ids(1, 41)], ("valid", 4): [(n, None) for n in _ids(801, 806)],
                  ("train_source", 4): [(n, None) for n in _ids(5001, 5004)]},
    "camerasr": {("train", 1): [(f"{c}_{i:03d}", c) for c in ("iphonex", "nikon") for i in range(21, 41)],
                 ("test", 1): [(f"{c}_{i:03d}", c) for c in ("iphonex", "nikon") for i in range(1, 4)]},
    "div2k": {("train", 4): [(n, None) for n in _ids(1, 31)], ("valid", 4): [(n, None) for n in _ids(801, 804)]},
    "flickr2k": {("train", 4): [(n, None) for n in _ids(1, 31, "{:06d}")]},
    "df2k": {("train", 4): [(n, None) for n in _ids(1, 31) + _ids(1, 31, "{:06d}")]},
    "realsr_zero": {("test", 4): [(n, None) for n in ("a", "b", "c")]},
}

@pytest.mark.parametrize("name", list(LAYOUTS))
def test_splits_disjoint_by_image_for_every_reader(tmp_path, name):
    root = fixture_dataset(tmp_path, name, LAYOUTS[name])
    info, scale = D.DATASETS[name], next(iter(LAYOUTS[name]))[1]
    prepared = {sp: [n for n, c in items if info.default_camera in (None, c)] for (sp, _), items in LAYOUTS[name].items()}
    got = {}
    for sp in ("train", "val", "test"):
        try: got[sp] = get_dataset(name, root, sp, scale=scale).names
        except ValueError as e: got[sp] = str(e)
    if "train" in prepared:
        assert not set(got["train"]) & set(got["val"])                                   # train and val share no image
        assert sorted(got["train"] + got["val"]) == sorted(prepared["train"])             # val is cut from train, by image
        assert 1 <= len(got["val"]) < len(prepared["train"]) / 2
    else:
        assert "choose one of ('test',)" in got["train"] and "choose one of ('test',)" in got["val"]
    if info.test:
        assert sorted(got["test"]) == sorted(prepared[info.test])                          # test is the paper's test folder
        assert not set(got["test"]) & set(got["val"] if "train" in prepared else [])
        assert not set(got["test"]) & set(got["train"] if "train" in prepared else [])
    else:
        assert "not available" in got["test"]
    if info.cameras:                                   # a camera filter only filters: the held-out images stay held out
        for sp in ("train", "val"):
            per_cam = {c: get_dataset(name, root, sp, scale=scale, camera=c).names for c in info.cameras}
            expect = per_cam[info.default_camera] if info.default_camera else sum(per_cam.values(), [])
            assert sorted(got[sp]) == sorted(expect)

def test_camerasr_holds_out_scenes_for_both_cameras(tmp_path):
    root = fixture_dataset(tmp_path, "camerasr", LAYOUTS["camerasr"])
    scene = lambda names: {n.split("_")[1] for n in names}
    v_i, v_n = (get_dataset("camerasr", root, "val", scale=1, camera=c).names for c in ("iphonex", "nikon"))
    t_i, t_n = (get_dataset("camerasr", root, "train", scale=1, camera=c).names for c in ("iphonex", "nikon"))
    assert scene(v_i) == scene(v_n) and not scene(v_i) & scene(t_n) and not scene(v_n) & scene(t_i)

def test_ntire2020_val_never_holds_a_test_image(tmp_path):
    "NTIRE 2020's 'valid' pairs are the paper's test set: val must come from train, whatever the names."
    layout = {("train", 4): [(n, None) for n in _ids(1, 61)], ("valid", 4): [(n, None) for n in _ids(801, 821)]}
    root = fixture_dataset(tmp_path, "ntire2020", layout)
    val, test = get_dataset("ntire2020", root, "val"), get_dataset("ntire2020", root, "test")
    assert not set(val.names) & set(test.names) and len(test) == 20
    assert all(Path(p["hr"]).parts[-4] == "train" for p in val.pairs)                 # read from train/x4/, never valid/x4/
    test_files = {Path(p["hr"]).resolve() for p in test.pairs} | {Path(p["lr"]).resolve() for p in test.pairs}
    assert not test_files & ({Path(p["hr"]).resolve() for p in val.pairs} | {Path(p["lr"]).resolve() for p in val.pairs})
    for alias in ("valid", "validation"):
        with pytest.raises(ValueError, match="'val' is held out from train"): get_dataset("ntire2020", root, alias)

