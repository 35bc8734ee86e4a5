"""GPU figures in one table, in under five minutes on a data-centre GPU: frames/s of `criasr-sr`'s default path and of the
tuned forwards at 480x640 x4, peak memory, and `criasr-train`'s default step (it/s, cria / weighted_sum) at batch 16, patch 128.

    python benchmarks/gpu.py                      # on a CUDA machine
    python benchmarks/gpu.py --dry-run            # smoke test on the CPU: tiny networks and sizes, compile with the eager backend
    python benchmarks/gpu.py --compile all        # compile every precision (longer: one compilation per model and precision)

Forward: `esrgan`, `paper` (the default, the paper's size), `official` at full size with random weights (speed does not depend on the
values), one 1x3x480x640 LR frame (a 640x480 image; output 2560x1920), channels-last, weights and activations in fp32
(TF32 convolutions where the GPU has them, PyTorch's default), bf16 and fp16 (model and input cast, as traiNNer-redux
benchmarks); each eager, and compiled with `torch.compile` for the precisions `--compile` names (default fp16, the
anchor's). FPS = frames / second over `--frames` frames after two warm-up frames, synchronised; peak = the device's
max_memory_allocated over the timed frames. Anchor: traiNNer-redux reports 4.82 FPS for ESRGAN fp16 + channels-last at
480x640 on an RTX 4090; the aim for `paper` on a data-centre GPU is twice that.

Defaults first: `criasr-sr` as it runs with no options (`prepare_model` + tiled `upscale`: tile 256, overlap 16, batch
4 on a GPU, `precision auto` from `criasr.archs.DEVICE_TABLE`, weights kept fp32 under autocast, the image read to and
written from the CPU), for each model. The "tuned" rows are the paths `criasr-sr` does not take (weights and input cast
to the precision, channels-last, no tiling, optionally compiled).

Training: `criasr-train`'s defaults through the real trainer step (batch 16, patch 128, the default `paper` generator,
vgg128 discriminator; precision, channels-last, TF32 and cuDNN autotuning all `auto`, i.e. the device table's row): it/s
of the `cria` step (the default objective) and its ratio to `weighted_sum`, paired rounds, plus the trainer's `reuse_d`
(one discriminator forward per image per iteration, the default) against `reuse_d=False`, compared after one step from
the same state: bitwise on a CPU, within a tolerance on CUDA (cuDNN picks non-deterministic kernels).

Time budget (`--budget`, default 270 s): eager forwards first, then training, then compiled forwards (each compilation
in a subprocess that is stopped when the budget runs out; the table says which were skipped).
"""
import argparse, importlib.util, json, subprocess, sys, time
from pathlib import Path
import torch

HERE = Path(__file__).resolve().parent
MODELS = ["esrgan", "paper", "official"]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ANCHOR_FPS = 4.82   # traiNNer-redux: ESRGAN, fp16 + channels-last, 480x640, RTX 4090
TINY = dict(esrgan=dict(num_feat=8, num_block=1, num_grow_ch=4), paper=dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1),
            official=dict(num_feat=8, num_block=1, num_grow_ch=4, branch_feat=8, branch_blocks=1))


def _sibling(name:str):
    "benchmarks/<name>.py as a module (benchmarks/ is not a package)."
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def sync(dev): torch.cuda.synchronize() if dev.type == "cuda" else None


def fps_one(cfg:dict)->dict:
    "Frames/s and peak memory of one (model, precision, compiled) forward configuration, in this process."
    from criasr.archs import build_generator, count_params
    dev = torch.device(cfg["device"])
    torch.manual_seed(0)
    g = build_generator(cfg["model"], scale=4, **(TINY[cfg["model"]] if cfg["tiny"] else {})).eval()
    g = g.to(dev, PRECISIONS[cfg["precision"]]).to(memory_format=torch.channels_last)
    h, w = cfg["size"]
    x = torch.rand(1, 3, h, w, device=dev).to(PRECISIONS[cfg["precision"]]).contiguous(memory_format=torch.channels_last)
    f = g
    t_compile = None
    if cfg["compile"]:
        f = torch.compile(g, backend=cfg["backend"])
        sync(dev); t = time.perf_counter()
        with torch.no_grad(): f(x)
        sync(dev); t_compile = time.perf_counter() - t
    with torch.no_grad():
        for _ in range(2): y = f(x)                              # warm-up (cuDNN autotuning, allocator)
        if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
        sync(dev); t = time.perf_counter()
        for _ in range(cfg["frames"]): y = f(x)
        sync(dev); dt = (time.perf_counter() - t) / cfg["frames"]
    return dict(fps=1 / dt, ms=1000 * dt, peak_gib=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
                finite=bool(torch.isfinite(y.float()).all()), compile_s=t_compile, params=count_params(g))


def sr_default_one(cfg:dict)->dict:
    "Frames/s and peak memory of what `criasr-sr` runs with no options: `prepare_model` + tiled `upscale`, precision auto."
    from criasr.archs import build_generator
    from criasr.infer import prepare_model, upscale, resolve_precision
    dev = torch.device(cfg["device"])
    torch.manual_seed(0)
    g = prepare_model(build_generator(cfg["model"], scale=4, **(TINY[cfg["model"]] if cfg["tiny"] else {})), dev, "auto")
    h, w = cfg["size"]
    img = torch.rand(3, h, w)                                    # the decoded image, on the CPU as criasr-sr holds it
    kw = dict(tile=cfg["tile"], overlap=cfg["overlap"], precision="auto", device=dev)
    for _ in range(2): y = upscale(g, img, **kw)                 # warm-up
    if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
    sync(dev); t = time.perf_counter()
    for _ in range(cfg["frames"]): y = upscale(g, img, **kw)
    sync(dev); dt = (time.perf_counter() - t) / cfg["frames"]
    prec, cl = resolve_precision("auto", dev)
    return dict(fps=1 / dt, ms=1000 * dt, peak_gib=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
                finite=bool(torch.isfinite(y).all()), precision=prec + ("+CL" if cl else ""))


def compiled_in_subprocess(cfgs:list, timeout:float)->dict:
    "`fps_one` for every cfg in one child process; results that finished before `timeout` (key -> result or error text)."
    out = {}
    if timeout <= 5: return {c["key"]: "skipped (time budget)" for c in cfgs}
    try:
        r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfgs)], capture_output=True, text=True, timeout=timeout)
        lines, err = r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        lines, err = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    for line in lines.splitlines():
        if line.startswith("{"):
            d = json.loads(line); out[d.pop("key")] = d
    for c in cfgs:
        if c["key"] not in out: out[c["key"]] = "skipped (time budget)" if err == "timeout" else f"failed: {err.strip().splitlines()[-1] if err.strip() else '?'}"
    return out


def worker(cfgs:list):
    if torch.cuda.is_available(): torch.backends.cudnn.benchmark = True
    for c in cfgs:
        try: r = fps_one(c)
        except Exception as e: r = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
        print(json.dumps(dict(key=c["key"], **r)), flush=True)


def train_ratio(a, dev:torch.device)->dict:
    "cria / weighted_sum through the real trainer step (benchmarks/train.py), and its reuse_d candidate."
    tb = _sibling("train")
    from criasr.train import resolve_train_precision
    from criasr.archs import resolve_engine
    args = ["--device", dev.type, "--precision", a.train_precision, "--no-profile", "--no-flops",   # channels-last: auto, as the trainer
            "--candidates", *(["reuse_d"] if a.reuse_d else [])]
    args += ["--quick"] if a.dry_run else ["--batch", "16", "--patch", "128", "--rounds", str(a.rounds), "--iters", str(a.iters)]
    ta = tb.resolve(tb.parser().parse_args(args))
    ta.resolved_precision = resolve_train_precision(ta.precision, dev.type == "cpu")
    ta.engine = resolve_engine(dev, ta.precision)
    batch = tb.fixed_batch(ta)
    ratio = tb.objective_ratio(ta, batch)
    cands = {c: tb.candidate(ta, batch, c) for c in ta.candidates}
    return dict(args=ta, ratio=ratio, candidates=cands)


def agreement(cnd:dict, dev:torch.device, lr:float=1e-4)->str:
    "Bitwise on a CPU; on CUDA, where cuDNN's kernels are not deterministic, parameters within 1% of one step's lr and losses within 1e-3."
    d = max(cnd["max_dparam_g"], cnd["max_dparam_d"])
    if cnd["exact"]: return "exact (bitwise)"
    if dev.type == "cuda" and d <= 0.01 * lr and cnd["loss_rel_diff"] <= 1e-3:
        return f"agrees within tolerance (max |dparam| {d:.1e} <= 1% of lr; loss rel. diff {cnd['loss_rel_diff']:.1e})"
    return f"DIFFERS: max |dparam| G {cnd['max_dparam_g']:.1e} D {cnd['max_dparam_d']:.1e}, loss rel. diff {cnd['loss_rel_diff']:.1e}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU smoke test: tiny networks, 24x32 input, eager-backend compile")
    ap.add_argument("--compile", nargs="*", default=None, help="precisions to also run compiled: fp16 (default), all, or none")
    ap.add_argument("--backend", default=None, help="torch.compile backend (default inductor; --dry-run: eager)")
    ap.add_argument("--frames", type=int, default=None, help="timed frames per configuration (default 10; --dry-run: 2)")
    ap.add_argument("--budget", type=float, default=270, help="seconds for the whole script (default 270)")
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds of the training ratio (--dry-run: 1)")
    ap.add_argument("--iters", type=int, default=3, help="training steps per objective per round (--dry-run: 1)")
    ap.add_argument("--train-precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--no-reuse-d", dest="reuse_d", action="store_false", help="skip timing the trainer with reuse_d off")
    ap.add_argument("--no-train", dest="train", action="store_false")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker: return worker(json.loads(a.worker))
    t_start = time.perf_counter()
    left = lambda: a.budget - (time.perf_counter() - t_start)
    if a.dry_run: dev = torch.device("cpu")
    elif torch.cuda.is_available(): dev = torch.device("cuda")
    else: sys.exit("benchmarks/gpu.py: no CUDA device; run with --dry-run for a CPU smoke test")
    if dev.type == "cuda": torch.backends.cudnn.benchmark = True
    size = (24, 32) if a.dry_run else (480, 640)
    frames = a.frames or (2 if a.dry_run else 10)
    backend = a.backend or ("eager" if a.dry_run else "inductor")
    comp = ["fp16"] if a.compile is None else (list(PRECISIONS) if a.compile == ["all"] else [c for c in a.compile if c != "none"])
    bad = [c for c in comp if c not in PRECISIONS]
    if bad: ap.error(f"--compile: unknown precision(s) {bad}; choose from {list(PRECISIONS)}, all or none")
    precs = [p for p in PRECISIONS if p != "bf16" or dev.type == "cpu" or torch.cuda.is_bf16_supported()]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (dry run)"
    print(f"{'DRY RUN (CPU, tiny networks: not a measurement) ' if a.dry_run else ''}device {name}; torch {torch.__version__}"
          + (f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, TF32 conv {torch.backends.cudnn.allow_tf32} "
             f"matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark on" if dev.type == "cuda" else "")
          + f"; input 1x3x{size[0]}x{size[1]} x4, channels-last; budget {a.budget:.0f} s", flush=True)
    base = dict(device=dev.type, size=size, frames=frames, tiny=a.dry_run, backend=backend)
    rows, sr_rows = {}, {}
    for m in MODELS:                                                  # 0. criasr-sr's defaults
        if left() < 10: sr_rows[m] = "skipped (time budget)"; continue
        try: sr_rows[m] = sr_default_one(dict(base, model=m, tile=16 if a.dry_run else 256, overlap=4 if a.dry_run else 16))
        except Exception as e: sr_rows[m] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        if dev.type == "cuda": torch.cuda.empty_cache()
    for m in MODELS:                                                  # 1. tuned, eager, in this process
        for p in precs:
            if left() < 10: rows[(m, p, False)] = "skipped (time budget)"; continue
            try: rows[(m, p, False)] = fps_one(dict(base, model=m, precision=p, compile=False))
            except Exception as e: rows[(m, p, False)] = f"failed: {type(e).__name__}: {str(e)[:120]}"
            if dev.type == "cuda": torch.cuda.empty_cache()
    train = None
    if a.train:                                                       # 2. training-step ratio
        try: train = train_ratio(a, dev) if left() > 30 else "skipped (time budget)"
        except Exception as e: train = f"failed: {type(e).__name__}: {str(e)[:200]}"
        if dev.type == "cuda": torch.cuda.empty_cache()
    cfgs = [dict(base, model=m, precision=p, compile=True, key=f"{m}|{p}") for p in comp if p in precs for m in MODELS]
    if cfgs:                                                          # 3. compiled, in a child process, within the budget
        res = compiled_in_subprocess(cfgs, left() - 5)
        for c in cfgs: rows[(c["model"], c["precision"], True)] = res[c["key"]]
    # the table
    print(f"\n{'what':<34}{'precision':>10}{'compiled':>10}{'FPS / it/s':>12}{'ms':>10}{'peak GiB':>10}{'x esrgan':>10}  note")
    print("-" * 110)
    for m, r in sr_rows.items():
        what = f"criasr-sr default {m}"
        if not isinstance(r, dict): print(f"{what:<34}{'auto':>10}{'no':>10}  {r}"); continue
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"{what:<34}{r['precision']:>10}{'no':>10}{r['fps']:>12.2f}{r['ms']:>10.1f}{peak:>10}{'':>10}  tile {16 if a.dry_run else 256} "
              f"(+ CPU<->device copies), weights fp32 (autocast below fp32){'' if r['finite'] else ' NON-FINITE OUTPUT'}")
    for (m, p, c), r in rows.items():
        what = f"tuned forward {m} {size[1]}x{size[0]} x4"
        if not isinstance(r, dict) or "error" in r:
            print(f"{what:<34}{p:>10}{'yes' if c else 'no':>10}  {r if isinstance(r, str) else r['error']}"); continue
        ref = rows.get(("esrgan", p, c))
        x = f"{r['fps'] / ref['fps']:.2f}" if isinstance(ref, dict) and "fps" in ref else ""
        note = (f"compile {r['compile_s']:.0f} s" if r.get("compile_s") is not None else "") + ("" if r["finite"] else " NON-FINITE OUTPUT")
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"{what:<34}{p:>10}{'yes' if c else 'no':>10}{r['fps']:>12.2f}{r['ms']:>10.1f}{peak:>10}{x:>10}  {note}")
    if isinstance(train, dict):
        ta = train["args"]
        base_o = ta.objectives[0]
        e = ta.engine
        print(f"criasr-train defaults here: {e['precision']}, channels-last {'on' if e['channels_last'] else 'off'}, "
              f"TF32 {'on' if e['tf32'] else 'off'}, cudnn.benchmark {'on' if e['cudnn_benchmark'] else 'off'}")
        for o, r in train["ratio"].items():
            what = f"train step {o} b{ta.batch} p{ta.patch}"
            print(f"{what:<34}{ta.resolved_precision:>10}{'no':>10}{1 / r['s_per_it']:>12.2f}{1000 * r['s_per_it']:>10.1f}{'':>10}{'':>10}  "
                  f"x {base_o}: {r['ratio']:.3f} (median of {ta.rounds} paired rounds)")
        for n, cnd in train["candidates"].items():
            print(f"{'train step cria, ' + n:<34}{ta.resolved_precision:>10}{'no':>10}{1 / cnd['cand_s']:>12.2f}{1000 * cnd['cand_s']:>10.1f}"
                  f"{'':>20}  x cria step with {cnd['base']}: {cnd['ratio']:.3f}; {agreement(cnd, dev)}")
    elif train is not None: print(f"{'train step cria / weighted_sum':<34}  {train}")
    fp16 = [r for (m, p, c), r in rows.items() if m == "paper" and p == "fp16" and isinstance(r, dict) and "fps" in r]
    best = max((r["fps"] for r in fp16), default=None)
    print(f"\nanchor: traiNNer-redux ESRGAN fp16 + channels-last 480x640 on an RTX 4090: {ANCHOR_FPS} FPS; aim for paper: "
          f"{2 * ANCHOR_FPS:.2f} FPS" + (f"; paper fp16 here: {best:.2f} FPS" if best is not None and not a.dry_run else "")
          + f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return rows, train


if __name__ == "__main__":
    main()
