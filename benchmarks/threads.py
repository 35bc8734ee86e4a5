"""Training under a shared CPU: steps/s of the real trainer step alone and beside one other CPU-bound process, with 1
intra-op thread and with one per usable CPU, in paired rounds.

    python benchmarks/threads.py                  # cria, paper preset at a demo-like size (num_feat 32, 2 blocks), batch 2, patch 64
    python benchmarks/threads.py --quick          # smoke test (seconds)

The competitor is a separate process multiplying 512×512 matrices on one thread, started before and stopped after each
loaded measurement. Each round measures every (threads, alone/loaded) cell once, the order reversed every other round;
the figures are medians. What `criasr.train.pick_threads` chooses is printed next to them: one thread per usable CPU on
a quiet machine, one thread when the 1-minute load average already fills the CPUs (a deterministic run keeps the CPU
count, so that a resume sees the same thread count). Nothing here is a test.
"""
import argparse, os, statistics, subprocess, sys, time
from types import SimpleNamespace
import torch
from common import load_line, paired_rounds
from train import make_trainer, fixed_batch, run_steps

COMPETITOR = "import torch\ntorch.set_num_threads(1)\na = torch.rand(512, 512)\nwhile True: a @ a\n"


def measure(t, threads:int, loaded:bool, steps:int)->float:
    "Steps per second of `steps` trainer steps with `threads` intra-op threads, alone or beside the competitor."
    comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], env={**os.environ, "OMP_NUM_THREADS": "1"}) if loaded else None
    try:
        if comp is not None: time.sleep(1.0)          # the competitor is running before the clock starts
        torch.set_num_threads(threads)
        run_steps(t, 1)                               # one step at this thread count before timing
        return 1 / run_steps(t, steps)
    finally:
        if comp is not None: comp.kill(); comp.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objective", default="cria")
    ap.add_argument("--rounds", type=int, default=None, help="paired rounds (default 3; --quick: 1)")
    ap.add_argument("--steps", type=int, default=None, help="steps per measurement (default 4; --quick: 1)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    from criasr.train import pick_threads
    q = a.quick
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cfg = SimpleNamespace(preset="paper", arch=dict(num_feat=8, num_block=1, num_grow_ch=4) if q else dict(num_feat=32, num_block=2, num_grow_ch=16),
                          disc="patch", disc_arch=dict(num_feat=8 if q else 32), batch=2, patch=32 if q else 64, precision="fp32",
                          device="cpu", channels_last=False, threads=None)
    rounds, steps = a.rounds or (1 if q else 3), a.steps or (1 if q else 4)
    t, _ = make_trainer(a.objective, cfg, fixed_batch(cfg))
    measure(t, cpus, False, 1)                        # warm-up: Adam state, allocator, oneDNN caches
    print(load_line("before"), f"| policy now: {pick_threads(None) or torch.get_num_threads()} thread(s)", flush=True)
    cells = {(n, ld): (lambda n=n, ld=ld: measure(t, n, ld, steps)) for n in sorted({1, cpus}) for ld in (False, True)}
    res = paired_rounds(cells, rounds)
    print(load_line("after "))
    med = {k: statistics.median(v) for k, v in res.items()}
    best_alone = max(med[(n, False)] for n in {1, cpus})
    print(f"{'SMOKE (tiny sizes): ' if q else ''}{a.objective} step, paper {cfg.arch}, batch {cfg.batch}, patch {cfg.patch}, "
          f"{rounds} paired round(s) x {steps} step(s); {cpus} usable CPUs; competitor: one CPU-bound process")
    print(f"{'threads':>7s} {'alone it/s':>11s} {'loaded it/s':>12s} {'loaded/alone':>13s} {'loaded / best alone':>20s}")
    for n in sorted({1, cpus}):
        print(f"{n:7d} {med[(n, False)]:11.2f} {med[(n, True)]:12.2f} {med[(n, True)] / med[(n, False)]:13.2f} "
              f"{med[(n, True)] / best_alone:20.2f}")
    print(f"the policy: {cpus} thread(s) alone, 1 beside the competitor once the load average shows it "
          f"-> loaded/best alone {med[(1, True)] / best_alone:.2f} (one competitor on {cpus} CPUs: a proportional share is "
          f"{(cpus - 1) / cpus:.2f} of the machine)")
    return med


if __name__ == "__main__": main()
