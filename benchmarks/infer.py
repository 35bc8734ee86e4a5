"""Inference at the `criasr-sr` defaults: time and peak extra memory, tiled vs whole image, batch 1 vs 4, by image size.

    OMP_NUM_THREADS=1 python benchmarks/infer.py                       # full ESRGAN, 256/512/1024² LR: long on a CPU
    python benchmarks/infer.py --sizes 256 --num-feat 16 --num-block 1 --rounds 1   # smoke test (seconds)
    python benchmarks/infer.py --device cuda --sizes 512 1024           # on a GPU: also the device's peak memory

What runs is what the command runs on one image: `criasr.infer.upscale` on an 8-bit H×W×3 array into an 8-bit canvas
(`dtype=np.uint8`), `--precision` (default auto: bf16 + channels-last where the CPU has native bf16), tile 256,
overlap 16. Comparisons, each at each size:

    tile   A = whole image (tile 0)      B = tiled (tile 256, batch 1 on a CPU: the default)
    batch  A = tiled, batch 1            B = tiled, batch 4
    thp    A = tiled, batch 1, THP_MEM_ALLOC_ENABLE=0   B = the same with huge pages (=1, what importing criasr.archs sets)
    heap   A = tiled, batch 1            B = the same with glibc keeping freed memory (MALLOC_MMAP_MAX_=0; not default)

The kernel's share of the process CPU time and the minor page faults are printed for each: the HR activations of a
tile are hundreds of MiB, above glibc's mmap threshold, so every forward maps fresh pages and faults on each 4 KiB.

Every measurement runs in a fresh subprocess, so a peak (the resident-set high-water mark, minus the mark reached with
the model and image already loaded and one warm-up forward done) is not polluted by the run before it. Rounds are
paired: A then B in each round, and the order alternates (A,B / B,A / ...) so that a change of load on a shared
machine hits both; the figure reported is the median over rounds of the per-round ratio B/A (and the median absolute
values). The machine load (os.getloadavg) is printed before and after: on a loaded machine, trust the ratios, not the
seconds. Nothing here is a test: no threshold fails the run; the flatness check is printed for reading.
"""
import argparse, json, os, resource, statistics, subprocess, sys, time
from common import load_line

CASES = {  # comparison -> (A, B) as upscale options; "env": environment variables of the worker process
    "tile": (dict(tile=0), dict(tile=256)),
    "batch": (dict(tile=256, batch=1), dict(tile=256, batch=4)),
    # page-fault churn: PyTorch's CPU allocator asking for transparent huge pages on large blocks (2 MiB pages: 512×
    # fewer faults on the HR activations), against glibc keeping freed memory in its heap instead of unmapping it
    "thp": (dict(tile=256, env=dict(THP_MEM_ALLOC_ENABLE="0")), dict(tile=256, env=dict(THP_MEM_ALLOC_ENABLE="1"))),   # B: the default
    "heap": (dict(tile=256), dict(tile=256, env=dict(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**40)))),
}


def worker(cfg:dict)->dict:
    "One timed `upscale` in this process; returns seconds, peak extra memory and kernel-time share."
    import numpy as np, torch
    from criasr.archs import build_generator
    from criasr.infer import prepare_model, resolve_precision, upscale
    torch.manual_seed(0)
    dev = torch.device(cfg["device"])
    model = build_generator(cfg["preset"], scale=4, **cfg["arch"])
    model = prepare_model(model, dev, cfg["precision"])
    img = (np.random.default_rng(0).random((cfg["size"], cfg["size"], 3)) * 255).astype(np.uint8)
    upscale(model, img[:32, :32], tile=0, precision=cfg["precision"], device=dev, dtype=np.uint8)   # warm-up
    if dev.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    out = upscale(model, img, overlap=16, precision=cfg["precision"], device=dev, dtype=np.uint8, **cfg["opts"])
    if dev.type == "cuda": torch.cuda.synchronize()
    sec = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    res = dict(seconds=sec, peak_extra_MiB=(r1.ru_maxrss - r0.ru_maxrss) / 1024,       # ru_maxrss: KiB on Linux
               output_MiB=out.nbytes / 2**20, kernel_share=(r1.ru_stime - r0.ru_stime) / max(cpu, 1e-9),
               minor_faults=r1.ru_minflt - r0.ru_minflt, precision=resolve_precision(cfg["precision"], dev))
    if dev.type == "cuda": res["device_peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def run_one(cfg:dict)->dict:
    "`worker(cfg)` in a fresh subprocess."
    cfg = {**cfg, "opts": dict(cfg["opts"])}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **cfg["opts"].pop("env", {})}
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True, env=env)
    if r.returncode: sys.exit(f"run failed ({cfg}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def tile_side(tile:int=256, overlap:int=16)->int:
    "Side of a window: the region it owns plus the context on both sides."
    return tile + 2 * overlap


def windows(n:int, tile:int=256, overlap:int=16)->int:
    "Windows `criasr.infer.tile_spans` cuts an n×n image into (one when it fits in tile + 2·overlap)."
    return 1 if n <= tile_side(tile, overlap) else (-(-(n - 2 * overlap) // tile)) ** 2



def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="LR image sides (default 256 512 1024)")
    p.add_argument("--compare", nargs="+", choices=list(CASES), default=["tile", "batch", "thp"])
    p.add_argument("--rounds", type=int, default=3, help="paired A,B rounds per comparison and size (default 3)")
    p.add_argument("--precision", default="auto", help="as criasr-sr --precision (default auto)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="esrgan")
    p.add_argument("--num-feat", type=int, default=64)
    p.add_argument("--num-block", type=int, default=23)
    p.add_argument("--num-grow-ch", type=int, default=32)
    p.add_argument("--max-untiled", type=int, default=512,
                   help="largest LR side run as a whole image (default 512; full ESRGAN at 1024² wants > 20 GB)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker: print(json.dumps(worker(json.loads(a.worker)))); return
    arch = dict(num_feat=a.num_feat, num_block=a.num_block, num_grow_ch=a.num_grow_ch)
    print(load_line("before"), f"| OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}", flush=True)
    print(f"{a.preset} {arch} ×4, precision {a.precision}, device {a.device}, {a.rounds} paired rounds", flush=True)
    default = {}   # size -> the tiled batch-1 result (the CLI default on a CPU), for the flatness check
    out = dict(rows={}, flatness={})
    for cmp in a.compare:
        for n in a.sizes:
            A, B = CASES[cmp]
            if cmp == "tile" and n > a.max_untiled:
                print(f"{cmp:5s} {n:5d}²  skipped: whole image above --max-untiled {a.max_untiled}", flush=True); continue
            rows = {"A": [], "B": []}
            for r in range(a.rounds):
                for k in ("AB" if r % 2 == 0 else "BA"):
                    rows[k].append(run_one(dict(device=a.device, preset=a.preset, arch=arch, precision=a.precision,
                                                size=n, opts=A if k == "A" else B)))
            med = lambda k, f: statistics.median(x[f] for x in rows[k])
            ratio = lambda f: statistics.median(b[f] / max(x[f], 1e-9) for x, b in zip(rows["A"], rows["B"]))
            line = (f"{cmp:5s} {n:5d}²  A {A} {med('A', 'seconds'):.2f} s {med('A', 'peak_extra_MiB'):.0f} MiB | "
                    f"B {B} {med('B', 'seconds'):.2f} s {med('B', 'peak_extra_MiB'):.0f} MiB | "
                    f"B/A time {ratio('seconds'):.3f} memory {ratio('peak_extra_MiB'):.3f} | "
                    f"kernel share A {med('A', 'kernel_share'):.2f} B {med('B', 'kernel_share'):.2f}, "
                    f"page faults A {med('A', 'minor_faults') / 1e6:.2f}M B {med('B', 'minor_faults') / 1e6:.2f}M | "
                    f"output {rows['A'][0]['output_MiB']:.0f} MiB, {windows(n)} windows when tiled, "
                    f"{rows['A'][0]['precision'][0]}{' + channels-last' if rows['A'][0]['precision'][1] else ''}")
            if "device_peak_MiB" in rows["A"][0]:
                line += f" | device peak A {med('A', 'device_peak_MiB'):.0f} B {med('B', 'device_peak_MiB'):.0f} MiB"
            print(line, flush=True)
            out["rows"][(cmp, n)] = {f: dict(A=med("A", f), B=med("B", f)) for f in ("seconds", "peak_extra_MiB", "kernel_share", "minor_faults")}
            out["rows"][(cmp, n)].update(time_ratio=ratio("seconds"), memory_ratio=ratio("peak_extra_MiB"), output_MiB=rows["A"][0]["output_MiB"])
            tiled1 = rows["B"] if cmp == "tile" else rows["A"]
            default[n] = (statistics.median(x["peak_extra_MiB"] for x in tiled1), tiled1[0]["output_MiB"])
    if len(default) > 1:
        n0 = min(default); base = default[n0][0] - default[n0][1]
        for n, (peak, outm) in sorted(default.items()):
            print(f"flatness at the defaults (tile 256, batch 1): {n}² peak {peak:.0f} MiB = output {outm:.0f} + "
                  f"{peak - outm:.0f} MiB, {(peak - outm) / max(base, 1e-9):.2f}× the {n0}² figure (target <= 1.3)")
            out["flatness"][n] = dict(peak_MiB=peak, output_MiB=outm, extra_over_smallest=(peak - outm) / max(base, 1e-9))
        multi = [n for n in sorted(default) if windows(n) > 1]     # images cut into overlapping windows (tile + 2·overlap)
        if len(multi) > 1:
            m0 = multi[0]; b0 = default[m0][0] - default[m0][1]
            for n in multi[1:]:
                x = (default[n][0] - default[n][1]) / max(b0, 1e-9)
                print(f"window for window: {n}² extra memory {x:.2f}× the {m0}² figure (both cut into {tile_side()}² windows; "
                      f"the {min(default)}² run is {'one window' if windows(min(default)) == 1 else 'windows too'})")
                out["flatness"][n]["extra_over_first_tiled"] = x
    print(load_line("after"), flush=True)
    return out


if __name__ == "__main__": main()
