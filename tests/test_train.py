"Tests of criasr.train: parameters, objectives, NaN guard, checkpoints, kill-and-resume, DDP, papermill."
import os, sys, json, time, signal, shutil, subprocess, itertools
from pathlib import Path
from types import SimpleNamespace
import pytest, torch
from safetensors.torch import load_file

from criasr.train import (PARAMS, validate_params, train, read_metrics, find_checkpoint, read_checkpoint, CheckpointError,
                          checkpoint_files, run_signature, build_parts, Trainer, NaNGuardCB, CheckpointCB, parse_value,
                          lr_at, sweep, TABLE_V, TABLE_VI)

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# a tiny CPU configuration shared by the tests (paper preset: both heads, the projector, a discriminator)
TINY = dict(dataset="demo", iters=4, batch=2, patch=32, arch=dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1),
            disc_arch=dict(num_feat=8), num_workers=0, val_every=0, save_every=2, log_every=1, val_images=1,
            val_metrics=["psnr"], n_samples=1, progress=False, cpu=True, vgg_weights="random", deterministic=True, pixel_warmup=0)
TINY_ARCH = {"paper": TINY["arch"], "esrgan": dict(num_feat=8, num_block=1, num_grow_ch=4),
             "official": dict(num_feat=8, num_block=1, num_grow_ch=4, branch_feat=8, branch_blocks=1)}

def cli_args(d:dict)->list:
    out = []
    for k, v in d.items(): out += [f"--{k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
    return out

def env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", HF_HUB_OFFLINE="1")

# ---------------------------------------------------------------- parameters
def test_params_validation():
    p = validate_params()
    assert p["objective"] == "cria" and p["preset"] == "paper" and p["dataset"] == "demo"
    q = validate_params(dataset="ntire2020")
    assert (q["iters"], q["batch"], q["patch"], q["lr"], q["betas"]) == (1_000_000, 16, 128, 1e-4, [0.9, 0.999])
    assert validate_params(dataset="ntire2020", schedule="official")["iters"] == 150_000
    assert validate_params(objective="official")["preset"] == "official"
    with pytest.raises(ValueError, match="did you mean objective"): validate_params(objectve="cria")
    with pytest.raises(ValueError, match="valid parameters"): validate_params(foo=1)
    with pytest.raises(ValueError, match="choose one of .*weighted_sum"): validate_params(objective="cria_cl")
    with pytest.raises(ValueError, match="expected int"): validate_params(batch=2.5)
    with pytest.raises(ValueError, match="unknown criterion"): validate_params(positives=["ssim", "lpips"])
    with pytest.raises(ValueError, match="choose one of"): validate_params(dataset="imagenet")
    assert set(TINY) <= set(PARAMS)

def test_lr_schedule():
    p = validate_params(dataset="div2k")
    assert [lr_at(i, p) for i in (0, 200_000, 400_000)] == [1e-4, 5e-5, 2.5e-5]
    p = validate_params(dataset="div2k", schedule="official")
    assert [lr_at(i, p) for i in (9_999, 10_000, 50_000, 149_999)] == [1e-4, 5e-5, 1.25e-5, 1e-4 / 32]

def test_sweep_plan():
    plan = sweep(TABLE_V + TABLE_VI, seeds=(0, 1), dry_run=True, iters=3)
    assert len(plan) == 20 and {q["objective"] for q in plan} == set(TABLE_V + TABLE_VI)

# ---------------------------------------------------------------- every objective learns
def _fixed_batch():
    torch.manual_seed(0)
    hr = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8), size=32, mode="bilinear", align_corners=False)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    return dict(lr=lr, hr=hr)

def _objectives():
    from criasr.cria import OBJECTIVES
    return sorted(OBJECTIVES)

@pytest.mark.parametrize("objective", _objectives())
def test_objective_step_lowers_loss(objective):
    from accelerate import Accelerator
    p = validate_params(**{**TINY, "objective": objective, "lr": 2e-3, "d_every": 0, "ema": 0.0})
    p["arch"] = TINY_ARCH[p["preset"]]
    parts = build_parts(p)
    from criasr.train import HeadsNet
    net = HeadsNet(parts["gen"])
    acc = Accelerator(cpu=True)
    opt_g = torch.optim.Adam(parts["gen"].parameters(), lr=p["lr"])
    opt_d = torch.optim.Adam(parts["disc"].parameters(), lr=p["lr"]) if parts["disc"] is not None else None
    b = _fixed_batch()
    t = Trainer(net, parts["part"], parts["bank"], itertools.repeat(b), opt_g, acc, p, parts["disc"], opt_d, [NaNGuardCB(2)])
    losses = []
    t.cbs.append(SimpleNamespace(order=0, after_loss=lambda tr: losses.append(float(tr.loss.detach()))))
    t.fit(0, 4)
    assert all(map(torch.isfinite, torch.tensor(losses))), losses
    assert losses[-1] < losses[0], (objective, losses)
    if parts["part"].uses_gan:  # one iteration with the discriminator step too
        p["d_every"] = 1
        d0 = [x.clone() for x in parts["disc"].parameters()]
        t.use_d = True; t.fit(6, 7)
        assert any((a != b_).any() for a, b_ in zip(d0, parts["disc"].parameters()))

# ---------------------------------------------------------------- a run, its folder, checkpoints
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run = train(**{**TINY, "save_every": 1}, out_dir=str(out))
    return run

def test_run_folder(tiny_run):
    assert tiny_run.name == "demo_paper_cria_x4_s0"
    p = json.loads((tiny_run / "params.json").read_text())
    for k in ("preset", "scale", "arch", "objective", "dataset", "iters", "lr", "warnings", "vgg_weights_resolved"):
        assert k in p
    assert p["vgg_weights_resolved"] == "random"
    m = read_metrics(tiny_run)
    assert {"iter", "time", "lr", "loss/total", "loss/pix", "loss/align", "loss/unif", "crit/pixel", "val/psnr"} <= set(m.columns)
    assert m["iter"].max() == 4 and m["val/psnr"].notna().sum() == 2
    ck = tiny_run / "checkpoints"
    w = load_file(ck / "net_g_0000004.safetensors")
    assert any(k.startswith("params.") for k in w) and any(k.startswith("params_ema.") for k in w)
    assert (ck / "net_g_latest.safetensors").exists() and (ck / "net_g_best.safetensors").exists()
    assert len(list((tiny_run / "samples").glob("*.png"))) == 2
    from criasr.archs import build_generator, load_pretrained
    g = build_generator("paper", 4, **TINY["arch"])
    rep = load_pretrained(g, ck / "net_g_0000004.safetensors")
    assert not rep.missing

def test_checkpoint_fallback(tiny_run, tmp_path):
    ck = tmp_path / "checkpoints"; shutil.copytree(tiny_run / "checkpoints", ck)
    sig = run_signature(validate_params(**TINY))
    assert find_checkpoint(ck, sig)[1]["iter"] == 4
    # truncated state: reported by name, previous checkpoint used
    f4 = ck / "state_0000004.pt"; f4.write_bytes(f4.read_bytes()[:1000])
    logs = []
    f, state, _ = find_checkpoint(ck, sig, log=logs.append)
    assert state["iter"] == 3 and "state_0000004.pt" in logs[0]
    # weights that do not match the state's checksum
    w3 = ck / "net_g_0000003.safetensors"; b = bytearray(w3.read_bytes()); b[-1] ^= 1; w3.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="checksum"): read_checkpoint(ck / "state_0000003.pt", sig)
    assert find_checkpoint(ck, sig, log=logs.append)[1]["iter"] == 2
    # a checkpoint of another run
    with pytest.raises(CheckpointError, match="different run"): read_checkpoint(ck / "state_0000002.pt", {**sig, "objective": "wsum"})
    # a foreign file named like a state
    torch.save({"hello": torch.zeros(1)}, ck / "state_0000009.pt")
    with pytest.raises(CheckpointError, match="not a criasr training state"): read_checkpoint(ck / "state_0000009.pt")
    for f in checkpoint_files(ck): f.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no usable checkpoint"): find_checkpoint(ck, sig, log=logs.append)

def test_never_saves_non_finite(tiny_run, tmp_path):
    from criasr.archs import build_generator
    g = build_generator("paper", 4, **TINY["arch"])
    with torch.no_grad(): next(g.parameters())[0] = float("nan")
    acc = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None, scaler=None)
    t = SimpleNamespace(iter=5, iters=5, gen=g, disc_raw=None, acc=acc)
    with pytest.raises(FloatingPointError, match="non-finite checkpoint"):
        CheckpointCB(tmp_path, validate_params(**TINY), None).save(t)
    assert not list((tmp_path / "checkpoints").glob("*")) if (tmp_path / "checkpoints").exists() else True

# ---------------------------------------------------------------- NaN guard
def test_nan_injection_skips_and_stops(tmp_path):
    cfg = {**TINY, "objective": "plain", "preset": "esrgan", "arch": TINY_ARCH["esrgan"], "out_dir": str(tmp_path)}
    run = train(**cfg, run_name="skip", inject_nan={"loss/pix": [2]})
    fin = json.loads((run / "final.json").read_text())
    assert fin["counters"]["nan_skipped"] == 1 and fin["iter"] == 4
    with pytest.raises(FloatingPointError, match=r"3 non-finite steps in a row; last: non-finite loss/pix at iteration 4"):
        train(**{**cfg, "iters": 6, "save_every": 1}, run_name="stop", max_nan=3, inject_nan={"loss/pix": [2, 3, 4]})
    ck = tmp_path / "stop" / "checkpoints"
    assert checkpoint_files(ck)[0].name == "state_0000003.pt"   # nothing saved at or after the failing iteration
    for f in ck.glob("net_g_0*.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(f).values())

# ---------------------------------------------------------------- kill -9 and resume: bit-identical
def _weights_and_state(run, it):
    ck = Path(run) / "checkpoints"
    w = load_file(ck / f"net_g_{it:07d}.safetensors")
    s = torch.load(ck / f"state_{it:07d}.pt", weights_only=True)
    return w, s

def _same(a, b, path="state"):
    if torch.is_tensor(a): assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a: _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)): _same(x, y, f"{path}[{i}]")
    else: assert a == b, path

@pytest.mark.slow
def test_sigkill_resume_bit_identical(tmp_path):
    # with the criteria-conflict diagnostics on: test_conflict_diagnostics shows they change nothing, so this covers both
    cfg = {**TINY, "iters": 8, "save_every": 3, "keep_checkpoints": 0, "pixel_warmup": 2, "conflict_every": 3}
    ref = train(**{**cfg, "out_dir": str(tmp_path / "ref")})
    out = tmp_path / "killed"
    cmd = [PY, "-m", "criasr.train", *cli_args({**cfg, "out_dir": str(out), "debug_sleep": 0.5})]
    proc = subprocess.Popen(cmd, env=env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ck = out / ref.name / "checkpoints"
    t0 = time.time()
    while not (ck / "state_0000003.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() - t0 < 120, "no checkpoint after 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (ck / "state_0000008.pt").exists(), "the run finished before it could be killed"
    res = subprocess.run([PY, "-m", "criasr.train", *cli_args({**cfg, "out_dir": str(out)})], env=env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr
    w1, s1 = _weights_and_state(ref, 8); w2, s2 = _weights_and_state(out / ref.name, 8)
    _same(w1, w2, "weights")
    for k in ("opt_g", "opt_d", "net_d", "rng", "counters", "iter"): _same(s1[k], s2[k], k)
    m = read_metrics(out / ref.name)
    assert list(m.dropna(subset=["loss/total"])["iter"]) == list(range(1, 9))   # rows logged past the checkpoint were dropped
    assert list(m.dropna(subset=["conflict/pixel~ssim"])["iter"]) == [3, 6]

# ---------------------------------------------------------------- criteria-conflict diagnostics
def test_conflict_diagnostics(tiny_run, tmp_path):
    import numpy as np
    from criasr.cria import get_objective
    from criasr.explore import partition_criteria, run_metrics, plot_curves, CurvesWidget
    from criasr.train import plot_convergence, sweep_table
    run = train(**{**TINY, "save_every": 1}, conflict_every=2, out_dir=str(tmp_path))
    m = read_metrics(run)
    names = partition_criteria(get_objective("cria"))          # the tiny run's partition, adversarial included
    pairs = {f"conflict/{a}~{b}" for i, a in enumerate(names) for b in names[i + 1:]}
    assert {c for c in m if c.startswith("conflict/")} == pairs
    rows = m.dropna(subset=sorted(pairs), how="all")
    assert list(rows["iter"]) == [2, 4] and rows["loss/total"].isna().all()   # rows of their own, every 2 iterations
    v = rows[sorted(pairs)].to_numpy(float)
    assert np.isfinite(v).all() and (np.abs(v) <= 1 + 1e-9).all(), v
    assert not np.allclose(v, v[:, :1])
    # the diagnostics change nothing: weights, Adam, discriminator (BatchNorm statistics) and RNGs equal the run without them
    for it in (2, 4):
        w1, s1 = _weights_and_state(tiny_run, it); w2, s2 = _weights_and_state(run, it)
        _same(w1, w2, "weights")
        for k in ("opt_g", "opt_d", "net_d", "rng", "counters"): _same(s1[k], s2[k], k)
    # rows with conflict keys only don't break the readers and plots
    import matplotlib.pyplot as plt
    plot_convergence(run); plt.close("all"); sweep_table(tmp_path)
    assert pairs <= set(run_metrics([run]))
    fig = plot_curves([run], ["loss/total", "conflict/pixel~ssim"])
    assert len(fig.axes[1].lines[0].get_xdata()) == 2
    assert CurvesWidget(run).metrics.value[0] == "loss/total"
    with pytest.raises(ValueError, match="conflict_every"): validate_params(conflict_every=-2)

# ---------------------------------------------------------------- DDP over gloo
@pytest.mark.slow
def test_torchrun_ddp_ranks_identical(tmp_path):
    cfg = {**TINY, "iters": 3, "save_every": 3, "out_dir": str(tmp_path), "grad_accum": 2}
    torchrun = shutil.which("torchrun", path=str(Path(PY).parent)) or "torchrun"
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "criasr.train", *cli_args(cfg)],
                         env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    fin = json.loads((tmp_path / "demo_paper_cria_x4_s0" / "final.json").read_text())
    assert fin["world_size"] == 2 and fin["iter"] == 3
    d = fin["param_digest_per_rank"]
    assert len(d) == 2 and d[0] == d[1]

# ---------------------------------------------------------------- papermill end to end
@pytest.mark.slow
def test_papermill_train_notebook(tmp_path):
    import papermill as pm
    params = {k: v for k, v in TINY.items() if k not in ("deterministic",)}
    params.update(out_dir=str(tmp_path), iters=3, save_every=3)
    pm.execute_notebook(str(REPO / "nbs" / "train.ipynb"), str(tmp_path / "out.ipynb"), parameters=params,
                        cwd=str(REPO / "nbs"), progress_bar=False, kernel_name="python3")
    run = tmp_path / "demo_paper_cria_x4_s0"
    assert json.loads((run / "final.json").read_text())["iter"] == 3
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    assert any("PSNR" in "".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))

def test_cli_parse():
    assert parse_value("inject_nan", '{"loss/pix": [2]}') == {"loss/pix": [2]}
    from criasr.train import cli_parser
    a = cli_parser().parse_args(["--dataset", "demo", "--iters", "100"])
    assert vars(a) == {"dataset": "demo", "iters": "100"}

def test_init_from(tiny_run, tmp_path):
    src = tiny_run / "checkpoints" / "net_g_0000004.safetensors"
    run = train(**{**TINY, "iters": 1, "out_dir": str(tmp_path)}, init_from=str(src))
    rep = json.loads((run / "init_report.json").read_text())
    assert rep["loaded"] and not rep["missing"] and not rep["unexpected"]

@pytest.mark.slow
def test_sweep_runs_and_tabulates(tmp_path):
    from criasr.train import sweep_table
    params = {k: v for k, v in TINY.items() if k not in ("deterministic",)}
    params.update(iters=2, save_every=2, preset="paper")
    runs = sweep(["wsum", "plain"], seeds=(0,), out_dir=tmp_path, **params)
    assert [r.name for r in runs] == ["demo_paper_wsum_x4_s0", "demo_paper_plain_x4_s0"]
    assert (tmp_path / "demo_paper_wsum_x4_s0.ipynb").exists()
    t = sweep_table(tmp_path)
    assert sorted(t["objective"]) == ["plain", "wsum"] and (t["iter"] == 2).all() and t["val/psnr"].notna().all()
