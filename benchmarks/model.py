"""Cost of the generator presets: parameters, multiply-adds and CPU time, with ratios to `esrgan`, in paired rounds.

    OMP_NUM_THREADS=1 python benchmarks/model.py              # 300x200 LR at x4 (Table VII's setting), 5 rounds: minutes
    python benchmarks/model.py --quick                        # smoke test: 24x16 input, one round (seconds)
    python benchmarks/model.py --no-time                      # exact counts only (meta device, no forward pass)
    python benchmarks/model.py --size 60x40 --rounds 6 --threads 1 --variants esrgan paper paper:num_block=14,upsampler=per_head

Variants: `esrgan`, `official`, `paper` (the default at the paper's size: 19 RRDBs, 14.51M parameters), `paper:<name>` for a
documented override in `criasr.archs.PAPER_VARIANTS` (lean: the earlier 15-block default, per_head, warm_start), or `paper:key=value,...` for any override.
Multiply-adds are counted with torch's FlopCounterMode on the meta device (MACs = FLOPs / 2): exact, machine-independent.

Modes: `fp32` (contiguous), `fp32cl` (channels-last), `bf16cl` (bf16 autocast + channels-last, what
`criasr-sr --precision auto` runs on a CPU with native bf16). By default fp32, plus bf16cl where the CPU computes bf16
natively (AMX / AVX512-BF16); elsewhere bf16 is emulated and slow, so it only runs when asked (`--modes fp32 bf16cl`).

Timing: every (variant, mode) runs once per round under torch.no_grad(), after one warm-up forward each; the order is
reversed every other round (A,B,C / C,B,A / ...) so a change of load on a shared machine hits every variant alike.
Ratios are taken inside a round (variant / esrgan in the same mode; mode / fp32 for the same variant) and the figure
printed is the median of the per-round ratios, next to the median seconds. Wall-clock and process CPU seconds are
both kept: with one thread on a busy machine the CPU seconds are the fairer measure; with several threads they add up
over threads. The load average (os.getloadavg) is printed before and after: trust the ratios, not the seconds.
Nothing here is a test: no threshold fails the run.
"""
import argparse, copy, os, platform, statistics, time
from contextlib import nullcontext
import torch
from common import load_line, paired_rounds, default_threads
from criasr.archs import GENERATORS, PAPER_VARIANTS, build_generator, count_macs, count_params

MODES = ("fp32", "fp32cl", "bf16cl")
DEFAULT_VARIANTS = ["esrgan", "paper", "paper:lean", "official"]


def parse_size(s:str)->tuple:
    "'300x200' (width x height) -> (200, 300)."
    try: w, h = (int(v) for v in s.lower().split("x"))
    except ValueError: raise argparse.ArgumentTypeError(f"--size must look like 300x200 (width x height), got {s!r}") from None
    if w < 1 or h < 1: raise argparse.ArgumentTypeError(f"--size must be positive, got {s!r}")
    return h, w


def _value(v:str):
    for t in (int, float):
        try: return t(v)
        except ValueError: pass
    return {"None": None, "True": True, "False": False}.get(v, v)


def parse_variant(v:str)->tuple:
    "'paper:lean' -> ('paper', {'num_block': 15}); 'paper:num_block=14,upsampler=per_head' -> overrides; 'esrgan' -> ('esrgan', {})."
    preset, _, rest = v.partition(":")
    if preset not in GENERATORS: raise ValueError(f"variant {v!r}: unknown preset {preset!r}; choose one of {sorted(GENERATORS)}")
    if not rest: return preset, {}
    if "=" not in rest:
        if preset != "paper" or rest not in PAPER_VARIANTS:
            raise ValueError(f"variant {v!r}: named variants exist for paper only: {sorted(PAPER_VARIANTS)}")
        return preset, dict(PAPER_VARIANTS[rest])
    try: return preset, {k: _value(x) for k, x in (kv.split("=", 1) for kv in rest.split(","))}
    except ValueError: raise ValueError(f"variant {v!r}: overrides must look like key=value,key=value") from None


def cpu_name()->str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def native_bf16()->bool:
    from criasr.archs import cpu_has_native_bf16
    return cpu_has_native_bf16()


def median_ratio(a:list, b:list)->float:
    "Median over rounds of a[i] / b[i]."
    return statistics.median(x / y for x, y in zip(a, b))


def timed(fn)->tuple:
    "(wall seconds, process CPU seconds) of `fn()`."
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def forward_fn(model, x, mode:str):
    "A no-argument callable running one forward of `model` on `x` in `mode`."
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode.startswith("bf16") else nullcontext
    def run():
        with torch.no_grad(), ctx(): model(x)
    return run


def prepare(model, x, mode:str)->tuple:
    "(model, input) laid out for `mode` (a copy of the model for channels-last modes)."
    if mode.endswith("cl"):
        return copy.deepcopy(model).to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=None, help="LR input WxH (default 300x200; --quick: 24x16)")
    ap.add_argument("--scale", type=int, default=4, choices=(1, 2, 4))
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    ap.add_argument("--modes", nargs="+", default=None, choices=MODES, help="default: fp32, plus bf16cl on a CPU with native bf16")
    ap.add_argument("--rounds", type=int, default=None, help="paired rounds (default 5; --quick: 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the trainer's policy)")
    ap.add_argument("--no-time", action="store_true", help="only count parameters and multiply-adds")
    ap.add_argument("--quick", action="store_true", help="smoke test: 24x16 input, one round")
    a = ap.parse_args(argv)
    try: variants = {v: parse_variant(v) for v in dict.fromkeys(["esrgan", *a.variants])}   # ratios need the baseline
    except ValueError as e: ap.error(str(e))
    h, w = a.size or ((16, 24) if a.quick else (200, 300))
    rounds = a.rounds or (1 if a.quick else 5)
    if rounds < 1: ap.error("--rounds must be at least 1")
    torch.set_num_threads(a.threads or default_threads())
    bf16 = native_bf16()
    modes = a.modes or (["fp32", "bf16cl"] if bf16 else ["fp32"])
    print(("SMOKE (--quick: tiny input, one round; the times are not a measurement) " if a.quick and not a.no_time else "")
          + f"input 1x3x{h}x{w}, scale x{a.scale}; CPU {cpu_name()}, native bf16 {'yes' if bf16 else 'no'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"
          + ("" if a.no_time else f"; {rounds} paired round(s); modes {', '.join(modes)}"))
    if not bf16 and not a.modes and not a.no_time:
        print("bf16cl skipped: this CPU has no native bf16 (emulated bf16 is slower than fp32); --modes fp32 bf16cl forces it")
    # exact counts on the meta device
    counts, models = {}, {}
    for v, (preset, kw) in variants.items():
        with torch.device("meta"): g = build_generator(preset, scale=a.scale, **kw)
        counts[v] = (count_params(g), count_macs(g, (1, 3, h, w)), count_macs(g, (1, 3, 200, 300)))
    P0, _, M0 = counts["esrgan"]
    if a.no_time:
        W = max(len(v) for v in variants) + 1
        print(f"{'variant':{W}s} {'params':>12s} {'x':>6s} {'G MACs@300x200':>15s} {'x':>6s}")
        for v, (p, _, m) in counts.items(): print(f"{v:{W}s} {p:12,d} {p/P0:6.3f} {m/1e9:15.1f} {m/M0:6.3f}")
        return counts
    print(load_line("before"), flush=True)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    fns = {}
    for v, (preset, kw) in variants.items():
        torch.manual_seed(0)
        base = build_generator(preset, scale=a.scale, **kw).eval()
        for mode in modes:
            m, xi = prepare(base, x, mode)
            f = forward_fn(m, xi, mode)
            f()                                   # warm-up (allocator, oneDNN primitive caches)
            fns[(v, mode)] = (lambda f=f: timed(f))
    res = paired_rounds(fns, rounds)
    print(load_line("after "))
    med = lambda k, i: statistics.median(r[i] for r in res[k])
    W = max(len(v) for v in variants) + 1
    head = (f"{'variant':{W}s} {'mode':6s} {'params':>12s} {'x':>6s} {'G MACs@300x200':>15s} {'x':>6s} "
            f"{'wall s':>8s} {'cpu s':>8s} {'wall x':>7s} {'cpu x':>7s} {'x fp32':>7s}")
    print(head); print("-" * len(head))
    rows = {}
    for (v, mode) in fns:
        p, _, m = counts[v]
        ref = res[("esrgan", mode)]
        rw = median_ratio([r[0] for r in res[(v, mode)]], [r[0] for r in ref])
        rc = median_ratio([r[1] for r in res[(v, mode)]], [r[1] for r in ref])
        vs32 = (median_ratio([r[0] for r in res[(v, mode)]], [r[0] for r in res[(v, "fp32")]])
                if mode != "fp32" and (v, "fp32") in res else None)
        rows[(v, mode)] = dict(params=p, macs=m, wall=med((v, mode), 0), cpu=med((v, mode), 1), wall_x=rw, cpu_x=rc, vs_fp32=vs32)
        print(f"{v:{W}s} {mode:6s} {p:12,d} {p/P0:6.3f} {m/1e9:15.1f} {m/M0:6.3f} {med((v, mode), 0):8.3f} "
              f"{med((v, mode), 1):8.3f} {rw:7.3f} {rc:7.3f} {'' if vs32 is None else f'{vs32:7.3f}'}")
    print(f"MACs are exact (meta device, 300x200 LR at x{a.scale}); times: medians of {rounds} paired round(s) on a "
          f"{w}x{h} (WxH) LR input, ratios = medians of per-round ratios (x: to esrgan in the same mode; x fp32: wall time to fp32)")
    return rows


if __name__ == "__main__":
    main()
