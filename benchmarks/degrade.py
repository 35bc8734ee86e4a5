"""On-the-fly degradation cost: degradations per second, and the cost of degrading one batch next to one training step.

    OMP_NUM_THREADS=1 python benchmarks/degrade.py     # realesrgan, batch 16, HR patch 256, vs a paper-size cria step, 3 paired rounds
    python benchmarks/degrade.py --quick               # smoke test: batch 2, patch 64, tiny network, one round (seconds)
    python benchmarks/degrade.py --device cuda         # on a GPU (nvJPEG, kornia's grouped convolution on the device)

What is timed is what the trainer runs inside its step (`criasr.train.DegradedStream`): `criasr.degrade.Degrader` on a
batch of HR crops of the demo photos already on the device, every sample its own draw (new draw numbers at every call,
as in training), without autograd. Beside it, in paired rounds (`common.paired_rounds`: the order reversed every other
round), one step of the real trainer (`benchmarks/train.py`'s `make_trainer`: the cria objective, the `paper` preset at
its own size, random VGG weights, the discriminator `disc='auto'` picks) on a batch of the same size as the degraded LR
(`--step_patch` to change it). The figure is the median over rounds of the per-round ratio degrade / step. The issue's
targets: ≤ 10 % of the step on a CPU, ≤ 5 % on a CUDA GPU. Nothing here is a test: no threshold fails the run.
"""
import argparse, json, os, statistics, sys, time
from types import SimpleNamespace
import torch
from common import load_line, paired_rounds, default_threads


def sync(device):
    if torch.device(device).type == "cuda": torch.cuda.synchronize()


def hr_batch(batch:int, patch:int, device)->torch.Tensor:
    "`batch` HR crops of the demo training photos (real content: JPEG and noise costs depend on it)."
    from criasr.data import get_dataset
    ds = get_dataset("demo", split="train", scale=4, patch=patch, augment=True, seed=0)
    return torch.stack([ds[(i % len(ds), i)]["hr"] for i in range(batch)]).to(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="realesrgan", help="degradation preset (criasr.degrade.PRESETS)")
    ap.add_argument("--batch", type=int, default=None, help="default 16 (--quick: 2)")
    ap.add_argument("--patch", type=int, default=None, help="HR patch side (default 256; --quick: 64)")
    ap.add_argument("--step_patch", type=int, default=None, help="HR patch of the training step (default: --patch)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=None, help="paired rounds (default 3; --quick: 1)")
    ap.add_argument("--deg_iters", type=int, default=None, help="degraded batches per round (default 5; --quick: 1)")
    ap.add_argument("--step_iters", type=int, default=None, help="training steps per round (default 1)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    ap.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: the trainer's policy)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny sizes and network, one round (not a measurement)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    a = ap.parse_args(argv)
    q = a.quick
    a.batch = a.batch or (2 if q else 16); a.patch = a.patch or (64 if q else 256); a.step_patch = a.step_patch or a.patch
    a.rounds = a.rounds or (1 if q else 3); a.deg_iters = a.deg_iters or (1 if q else 5); a.step_iters = a.step_iters or 1
    a.threads = a.threads or default_threads()
    if a.device == "cpu": torch.set_num_threads(a.threads)
    before = load_line("before")
    print(before)

    from criasr.degrade import Degrader, get_degradation
    from train import make_trainer, run_steps
    deg = Degrader(get_degradation(a.preset), a.scale)
    hr = hr_batch(a.batch, a.patch, a.device)
    draws = iter(range(10**9))

    def degrade_batch()->float:
        "Seconds per degraded batch over `deg_iters` batches, new draws every time."
        sync(a.device); t0 = time.perf_counter()
        for _ in range(a.deg_iters): deg(hr, [next(draws) for _ in range(a.batch)], seed=0)
        sync(a.device)
        return (time.perf_counter() - t0) / a.deg_iters

    arch = dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1) if q else None
    ns = SimpleNamespace(preset="paper", arch=arch, disc="auto", disc_arch=dict(num_feat=8) if q else None, batch=a.batch,
                         patch=a.step_patch, precision=a.precision, device=a.device, channels_last=None, threads=a.threads)
    g = torch.Generator().manual_seed(0)
    step_hr = torch.rand(a.batch, 3, a.step_patch, a.step_patch, generator=g)
    trainer, _ = make_trainer("cria", ns, dict(hr=step_hr, lr=torch.nn.functional.avg_pool2d(step_hr, a.scale)))
    degrade_batch(); run_steps(trainer, 1)                      # warm-up: kernels, codecs, allocator
    res = paired_rounds({"degrade": degrade_batch, "step": lambda: run_steps(trainer, a.step_iters)}, a.rounds)
    after = load_line("after")
    d, s = statistics.median(res["degrade"]), statistics.median(res["step"])
    ratio = statistics.median(x / y for x, y in zip(res["degrade"], res["step"]))
    target = 0.05 if a.device == "cuda" else 0.10
    tag = "SMOKE (tiny sizes, not a measurement): " if q else ""
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {a.threads} intra-op thread(s)"
    print(f"{tag}degradation {a.preset!r}, batch {a.batch}, HR patch {a.patch} → LR {a.patch // a.scale}, on {dev}")
    print(f"  degrade one batch : {d * 1e3:9.1f} ms   ({a.batch / d:.1f} degradations/s)   rounds: {[round(x, 4) for x in res['degrade']]}")
    print(f"  cria step ({'tiny' if q else 'paper-size'} paper preset, batch {a.batch}, HR patch {a.step_patch}): {s:8.3f} s   rounds: {[round(x, 3) for x in res['step']]}")
    print(f"  degrade / step    : {ratio:.2%} (median of per-round ratios; target ≤ {target:.0%} on {a.device}: "
          f"{'met' if ratio <= target else 'NOT met'})")
    print(after)
    out = dict(preset=a.preset, batch=a.batch, patch=a.patch, step_patch=a.step_patch, device=a.device, device_name=dev, quick=q,
               degrade_s=d, degradations_per_s=a.batch / d, step_s=s, ratio=ratio, target=target, rounds=res,
               load_before=before, load_after=after, threads=a.threads)
    if a.json:
        with open(a.json, "w") as f: json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
