"""Data pipeline throughput: patches/s of `make_train_loader` with 0 and 2 DataLoader workers.

    OMP_NUM_THREADS=1 python benchmarks/data.py [--batches 30] [--batch-size 16] [--patch 128] [--size 1020x680]

Two datasets: `demo` (in memory) and a generated folder dataset of PNGs in the prepared layout (DIV2K-like HR size
by default), decoded from PNG on every sample, and the same with `cache="disk"` (decoded once to memory-mapped .npy).
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np, torch
from PIL import Image

from criasr.data import get_dataset, make_train_loader

def make_folder(root: Path, n: int, w: int, h: int, scale: int = 4) -> Path:
    "n random-texture PNG pairs in <root>/div2k/train/x<scale>/{hr,lr} + manifest (so get_dataset('div2k') reads it)."
    pairs, d = [], root/"div2k"/"train"/f"x{scale}"
    (d/"hr").mkdir(parents=True); (d/"lr").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = (rng.random((h // 16, w // 16, 3)) * 255).astype(np.uint8)  # smooth-ish content compresses like a photo
        hr = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
        hr = np.clip(hr + rng.normal(0, 6, hr.shape), 0, 255).astype(np.uint8)
        lr = np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC))
        k = f"{i:04d}"
        Image.fromarray(hr).save(d/"hr"/f"{k}.png"); Image.fromarray(lr).save(d/"lr"/f"{k}.png")
        pairs.append(dict(name=k, lr=f"train/x{scale}/lr/{k}.png", hr=f"train/x{scale}/hr/{k}.png"))
    man = dict(name="div2k", version=1, sources=[], subsets=[dict(split="train", scale=scale, paired=True, count=n, pairs=pairs)])
    (root/"div2k"/"manifest.json").write_text(json.dumps(man))
    return root

def bench(ds, workers: int, batches: int, bs: int) -> float:
    "Patches per second over `batches` batches, after one warm-up batch (worker start-up excluded)."
    it = iter(make_train_loader(ds, bs, seed=0, num_workers=workers))
    next(it)
    t = time.perf_counter()
    for _ in range(batches): next(it)
    return batches * bs / (time.perf_counter() - t)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=128, help="HR patch side")
    ap.add_argument("--size", default="1020x680", help="HR size WxH of the generated folder dataset")
    ap.add_argument("--images", type=int, default=12)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    w, h = map(int, a.size.split("x"))
    rows = []
    demo = get_dataset("demo", split="train", scale=4, patch=a.patch)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp), a.images, w, h)
        folder = get_dataset("div2k", root, split="train", scale=4, patch=a.patch, cache=False)
        disk = get_dataset("div2k", root, split="train", scale=4, patch=a.patch, cache="disk")
        for i in range(len(disk)): disk[i]   # decode once into the .npy cache
        for label, ds in (("demo (memory)", demo), (f"folder PNG {w}x{h}", folder), (f"folder {w}x{h} cache=disk", disk)):
            for nw in (0, 2):
                rows.append((label, nw, bench(ds, nw, a.batches, a.batch_size)))
    print(f"patch {a.patch} HR / {a.patch // 4} LR, batch {a.batch_size}, {a.batches} batches, cpu count {os.cpu_count()}")
    print(f"{'dataset':32s} {'workers':>7s} {'patches/s':>10s}")
    for label, nw, r in rows: print(f"{label:32s} {nw:7d} {r:10.1f}")
    return rows

if __name__ == "__main__": main()
