"""Data pipeline throughput: patches/s of `make_train_loader` on a folder dataset, decoding PNGs per patch (A, `cache=False`)
against the default decoded-patch disk cache (B, `cache=None` → "disk"), in paired rounds A,B / B,A / ... with medians.

    OMP_NUM_THREADS=1 python benchmarks/data.py [--rounds 5] [--batches 20] [--batch-size 16] [--patch 128]
                                                [--size 1020x680] [--images 12] [--workers 0]

The folder dataset is generated in the prepared layout (DIV2K-like HR size by default) in a temporary folder. The disk
cache is filled once before the first round (that one-off decode is reported separately), so B measures the steady
state a training run sees after its first pass over the images. Alternating A and B exposes both to the same machine
load; the medians and the median of the per-round ratios B/A are the numbers to quote.
"""
import argparse, json, os, statistics, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np, torch
from PIL import Image

from criasr.data import get_dataset, make_train_loader
from common import load_line

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
        pairs.append(dict(name=k, lr=f"train/x{scale}/lr/{k}.png", hr=f"train/x{scale}/hr/{k}.png",
                          lr_size=[w // scale, h // scale], hr_size=[w, h]))
    man = dict(name="div2k", version=1, sources=[], subsets=[dict(split="train", scale=scale, paired=True, count=n, pairs=pairs)])
    (root/"div2k"/"manifest.json").write_text(json.dumps(man))
    return root

def bench(ds, workers: int, batches: int, bs: int, seed: int) -> float:
    "Patches per second over `batches` batches, after one warm-up batch (worker start-up excluded)."
    it = iter(make_train_loader(ds, bs, seed=seed, num_workers=workers))
    next(it)
    t = time.perf_counter()
    for _ in range(batches): next(it)
    return batches * bs / (time.perf_counter() - t)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds (A,B then B,A, ...)")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=128, help="HR patch side")
    ap.add_argument("--size", default="1020x680", help="HR size WxH of the generated folder dataset")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    w, h = map(int, a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp), a.images, w, h)
        # the train split (its held-out val images are not read): A decodes PNGs per patch, B reads the default cache
        A = get_dataset("div2k", root, split="train", scale=4, patch=a.patch, cache=False)
        B = get_dataset("div2k", root, split="train", scale=4, patch=a.patch)          # the default: disk cache
        assert B.cache == "disk", f"the default cache did not apply ({B.cache!r})"
        t = time.perf_counter()
        for i in range(len(B)): B[i]                                                   # fill the cache once
        fill = time.perf_counter() - t
        print(load_line("before"), flush=True)
        rows = []
        for r in range(a.rounds):                                                      # A,B / B,A / ...
            first, second = (A, B) if r % 2 == 0 else (B, A)
            x = bench(first, a.workers, a.batches, a.batch_size, seed=r)
            y = bench(second, a.workers, a.batches, a.batch_size, seed=r)
            rows.append((x, y) if r % 2 == 0 else (y, x))
        print(load_line("after "), flush=True)
    print(f"folder dataset: {len(A)} PNG pairs {w}x{h}, patch {a.patch} HR / {a.patch // 4} LR, batch {a.batch_size}, "
          f"{a.batches} batches per measurement, workers {a.workers}, cpu count {os.cpu_count()}")
    print(f"disk cache filled once in {fill:.1f} s ({fill / len(B):.2f} s per pair)")
    print(f"{'round':>5s} {'A cache=False':>14s} {'B disk cache':>13s} {'B/A':>7s}   (patches/s)")
    for r, (ra, rb) in enumerate(rows): print(f"{r:5d} {ra:14.1f} {rb:13.1f} {rb / ra:7.1f}")
    med_a, med_b = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
    print(f"{'median':>5s} {med_a:14.1f} {med_b:13.1f} {statistics.median(y / x for x, y in rows):7.1f}")
    return rows

if __name__ == "__main__": main()
