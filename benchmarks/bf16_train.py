"""Does training under bf16 autocast follow fp32? Runs of `criasr.train.train` from the same seed (same weights, same
batches), one with `precision="fp32"` and one with `precision="bf16"`; their logged losses side by side in windows,
and their val PSNR (raw weights) at each validation. A GAN's trajectory is chaotic: read a gap against the control, two
fp32 runs with different seeds (`--runs fp32 fp32@1`).

    python benchmarks/bf16_train.py                 # cria, paper preset (num_feat 16, 2 blocks), batch 4, patch 48, 150 iterations, lr 1e-3
    python benchmarks/bf16_train.py --runs fp32 fp32@1    # the control: how far two fp32 runs with different seeds drift apart
    python benchmarks/bf16_train.py --quick         # smoke test (seconds)
    python benchmarks/bf16_train.py --iters 2000 --arch '{}' --patch 128 --batch 16   # on hardware with native bf16
    python benchmarks/bf16_train.py --full          # the protocol that decides `precision="auto"` for training (below)

`--full` is the decision protocol: 1,000 iterations (or `--iters`), three seeds per precision (fp32@0..2, bf16@0..2),
on the hardware whose default it decides (a CPU with native bf16, or `--device cuda`). It prints the final val PSNR
(demo val split, raw weights, the last checkpoint) of every run, the seed spread (max − min over the fp32 seeds) and
the bf16 gap (|mean bf16 − mean fp32|), and its verdict: bf16 may be that device's training default in
`criasr.archs.DEVICE_TABLE` only when the gap is within the spread. Run where bf16 is emulated it says so: the
numerics are the same operation, the verdict still counts only on native hardware (the device table changes by hand,
with the figures, the hardware and the command written where the default is taught: the train chapter and README).
Measured so far (one seed per precision, 150 iterations, so not the protocol): the 2-core development CPU (AMD EPYC,
emulated bf16) 4.7 dB gap against 1.2 dB between two fp32 seeds; a CPU with native bf16 (issue 20) 0.77 dB against
0.20 dB. Both outside the spread: `auto` trains in fp32 on every CPU.

On a CPU without native bf16, oneDNN emulates it: the rounding of inputs and outputs to bf16 is the same operation as on
AMX hardware and the accumulation stays fp32, so the curves are a fair check of the numerics, not of the speed (emulated
bf16 is several times slower than fp32). The VGG is random offline, as in every test here. Nothing here is a test.
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objective", default="cria")
    ap.add_argument("--iters", type=int, default=None, help="default 150 (--quick: 6)")
    ap.add_argument("--batch", type=int, default=4); ap.add_argument("--patch", type=int, default=None, help="default 48 (--quick: 32)")
    ap.add_argument("--arch", type=json.loads, default=None, help="generator overrides (default num_feat 16, 2 blocks)")
    ap.add_argument("--lr", type=float, default=1e-3, help="default 1e-3: a small net from scratch moves visibly in 150 steps")
    ap.add_argument("--window", type=int, default=None, help="iterations per window of the loss table (default iters/6)")
    ap.add_argument("--runs", nargs="+", default=["fp32", "bf16"],
                    help="precision[@seed] per run, compared with the first (default: fp32 bf16; fp32@1 gives the seed spread)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true", help="the decision protocol: 1000 iterations, 3 seeds per precision, a verdict")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args(argv)
    if a.full:
        a.iters = a.iters or 1000
        if a.runs == ["fp32", "bf16"]: a.runs = [f"{p}@{s}" for p in ("fp32", "bf16") for s in range(3)]
    from criasr.train import train
    from criasr.runs import read_metrics
    from criasr.archs import cpu_has_native_bf16
    q = a.quick
    iters = a.iters or (6 if q else 150)
    arch = a.arch if a.arch is not None else (dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1) if q
                                               else dict(num_feat=16, num_block=2, num_grow_ch=8))
    win = a.window or max(1, iters // 6)
    common = dict(dataset="demo", objective=a.objective, preset="paper", arch=arch, disc_arch=dict(num_feat=16), batch=a.batch,
                  patch=a.patch or (32 if q else 48), iters=iters, lr=a.lr, pixel_warmup=0, num_workers=0, log_every=1,
                  val_every=max(1, iters // 3), save_every=0, val_metrics=["psnr"], n_samples=0, progress=False, cpu=a.device == "cpu",
                  vgg_weights="random", seed=0, ema=0.0)
    runs, secs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.runs:
            prec, _, seed = spec.partition("@")
            t = time.perf_counter()
            run = train(**{**common, "seed": int(seed or 0)}, precision=prec, out_dir=tmp, run_name=spec.replace("@", "_s"))
            secs[spec] = time.perf_counter() - t
            runs[spec] = read_metrics(run)
    loss = lambda m: m.dropna(subset=["loss/total"]).set_index("iter")["loss/total"]
    val = lambda m: m.dropna(subset=["val/psnr"]).set_index("iter")["val/psnr"]
    ref, others = a.runs[0], a.runs[1:]
    L = {k: loss(m) for k, m in runs.items()}
    native = cpu_has_native_bf16()
    print(f"{'SMOKE (tiny): ' if q else ''}{a.objective}, paper {arch}, batch {a.batch}, patch {common['patch']}, {iters} iterations, "
          f"lr {a.lr}; " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + f" (native bf16: {'yes' if native else 'no, emulated'})")
    print(f"{'iterations':>12s}" + "".join(f"{k + ' loss':>14s}" for k in a.runs) + "".join(f"{k + '/' + ref:>14s}" for k in others)
          + "   (mean of loss/total over the window)")
    gaps = {k: [] for k in others}
    for s0 in range(1, iters + 1, win):
        idx = [i for i in L[ref].index if s0 <= i < s0 + win and all(i in L[k].index for k in others)]
        if not idx: continue
        m = {k: statistics.mean(L[k][idx]) for k in a.runs}
        for k in others: gaps[k].append(abs(m[k] / m[ref] - 1))
        print(f"{f'{s0}-{idx[-1]}':>12s}" + "".join(f"{m[k]:14.4f}" for k in a.runs) + "".join(f"{m[k] / m[ref]:14.3f}" for k in others))
    V = {k: val(m) for k, m in runs.items()}
    for it in V[ref].index:
        print(f"val/psnr (demo val split, raw weights) at iteration {it}{' (the last checkpoint)' if it == iters else ''}: " + ", ".join(f"{k} {V[k][it]:.2f} dB" for k in a.runs if it in V[k].index))
    for k in others: print(f"largest window gap |{k}/{ref} − 1| = {max(gaps[k]):.3f}")
    final = {k: float(v.iloc[-1]) for k, v in V.items() if len(v)}
    fp, bf = [final[k] for k in a.runs if k.startswith("fp32") and k in final], [final[k] for k in a.runs if k.startswith("bf16") and k in final]
    if len(fp) >= 2 and bf:
        spread, gap = max(fp) - min(fp), abs(statistics.mean(bf) - statistics.mean(fp))
        hw = ("CUDA " + torch.cuda.get_device_name()) if a.device == "cuda" else f"CPU, native bf16: {'yes' if native else 'NO (emulated: verdict not valid)'}"
        print(f"final val/psnr: fp32 seeds {', '.join(f'{x:.2f}' for x in fp)} dB (spread {spread:.2f} dB); bf16 seeds "
              f"{', '.join(f'{x:.2f}' for x in bf)} dB (gap of the means {gap:.2f} dB); {iters} iterations; {hw}")
        print(f"verdict: bf16 {'within' if gap <= spread else 'OUTSIDE'} the seed spread"
              + ("" if len(fp) >= 3 and len(bf) >= 3 and iters >= 1000 else " (fewer than 3 seeds per precision or 1000 iterations: not the protocol)"))
    return dict(max_gap={k: max(g) for k, g in gaps.items()}, val={k: float(v.iloc[-1]) for k, v in V.items()}, seconds=secs)


if __name__ == "__main__": main()
