"""Training-step cost of the objectives through the real trainer step: cria / weighted_sum ratio in paired rounds, a profile
of the cria step, and measured candidates for removing what is not inherent in it.

    OMP_NUM_THREADS=1 python benchmarks/train.py          # paper size: preset paper (default: the paper's size), batch 4, patch 128, fp32
    python benchmarks/train.py --quick                    # smoke test: tiny networks, batch 2, patch 32, one round (seconds)
    python benchmarks/train.py --flops-only               # exact multiply-adds of one step at paper size (no timing)
    python benchmarks/train.py --device cuda --batch 16 --precision auto     # on a GPU (benchmarks/gpu.py calls this)

What runs is `criasr.train.Trainer.one_iter` (generator step, then the discriminator step when the objective has an
adversarial criterion), built as `criasr.train.train` builds it: `TrainConfig.from_params(...)` -> `build_parts` ->
`HeadsNet` -> Adam -> `accelerate.prepare`, on one fixed in-memory batch (data loading is not timed), without the
callbacks (NaN guard, logging, validation, checkpoints). VGG-19 weights are random (the cost does not depend on their
values); the discriminator is the one `disc='auto'` picks (vgg128 at patch 128). `--objectives` are timed in paired rounds: each round runs `--iters` steps of every objective, the order reversed
every other round; the figure is the median over rounds of the per-round ratio to the first objective (default:
weighted_sum). The load average is printed before and after, and the intra-op threads.

`--profile` splits the cria step into phases by wrapping the trainer's methods (G forward, the criteria's VGG passes by
image, the discriminator's forwards in the G step, G backward, D step forward/backward, optimizer steps).

Candidates (each measured against its baseline in paired rounds on the same trainer, after an exactness check that
runs one step of each from the same state and compares every parameter of G and D):

    reuse_d   the trainer's default (`reuse_d=True`, criasr.train.SharedDiscForward): one discriminator forward per
              image per iteration, shared by the G and D steps, against the trainer with `reuse_d=False` (D runs again
              in its own step). Exact where D's forward is a pure function of its weights and the batch (BatchNorm in
              train mode: vgg128, patch); the trainer turns it off for spectral norm (unet) and under DDP.
    vgg_bf16  the criteria's VGG passes under bf16 autocast while G and D stay fp32: not exact (bf16 rounding of the
              perceptual maps; the loss difference is printed). Only meaningful on hardware with native bf16.

Nothing here is a test: no threshold fails the run.
"""
import argparse, copy, itertools, json, os, statistics, sys, time
from contextlib import contextmanager
import torch
from common import load_line, paired_rounds, default_threads

DEFAULT_OBJECTIVES = ["weighted_sum", "cria"]



def sync(device):
    if torch.device(device).type == "cuda": torch.cuda.synchronize()


# ------------------------------------------------------------------ building the real trainer

def make_trainer(objective:str, a, batch:dict, prepare:bool=True):
    "A `criasr.train` trainer for `objective`, built the way `criasr.train.train` builds one; returns (trainer, flat params)."
    from criasr.config import TrainConfig
    from criasr.train import build_parts, make_accelerator, resolve_train_engine, make_players, make_trainer as _make, HeadsNet, Player
    cfg = TrainConfig.from_params(dataset="demo", objective=objective, preset=a.preset, arch=a.arch, disc=a.disc,
                                  disc_arch=a.disc_arch, batch=a.batch, patch=a.patch, vgg_weights="random",
                                  precision=a.precision, cpu=a.device == "cpu", ema=0.0, progress=False, pixel_warmup=0,
                                  iters=10**6, lr=1e-4, channels_last=a.channels_last, threads=a.threads)
    acc = make_accelerator(cfg.engine)
    eng = resolve_train_engine(cfg.engine, acc.device)      # what `train` resolves: the device table's row
    parts = build_parts(cfg, acc.device)
    gen, disc = parts["gen"], parts["disc"]
    if eng["channels_last"] and prepare:                      # every network, as `train` does (the layout changes no count)
        for m in (gen, disc, parts["bank"]):
            if m is not None: m.to(memory_format=torch.channels_last)
    if prepare: g, d = make_players(gen, disc, cfg.optim, acc, eng["precision"])
    else:        # (only for counting FLOPs on fake tensors, which `accelerate.prepare` cannot move)
        adam = lambda m: torch.optim.Adam(m.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        g = Player(HeadsNet(gen), adam(gen), acc, eng["precision"])
        d = Player(disc, adam(disc), acc, eng["precision"]) if disc is not None else None
    t = _make(g, d, parts["part"], parts["bank"], itertools.repeat(batch), acc, cfg.optim, channels_last=eng["channels_last"],
              precision=eng["precision"])
    t.it, t.iter, t.iters = iter(t.batches), 0, cfg.optim.iters
    for pl in t.players: pl.module.train()
    return t, cfg.flat()


def plain_step(t):
    for pl in t.players: pl.zero_grad()
    t.one_iter(); t.iter += 1


def run_steps(t, n:int, step=plain_step)->float:
    "Mean seconds per step over `n` steps."
    dev = t.acc.device
    sync(dev); t0 = time.perf_counter()
    for _ in range(n): step(t)
    sync(dev)
    return (time.perf_counter() - t0) / n


def fixed_batch(a)->dict:
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(a.batch, 3, a.patch, a.patch, generator=g)
    return dict(hr=hr, lr=torch.nn.functional.avg_pool2d(hr, 4))



def med_ratio(a:list, b:list)->float: return statistics.median(x / y for x, y in zip(a, b))


# ------------------------------------------------------------------ objective ratio

def objective_ratio(a, batch:dict)->dict:
    "Median step seconds and median per-round ratio to the first objective, for every objective of `a.objectives`."
    trainers = {o: make_trainer(o, a, batch)[0] for o in a.objectives}
    for t in trainers.values(): run_steps(t, a.warmup)
    res = paired_rounds({o: (lambda t=t: run_steps(t, a.iters)) for o, t in trainers.items()}, a.rounds)
    base = a.objectives[0]
    out = {}
    for o, t in trainers.items():
        out[o] = dict(s_per_it=statistics.median(res[o]), ratio=med_ratio(res[o], res[base]), rounds=res[o],
                      criteria=sorted(t.part.criteria_names), d_step=t.d is not None)
    return out


# ------------------------------------------------------------------ profile of one step

class PhaseTimer:
    "Accumulates seconds per phase name (device-synchronised)."
    def __init__(self, device): self.device, self.t = device, {}
    @contextmanager
    def __call__(self, name:str):
        self.t.setdefault(name, 0.)                  # parents are listed before the phases nested in them
        sync(self.device); t0 = time.perf_counter()
        try: yield
        finally:
            sync(self.device); self.t[name] = self.t.get(name, 0.) + time.perf_counter() - t0


def _which(t, x)->str:
    "Which image `x` is in the current step: hr, or the head whose storage it shares."
    ptr = x.data_ptr()
    if ptr == t.batch["hr"].data_ptr(): return "hr"
    for h in ("sr", "align", "unif"):
        if getattr(t, "heads", None) is not None and ptr == getattr(t.heads, h).data_ptr(): return h
    return "?"


def instrument(t, timer:PhaseTimer)->dict:
    "Wrap `t`'s methods, its criteria bank's VGG passes and its discriminator's forward with `timer`; returns info seen."
    info, phase = {}, {"now": ""}
    def wrap(obj, name, label_fn):
        orig = getattr(obj, name)
        def f(*args, **kw):
            with timer(label_fn(*args, **kw)): return orig(*args, **kw)
        setattr(obj, name, f)
    def vgg_label(x, layers, no_grad=False):
        info.setdefault("vgg_dtype", None)
        return f"  VGG forward on {_which(t, x)} ({phase['now']})"
    bank = t.bank
    orig_feats = bank._feats
    def feats(x, layers, no_grad=False):
        with timer(vgg_label(x, layers, no_grad)):
            out = orig_feats(x, layers, no_grad)
        info["vgg_dtype"] = str(next(iter(out.values())).dtype)
        return out
    bank._feats = feats
    if t.d is not None:
        wrap(t.d.net, "forward", lambda x: f"  D forward on {_which(t, x)} ({phase['now']})")
    def set_phase(name, p):
        orig = getattr(t, name)
        def f():
            phase["now"] = p
            with timer({"predict": "G forward (heads)", "get_loss": "G step: criteria forward (all)",
                        "get_loss_d": "D step: forward (all)"}[name]): return orig()
        setattr(t, name, f)
    set_phase("predict", "G step"); set_phase("get_loss", "G step"); set_phase("get_loss_d", "D step")
    for pl in t.players: wrap(pl, "backward", lambda loss, **kw: f"{phase['now']}: backward")
    wrap(t, "step", lambda: "optimizer steps (Adam G, D)")
    for pl in t.players: wrap(pl, "zero_grad", lambda: "zero_grad")
    return info


def profile_step(a, batch:dict, objective:str="cria")->dict:
    "Mean milliseconds per phase of `objective`'s step over `a.iters` steps after `a.warmup`."
    t, p = make_trainer(objective, a, batch)
    run_steps(t, max(a.warmup, 1))
    timer = PhaseTimer(t.acc.device)
    info = instrument(t, timer)
    t0 = time.perf_counter()
    with timer("step total"): run_steps(t, a.iters)
    n = a.iters
    ms = {k: 1000 * v / n for k, v in timer.t.items()}
    # logging-only work in the step: the detached means of the criterion maps that go to the log (`terms`)
    maps = [torch.rand(a.batch, 1, a.patch, a.patch, device=t.acc.device) for _ in range(len(t.part.criteria_names) + 3)]
    sync(t.acc.device); t1 = time.perf_counter()
    for _ in range(10): [m.detach().mean() for m in maps]
    sync(t.acc.device); ms["logging-only work: means of the criterion maps (estimated)"] = 100 * (time.perf_counter() - t1)
    return dict(ms=ms, vgg_dtype=info.get("vgg_dtype"), precision=p["precision"], disc=type(t.d.net).__name__ if t.d is not None else None)


# ------------------------------------------------------------------ candidates

def no_reuse_step(t):
    "The trainer's iteration with the discriminator run again in its own step (`reuse_d=False`)."
    from criasr.train import GANTrainer
    cls = type(t)
    if isinstance(t, GANTrainer): t.__class__ = GANTrainer      # `SharedDTrainer` without its override
    try: plain_step(t)
    finally: t.__class__ = cls


def vgg_bf16_step(t):
    "The trainer's iteration with only the criteria's VGG passes under bf16 autocast."
    bank, orig, dev = t.bank, t.bank._feats, t.acc.device.type
    def feats(x, layers, no_grad=False):
        with torch.autocast(dev, dtype=torch.bfloat16): return orig(x, layers, no_grad)
    bank._feats = feats
    try: plain_step(t)
    finally: bank._feats = orig


def _params(m)->dict: return {k: v.detach().clone() for k, v in m.named_parameters()}

def _state(t)->dict:
    d = t.d
    return dict(gen=copy.deepcopy(t.g.net.state_dict()), disc=copy.deepcopy(d.net.state_dict()) if d is not None else None,
                pg=_params(t.g.net), pd=_params(d.net) if d is not None else None,
                opt_g=copy.deepcopy(t.g.opt.state_dict()), opt_d=copy.deepcopy(d.opt.state_dict()) if d is not None else None,
                it=t.iter)


def _restore(t, s:dict):
    t.g.net.load_state_dict(s["gen"]); t.g.opt.load_state_dict(s["opt_g"])
    if s["disc"] is not None: t.d.net.load_state_dict(s["disc"]); t.d.opt.load_state_dict(s["opt_d"])
    t.iter = s["it"]


def _max_diff(sa:dict, sb:dict)->float:
    return max(((sa[k].float() - sb[k].float()).abs().max().item() for k in sa if sa[k].is_floating_point()), default=0.)


CANDIDATES = dict(reuse_d=(no_reuse_step, plain_step), vgg_bf16=(plain_step, vgg_bf16_step))   # name -> (baseline, candidate)


def count_flops(a, batch:dict)->dict:
    "Multiply-adds of one step of every objective, and with `reuse_d`, counted on fake tensors (exact, no compute)."
    from torch.utils.flop_counter import FlopCounterMode
    from torch._subclasses.fake_tensor import FakeTensorMode
    out = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        fb = {k: torch.empty_like(v) for k, v in batch.items()}
        for o in a.objectives:
            t, _ = make_trainer(o, a, fb, prepare=False)
            plain_step(t)                                  # Adam state exists from the second step on
            for name, step in [(o, plain_step)] + ([(f"{o} (reuse_d off)", no_reuse_step)] if type(t).__name__ == "SharedDTrainer" else []):
                with FlopCounterMode(display=False) as fc: step(t)
                out[name] = fc.get_total_flops() // 2
    return out


def candidate(a, batch:dict, name:str, objective:str="cria")->dict:
    "Exactness (one step from the same state) and paired timing of candidate `name` against its baseline."
    t, _ = make_trainer(objective, a, batch)
    base, step = CANDIDATES[name]
    run_steps(t, max(a.warmup, 1))                    # Adam state and BatchNorm statistics exist from here on
    s0 = _state(t)
    f = lambda v: v.detach().item()
    base(t); loss_a = (f(t.loss), f(t.loss_d) if t.d_turn else None); sa = _state(t)
    _restore(t, s0)
    step(t); loss_b = (f(t.loss), f(t.loss_d) if t.d_turn else None); sb = _state(t)
    dg = _max_diff(sa["pg"], sb["pg"]); dd = _max_diff(sa["pd"], sb["pd"]) if sa["pd"] is not None else 0.   # parameters
    rel = abs(loss_a[0] - loss_b[0]) / max(abs(loss_a[0]), 1e-12)
    res = paired_rounds({"base": lambda: run_steps(t, a.iters, base), name: lambda: run_steps(t, a.iters, step)}, a.rounds)
    return dict(exact=dg == 0 and dd == 0 and loss_a == loss_b, max_dparam_g=dg, max_dparam_d=dd, loss_rel_diff=rel,
                base=base.__name__, base_s=statistics.median(res["base"]), cand_s=statistics.median(res[name]),
                ratio=med_ratio(res[name], res["base"]), active=type(t).__name__ == "SharedDTrainer" if name == "reuse_d" else True)


# ------------------------------------------------------------------ command line

def parser()->argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objectives", nargs="+", default=DEFAULT_OBJECTIVES, help="the first is the baseline of the ratios")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--arch", type=json.loads, default=None, help="generator overrides as JSON (default {}: the preset's own size)")
    ap.add_argument("--disc", default="auto"); ap.add_argument("--disc_arch", type=json.loads, default=None)
    ap.add_argument("--batch", type=int, default=None, help="default 4 (--quick: 2)")
    ap.add_argument("--patch", type=int, default=None, help="HR patch side (default 128; --quick: 32)")
    ap.add_argument("--rounds", type=int, default=None, help="paired rounds (default 3; --quick: 1)")
    ap.add_argument("--iters", type=int, default=None, help="steps per objective per round (default 3; --quick: 1)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    ap.add_argument("--channels_last", action="store_true", default=None, help="default: the device table's (criasr.archs.DEVICE_TABLE)")
    ap.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: the trainer's policy)")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--no-flops", dest="flops", action="store_false", help="skip the exact multiply-add count of one step")
    ap.add_argument("--flops-only", action="store_true", help="only count the multiply-adds of one step (no timing; under a minute)")
    ap.add_argument("--candidates", nargs="*", default=None, choices=list(CANDIDATES),
                    help="default: reuse_d, plus vgg_bf16 where bf16 is native (a CUDA GPU or a CPU with AMX/AVX512-BF16)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny networks, batch 2, patch 32, one round of one step")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    return ap


def resolve(a):
    "Fill the defaults that depend on --quick."
    q = a.quick
    a.batch = a.batch or (2 if q else 4); a.patch = a.patch or (32 if q else 128)
    a.rounds = a.rounds or (1 if q else 3); a.iters = a.iters or (1 if q else 3)
    if a.arch is None: a.arch = dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1) if q else {}
    if a.disc_arch is None: a.disc_arch = dict(num_feat=8) if q else {}
    if a.candidates is None:
        from criasr.archs import cpu_has_native_bf16
        native = (a.device == "cuda" and torch.cuda.is_bf16_supported()) or (a.device == "cpu" and cpu_has_native_bf16())
        a.candidates = ["reuse_d"] + (["vgg_bf16"] if native and a.precision == "fp32" else [])
    return a


def report(a, ratio:dict, prof:dict|None, cands:dict, before:str, after:str, label:str="", flops:dict|None=None)->None:
    from criasr.archs import build_generator, count_params
    with torch.device("meta"): n = count_params(build_generator(a.preset, **a.arch))
    print(f"{label}device {a.device}, threads {torch.get_num_threads()}, preset {a.preset} {a.arch or '(default size)'} "
          f"({n/1e6:.2f}M params), disc {a.disc} {a.disc_arch or ''}, batch {a.batch}, patch {a.patch}, precision {a.precision}, "
          f"{a.rounds} paired round(s) x {a.iters} step(s)")
    print(before); print(after)
    base = a.objectives[0]
    print(f"{'objective':<14}{'s/step':>9}{'x ' + base:>18}  D step  criteria")
    for o, r in ratio.items():
        print(f"{o:<14}{r['s_per_it']:>9.3f}{r['ratio']:>18.3f}  {'yes' if r['d_step'] else 'no ':<6}  {','.join(r['criteria'])}")
    if flops:
        b = flops[base]
        print("multiply-adds of one step (exact: FlopCounterMode on fake tensors; convolutions and matmuls, G + VGG + D, forward + backward):")
        for k, v in flops.items(): print(f"  {k:<26}{v/1e9:10.1f} G{v/b:8.3f} x {base}")
    if prof:
        tot = prof["ms"]["step total"]
        print(f"profile of one cria step ({prof['disc']} discriminator, precision {prof['precision']}, VGG features in {prof['vgg_dtype']}), ms per step:")
        for k, v in sorted(prof["ms"].items(), key=lambda kv: kv[0] != "step total"):
            print(f"  {k:<58}{v:>10.1f}{v / tot:>8.1%}")
    for name, c in cands.items():
        print(f"candidate {name}: {'EXACT' if c['exact'] else 'not exact'} (one step from the same state: max |Δ| G {c['max_dparam_g']:.2e}, "
              f"D {c['max_dparam_d']:.2e}, G loss rel. diff {c['loss_rel_diff']:.1e}); cria step {c['base_s']:.3f} s ({c['base']}) -> "
              f"{c['cand_s']:.3f} s, ratio {c['ratio']:.3f} (median of paired rounds)"
              + ("" if c["active"] else " [the trainer turns reuse_d off for this discriminator: nothing to compare]"))


def main(argv=None):
    a = resolve(parser().parse_args(argv))
    if a.device == "cuda" and not torch.cuda.is_available(): sys.exit("benchmarks/train.py: --device cuda but no CUDA device")
    if a.device == "cpu":
        torch.set_num_threads(a.threads or default_threads())
    batch = fixed_batch(a)
    if a.flops_only:
        flops = count_flops(a, batch)
        print(f"preset {a.preset} {a.arch or '(default size)'}, disc {a.disc} {a.disc_arch or ''}, batch {a.batch}, patch {a.patch}")
        b = flops[a.objectives[0]]
        print("multiply-adds of one step (exact: FlopCounterMode on fake tensors; convolutions and matmuls, G + VGG + D, forward + backward):")
        for k, v in flops.items(): print(f"  {k:<26}{v/1e9:10.1f} G{v/b:8.3f} x {a.objectives[0]}")
        return dict(flops=flops)
    before = load_line("before")
    flops = count_flops(a, batch) if a.flops else None
    ratio = objective_ratio(a, batch)
    prof = profile_step(a, batch) if a.profile and "cria" in a.objectives else None
    cands = {c: candidate(a, batch, c) for c in a.candidates}
    after = load_line("after ")
    report(a, ratio, prof, cands, before, after, "SMOKE (tiny sizes, not a measurement): " if a.quick else "", flops)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(args=vars(a), ratio=ratio, profile=prof, candidates=cands, flops=flops), f, indent=1, default=str)
    return dict(ratio=ratio, profile=prof, candidates=cands, flops=flops)


if __name__ == "__main__": main()
