"""The performance table (issue 14), measured on this machine: runs the benchmarks one after another in this process
(never two at once), at sizes that fit a 2-core CPU in about 20 minutes, then prints one row per figure.

    python benchmarks/table.py                    # every row; run it on a quiet machine
    python benchmarks/table.py --only model train # some rows: forward kernel memory model train quality threads data degrade
    python benchmarks/table.py --quick            # smoke test of the plumbing: tiny sizes, one round (not a measurement)

Every ratio comes from paired rounds (A,B / B,A, medians of per-round ratios) inside the benchmark that measured it;
the machine's load is printed by each benchmark before and after, and again under the table. Sizes are smaller than a
GPU run's (a full ESRGAN forward at 300×200 takes 15–35 s here): each row says what it ran. Where a figure needs
hardware this machine lacks (native bf16, a GPU), the row says so instead of a number. Nothing here is a test.
"""
import argparse, contextlib, io, json, os, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import torch
from common import load_line

ROWS = ["forward", "kernel", "memory", "model", "train", "quality", "threads", "data", "degrade"]


@contextlib.contextmanager
def _env(**kw):
    old = {k: os.environ.get(k) for k in kw}
    os.environ.update(kw)
    try: yield
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


def section(name:str):
    print(f"\n===== {name} " + "=" * max(0, 70 - len(name)), flush=True)


def run_forward(q):
    import model
    from criasr.archs import cpu_has_native_bf16
    native = cpu_has_native_bf16()
    modes = ["fp32", "fp32cl"] + (["bf16cl"] if native else [])
    size = "24x16" if q else "120x80"
    rows = model.main(["--size", size, "--variants", "esrgan", "--modes", *modes, "--rounds", "1" if q else "3"])
    r = {m: rows[("esrgan", m)]["vs_fp32"] for m in modes if m != "fp32"}
    fig = f"fp32 1 → channels_last {r['fp32cl']:.2f}" + (f" / bf16 + channels_last {r['bf16cl']:.2f}" if native else
                                                         " / bf16: not timed (no native bf16 on this CPU: emulated, slower than fp32)")
    return f"ESRGAN forward ({size} LR ×4, wall-time ratio to fp32)", fig


def run_kernel(q):
    import infer
    args = ["--compare", "thp", "--sizes", "64" if q else "256", "--rounds", "1" if q else "3"]
    if q: args += ["--num-feat", "16", "--num-block", "1"]
    out = infer.main(args)
    (cmp, n), r = next(iter(out["rows"].items()))
    k, f = r["kernel_share"], r["minor_faults"]
    fig = (f"{k['A']:.0%} of CPU time in the kernel, {f['A'] / 1e6:.2f}M page faults → THP_MEM_ALLOC_ENABLE=1: {k['B']:.0%}, "
           f"{f['B'] / 1e6:.2f}M faults, time ×{r['time_ratio']:.2f}")
    return f"kernel share of a forward ({'tiny' if q else 'ESRGAN'}, {n}² LR, 1 window)", fig


def run_memory(q):
    import infer
    sizes = ["64", "128"] if q else ["256", "512", "1024"]
    args = ["--compare", "tile", "batch", "--sizes", *sizes, "--rounds", "1" if q else "2", "--num-block", "1"]
    if q: args += ["--num-feat", "16"]
    out = infer.main(args)
    flat = out["flatness"]
    b = out["rows"].get(("batch", int(sizes[-2]))) or out["rows"].get(("batch", int(sizes[-1])))
    fig = "extra memory at the defaults (tile 256, batch 1), output excluded: " + ", ".join(
        f"{n}² {v['peak_MiB'] - v['output_MiB']:.0f} MiB" + (f" ({v['extra_over_smallest']:.2f}×)" if not q else "")
        for n, v in sorted(flat.items()))
    if b: fig += f"; batch 4 instead of 1: memory ×{b['memory_ratio']:.2f}, time ×{b['time_ratio']:.2f}"
    return "tiled inference peak memory (ESRGAN width, 1 RRDB: per-tile activations as the full net's)", fig


def run_model(q):
    import model
    rows = model.main(["--size", "24x16" if q else "60x40", "--variants", "esrgan", "paper", "paper:lean",
                       "--rounds", "1" if q else "5", "--threads", "1"])
    p, s = rows[("paper", "fp32")], rows[("paper:lean", "fp32")]
    fig = (f"paper {p['params'] / 1e6:.2f}M: multiply-adds ×{p['macs'] / rows[('esrgan', 'fp32')]['macs']:.3f}, CPU time ×{p['cpu_x']:.2f}; "
           f"lean (15 RRDBs, the earlier default) {s['params'] / 1e6:.2f}M: ×{s['macs'] / rows[('esrgan', 'fp32')]['macs']:.3f}, ×{s['cpu_x']:.2f}")
    return "`paper` preset (the paper's size) / `esrgan` (exact MACs at 300×200; CPU time 1 thread)", fig


def run_train(q):
    import train
    r = train.main(["--quick"] if q else ["--rounds", "3", "--iters", "2"])
    ratio, fl, c = r["ratio"], r["flops"], r["candidates"].get("reuse_d")
    fig = (f"time ×{ratio['cria']['ratio']:.2f} ({ratio['cria']['s_per_it']:.2f} s vs {ratio['weighted_sum']['s_per_it']:.2f} s per step), "
           f"multiply-adds ×{fl['cria'] / fl['weighted_sum']:.3f}")
    if c: fig += (f"; reusing D's forward (now the default): {'exact' if c['exact'] else 'NOT exact'}, cria step ×{c['ratio']:.2f} "
                  f"against D run again")
    return f"`cria` / `weighted_sum` step ({'tiny' if q else 'paper size: batch 4, patch 128'}, fp32)", fig


def run_quality(q):
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio
    from criasr.data import demo_pairs
    from criasr.infer import load_model, upscale
    real = load_model("realsr_df2k")
    side, out = (16 if q else 64), []
    for p in (demo_pairs("test", 4) + demo_pairs("train", 4)[:2])[:1 if q else 4]:
        h, w = p["lr"].shape[:2]; y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
        crop = p["lr"][y:y + side, x:x + side]
        a, b = (upscale(real, crop, tile=0, precision=pr, dtype=np.uint8) for pr in ("fp32", "bf16"))
        out.append((peak_signal_noise_ratio(a, b, data_range=255), int(np.abs(a.astype(int) - b.astype(int)).max())))
        print(f"{p['name']:10s} bf16 vs fp32: {out[-1][0]:.2f} dB, max |Δ| {out[-1][1]}/255", flush=True)
    return (f"bf16 vs fp32 outputs on real weights (Impressionism, {len(out)} demo crops {side}×{side} LR)",
            f"PSNR {min(o[0] for o in out):.1f}–{max(o[0] for o in out):.1f} dB, max |Δ| {max(o[1] for o in out)}/255")


def run_threads(q):
    import threads
    med = threads.main(["--quick"] if q else [])
    cpus = max(n for n, _ in med)
    best = max(med[(n, False)] for n in {1, cpus})
    return (f"training beside one CPU-bound process ({'tiny' if q else 'demo-like paper net'}, steps/s)",
            f"{cpus} threads: loaded/alone {med[(cpus, True)] / med[(cpus, False)]:.2f}; 1 thread (what the policy picks "
            f"under load): {med[(1, True)] / best:.2f} of the best alone")


def run_data(q):
    import data
    rows = data.main(["--rounds", "1", "--batches", "2", "--images", "3", "--size", "256x192", "--patch", "64"] if q else
                     ["--rounds", "3", "--batches", "10"])
    a, b = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
    return (f"folder dataset patches/s ({'tiny PNGs' if q else '1020×680 PNGs, patch 128'})",
            f"decoding per patch {a:.0f} → default disk cache {b:.0f} (×{statistics.median(y / x for x, y in rows):.0f})")


def run_degrade(q):
    import degrade
    r = degrade.main(["--quick"] if q else ["--rounds", "2", "--deg_iters", "3", "--step_patch", "128"])
    return (f"degradations on the fly ({'tiny' if q else 'realesrgan, batch 16, HR 256 vs a paper-size cria step at batch 16, patch 128'})",
            f"{r['degradations_per_s']:.1f} degradations/s, {r['ratio']:.1%} of a step")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=ROWS, default=ROWS)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks the plumbing, measures nothing")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args(argv)
    start, t0 = load_line("start"), time.time()
    table, threads0 = [], torch.get_num_threads()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for name in a.only:
        section(name)
        t = time.time()
        torch.set_num_threads(threads0)           # a benchmark may have set its own count: each starts from the same
        with _env(OMP_NUM_THREADS=str(cpus)) if name in ("kernel", "memory") else contextlib.nullcontext():
            what, fig = globals()[f"run_{name}"](a.quick)   # (kernel, memory: worker processes with one thread per CPU)
        table.append((what, fig, time.time() - t))
    from criasr.archs import cpu_has_native_bf16
    print(f"\n{'SMOKE (--quick): plumbing only, not a measurement' if a.quick else 'issue 14 table, this machine'}: "
          f"{os.cpu_count()} CPUs, native bf16 {'yes' if cpu_has_native_bf16() else 'no'}, CUDA {'yes' if torch.cuda.is_available() else 'no'}, "
          f"torch {torch.__version__}")
    print(start); print(load_line("end  "))
    print("| figure | measured |\n|---|---|")
    for what, fig, sec in table: print(f"| {what} | {fig} |")
    print("| whole training step under bf16 autocast | " + ("run `benchmarks/train.py --precision bf16`" if cpu_has_native_bf16()
          else "not measured: no native bf16 here (emulated bf16 says nothing about speed)") + " |")
    print("| GPU (`benchmarks/gpu.py`) | " + ("run it: a CUDA device is present" if torch.cuda.is_available() else
          "not run: no GPU on this machine") + " |")
    print(f"total {time.time() - t0:.0f} s: " + ", ".join(f"{n} {s:.0f} s" for n, (_, _, s) in zip(a.only, table)))
    if a.json: Path(a.json).write_text(json.dumps([dict(figure=w, measured=f, seconds=s) for w, f, s in table], indent=1))


if __name__ == "__main__": main()
