"Readers: every image mode, broken files, size checks, crops/augmentation, demo set, deterministic resumable loader."
import json, logging
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

@pytest.mark.parametrize("chans", [1, 2, 3, 4])
def test_16_bit_png_every_colour_type_full_precision(tmp_path, chans):
    "16-bit gray (type 0), gray+alpha (4), RGB (2), RGBA (6): full precision, right gray/alpha/bit_depth info."
    pytest.importorskip("cv2")
    from criasr.infer import png_bytes
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
    assert len(ds) == 4 and ds.augment and "div2k/train" in repr(ds)
    it = ds[1]
    assert it["lr"].shape == (3, 4, 4) and it["hr"].shape == (3, 16, 16) and it["name"] == "0001"
    full = get_dataset("div2k", root, "train", scale=4)
    assert full[0]["hr"].shape == (3, 32, 40) and not full.augment

def test_size_mismatch_names_both_files(tmp_path):
    root = make_prepared(tmp_path, mismatch=(2,))
    ds = get_dataset("div2k", root, "train")
    with pytest.raises(DataError) as e: ds[2]
    assert "hr/0002.png" in str(e.value) and "lr/0002.png" in str(e.value) and "expected HR = 4 × LR" in str(e.value)

def test_skip_logs_and_substitutes(tmp_path, caplog):
    root = make_prepared(tmp_path, broken=(1,), mismatch=(2,))
    ds = get_dataset("div2k", root, "train", on_error="skip")
    with caplog.at_level(logging.WARNING, logger="criasr.data"):
        assert ds[1]["name"] == "0003" and ds[2]["name"] == "0003"
    assert "0001" in caplog.text and "zero-byte" in caplog.text and "0002" in caplog.text
    with pytest.raises(ImageReadError, match="0001.png"): get_dataset("div2k", root, "train")[1]

def test_patch_larger_than_image(tmp_path):
    root = make_prepared(tmp_path)
    with pytest.raises(DataError, match=r"0000.png: image 40×32 \(HR px\) is smaller than patch=64"):
        get_dataset("div2k", root, "train", patch=64)[0]
    with pytest.raises(ValueError, match="multiple of scale"): get_dataset("div2k", root, patch=30)

def test_get_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="known datasets: realsr_v3, ntire2020"): get_dataset("div3k")
    with pytest.raises(FileNotFoundError, match=r"python -m data_scripts.fetch realsr_v3 --root"): get_dataset("realsr_v3", tmp_path)
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
    assert len(tr) == 6 and te.names == ["chelsea", "coffee"] and not set(tr.names) & set(te.names)
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

def test_demo_uses_only_offline_images(monkeypatch):
    import skimage.data
    for n in D.DEMO_IMAGES: assert getattr(skimage.data, n)() is not None  # would raise if it needed a download

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
    for i in range(3): assert torch.equal(plain[(i, 9)]["hr"], disk[(i, 9)]["hr"])
    files = sorted((root/"div2k"/".decoded").glob("*.npy"))
    assert len(files) == 6
    files[0].write_bytes(b"\x93NUMPY broken")                      # a torn cache file is rebuilt, not trusted
    fresh = get_dataset("div2k", root, "train", patch=16, cache="disk")
    for i in range(3): assert torch.equal(plain[(i, 9)]["lr"], fresh[(i, 9)]["lr"])


def test_folder_passed_as_image(tmp_path):
    with pytest.raises(IsADirectoryError, match="folder"): read_image(tmp_path)
