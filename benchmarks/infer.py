"""Tiled vs untiled inference: time and peak memory on the same image (criasr.infer.upscale).

    OMP_NUM_THREADS=1 python benchmarks/infer.py            # ~1-2 min on one CPU core
    python benchmarks/infer.py --device cuda --size 1024     # on a GPU: peak = torch.cuda.max_memory_allocated

Each mode runs in its own subprocess so that peak memory (CPU: the process's resident-set high-water mark, minus the
mark reached before `upscale` with the model and image already in memory) is not polluted by the other mode.
Prints one JSON line per mode and the tiled/untiled ratios. Target: time ratio <= 1.10.
"""
import argparse, json, os, resource, subprocess, sys, time


def worker(a)->dict:
    import torch
    from criasr.archs import build_generator
    from criasr.infer import upscale
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = build_generator("esrgan", scale=4, num_feat=a.num_feat, num_block=a.num_block, num_grow_ch=a.num_grow_ch)
    model = model.eval().to(dev)
    img = torch.rand(3, a.size, a.size)
    with torch.no_grad(): model(torch.rand(1, 3, 32, 32, device=dev))      # warm-up (allocator, kernels)
    if dev.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tile = a.tile if a.mode == "tiled" else 0
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        out = upscale(model, img, tile=tile, overlap=a.overlap, batch=a.batch, device=dev)
        if dev.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024          # MiB (ru_maxrss is KiB on Linux)
    res = dict(mode=a.mode, size=a.size, tile=tile, overlap=a.overlap, batch=a.batch, device=a.device,
               seconds=min(times), cpu_peak_extra_MiB=round(peak, 1), out_shape=list(out.shape))
    if dev.type == "cuda": res["device_peak_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    torch.save(out, a.save) if a.save else None
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="LR image side (default 512)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--batch", type=int, default=1, help="tiles per forward (device peak grows with batch × tile²)")
    p.add_argument("--num-feat", type=int, default=32)
    p.add_argument("--num-block", type=int, default=4)
    p.add_argument("--num-grow-ch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per subprocess (the fastest is kept)")
    p.add_argument("--rounds", type=int, default=2, help="subprocesses per mode, in ABBA order (the fastest is kept)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=["tiled", "untiled"], help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.mode: print(json.dumps(worker(a))); return
    import tempfile
    res, outs = {}, {}
    with tempfile.TemporaryDirectory() as d:
        order = [m for i in range(a.rounds) for m in (("untiled", "tiled") if i % 2 == 0 else ("tiled", "untiled"))]
        for mode in order:  # ABBA: load drift on a shared machine hits both modes alike
            argv = [sys.executable, __file__, "--mode", mode, "--save", f"{d}/{mode}.pt"] + sys.argv[1:]
            r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
            if r.returncode: sys.exit(f"{mode} run failed:\n{r.stderr}")
            new = json.loads(r.stdout.strip().splitlines()[-1]); print(json.dumps(new))
            if mode not in res or new["seconds"] < res[mode]["seconds"]: res[mode] = new
        import torch
        from criasr.infer import tile_spans
        diff = (torch.load(f"{d}/tiled.pt") - torch.load(f"{d}/untiled.pt")).abs().max().item()
    t, u = res["tiled"], res["untiled"]
    n, k = a.size, len(tile_spans(a.size, a.tile, a.overlap))
    w = tile_spans(a.size, a.tile, a.overlap)[0][1]
    print(f"pixels computed tiled/untiled: {(k * w / n) ** 2:.3f} ({k}×{k} windows of {w}² LR px)")
    print(f"time ratio tiled/untiled (fastest of {a.rounds}): {t['seconds'] / u['seconds']:.3f} (target <= 1.10)")
    print(f"CPU peak extra memory ratio tiled/untiled: {t['cpu_peak_extra_MiB'] / max(u['cpu_peak_extra_MiB'], 1e-9):.3f}")
    if "device_peak_MiB" in t: print(f"device peak memory ratio: {t['device_peak_MiB'] / u['device_peak_MiB']:.3f}")
    print(f"max |tiled - untiled| = {diff * 255:.4f} / 255")


if __name__ == "__main__": main()
