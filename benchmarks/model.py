"""Cost of each generator preset: parameters, multiply-adds and forward time, with ratios to `esrgan`.

    python benchmarks/model.py                      # 300x200 LR input at x4 (the paper's Table VII setting), CPU
    python benchmarks/model.py --size 48x32 --runs 1 # quick check
    python benchmarks/model.py --device cuda        # GPU timing (synchronised)

Multiply-adds are counted with torch's FlopCounterMode on the meta device (MACs = FLOPs / 2), so they do not
depend on the machine; times do. Each timing is the median of `--runs` forwards after `--warmup` warm-up runs,
under torch.no_grad(): wall-clock seconds and process CPU seconds (on a shared, busy machine with one thread, the
CPU seconds are the fairer comparison; with several threads they add up over threads).
"""
import argparse, statistics, time
import torch
from criasr.archs import GENERATORS, build_generator, count_macs, count_params


def parse_size(s: str) -> tuple:
    "'300x200' (width x height) -> (200, 300)."
    try:
        w, h = (int(v) for v in s.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 300x200 (width x height), got {s!r}")
    return h, w


def time_forward(model, x, warmup: int, runs: int) -> tuple:
    "Median (wall seconds, process CPU seconds) of `runs` forward passes after `warmup` ones."
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    wall, cpu = [], []
    with torch.no_grad():
        for i in range(warmup + runs):
            sync(); t, c = time.perf_counter(), time.process_time()
            model(x)
            sync(); dt, dc = time.perf_counter() - t, time.process_time() - c
            if i >= warmup: wall.append(dt); cpu.append(dc)
    med = lambda v: statistics.median(v) if v else float('nan')
    return med(wall), med(cpu)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--size', type=parse_size, default=(200, 300), help='LR input size WxH (default 300x200)')
    ap.add_argument('--scale', type=int, default=4, choices=(1, 2, 4))
    ap.add_argument('--presets', nargs='+', default=['esrgan', 'paper', 'official'], choices=sorted(GENERATORS))
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--runs', type=int, default=2)
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default / OMP_NUM_THREADS)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--no-time', action='store_true', help='only count parameters and MACs')
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    presets = ['esrgan'] + [p for p in a.presets if p != 'esrgan']  # ratios need the baseline
    h, w = a.size
    dev = torch.device(a.device)
    print(f"input 1x3x{h}x{w}, scale x{a.scale}, device {dev}"
          + (f" ({torch.get_num_threads()} threads)" if dev.type == 'cpu' else f" ({torch.cuda.get_device_name(dev)})"))
    rows = {}
    for p in presets:
        torch.manual_seed(0)
        g = build_generator(p, scale=a.scale).eval().to(dev)
        n, macs = count_params(g), count_macs(g, (1, 3, h, w))
        t, c = (float('nan'),)*2 if a.no_time else time_forward(g, torch.rand(1, 3, h, w, device=dev), a.warmup, a.runs)
        rows[p] = (n, macs, t, c)
        print(f"  {p}: done", flush=True)
        del g
    n0, m0, t0, c0 = rows['esrgan']
    print(f"{'preset':10s} {'params':>12s} {'x':>6s} {'G MACs':>9s} {'x':>6s} {'wall s':>8s} {'x':>6s} {'cpu s':>8s} {'x':>6s}")
    for p, (n, m, t, c) in rows.items():
        print(f"{p:10s} {n:12,d} {n/n0:6.3f} {m/1e9:9.1f} {m/m0:6.3f} {t:8.2f} {t/t0:6.3f} {c:8.2f} {c/c0:6.3f}")
    return rows


if __name__ == '__main__':
    main()
