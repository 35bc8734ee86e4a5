"Sweeps through submitit (issue 19): real local runs, re-entrance, a killed run resumed, pre-emption, SLURM against a fake sbatch, bad input."
import os, sys, json, time, signal, stat, subprocess
from pathlib import Path
import pytest
import submitit
from criasr.runs import Run, read_metrics, checkpoint_marks
from criasr.sweep import sweep, sweep_status, read_manifest, SWEEP_FILE, TrainJob, main

BIN = Path(sys.executable).parent
TINY = dict(dataset="demo", iters=4, batch=2, patch=32, arch=dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1),
            disc_arch=dict(num_feat=8), num_workers=0, val_every=0, save_every=2, log_every=1, val_images=2, val_metrics=["psnr"],
            n_samples=0, progress=False, cpu=True, vgg_weights="random", precision="fp32", init_from="scratch", lr=1e-3)

@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1"); monkeypatch.setenv("HF_HUB_OFFLINE", "1")

def test_local_sweep_runs_reenters_and_tabulates(tmp_path):
    m = sweep(["wsum", "cria"], seeds=(0, 1), executor="local", out_dir=tmp_path, wait=True, **TINY)
    runs = sorted(m["runs"])
    assert runs == sorted(f"demo_paper_{o}_x4_s{s}" for o in ("wsum", "cria") for s in (0, 1))
    assert {r["state"] for r in m["runs"].values()} == {"FINISHED"}
    for r in runs:                                   # 4 real runs: checkpoint at iters, metrics logged, the row's objective
        p = Run(tmp_path / r).read_params()
        assert json.loads((tmp_path / r / "final.json").read_text())["iter"] == 4 and p["objective"] in r and p["seed"] == int(r[-1])
        assert read_metrics(tmp_path / r)["val/psnr"].notna().any()
    disk = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert disk["seeds"] == [0, 1] and set(disk["rows"]) == {"wsum", "cria"} and all(r["job_id"] for r in disk["runs"].values())
    ids = {r: v["job_id"] for r, v in disk["runs"].items()}
    m2 = sweep(["wsum", "cria"], seeds=(0, 1), executor="local", out_dir=tmp_path, wait=True, **TINY)
    assert {r: v["job_id"] for r, v in m2["runs"].items()} == ids and {v["attempts"] for v in m2["runs"].values()} == {1}
    assert len(list((tmp_path / "submitit").glob("*_submitted.pkl"))) == 4            # the second call submitted nothing
    assert {s["state"] for s in sweep_status(tmp_path)} == {"FINISHED"}
    tables = pytest.importorskip("criasr.tables")
    if hasattr(tables, "sweep_table"):                # mean ± 95 % CI (t over 2 seeds) by hand
        import numpy as np, scipy.stats as st
        t = tables.sweep_table(tmp_path, "V")
        for o in ("wsum", "cria"):
            v = [read_metrics(tmp_path / f"demo_paper_{o}_x4_s{s}").dropna(subset=["val/psnr"])["val/psnr"].iloc[-1] for s in (0, 1)]
            row = t[t["objective"] == (tables.row_of(o, tables.TABLES["V"]) or o)].iloc[0]
            assert row["psnr"] == pytest.approx(np.mean(v))
            assert row["psnr_ci"] == pytest.approx(st.t.ppf(0.975, 1) * np.std(v, ddof=1) / np.sqrt(2))

def test_killed_run_is_resumed_by_the_next_call(tmp_path):
    kw = {**TINY, "iters": 8, "save_every": 2, "debug_sleep": 0.5}
    m = sweep(["wsum"], seeds=(0,), executor="local", out_dir=tmp_path, **kw)
    run = tmp_path / "demo_paper_wsum_x4_s0"
    deadline = time.time() + 120
    while time.time() < deadline and not any(int(f.name[5:12]) >= 2 for f in checkpoint_marks(run / "checkpoints")): time.sleep(0.2)
    pid = int((run / ".lock").read_text())           # the trainer (the lock holds its pid)
    os.kill(pid, signal.SIGKILL)
    job = submitit.local.local.LocalJob(tmp_path / "submitit", m["runs"][run.name]["job_id"])
    deadline = time.time() + 60
    while time.time() < deadline and sweep_status(tmp_path)[0]["state"] == "RUNNING": time.sleep(0.2)
    st = sweep_status(tmp_path)[0]
    assert st["state"] not in ("FINISHED", "RUNNING") and st["attempts"] == 1   # dead, not finished
    killed_at = max(int(f.name[5:12]) for f in checkpoint_marks(run / "checkpoints"))
    assert 2 <= killed_at < 8
    m2 = sweep(["wsum"], seeds=(0,), executor="local", out_dir=tmp_path, wait=True, **kw)
    rec = m2["runs"][run.name]
    assert rec["state"] == "FINISHED" and rec["attempts"] == 2
    logs = "".join(f.read_text() for f in (tmp_path / "submitit").glob(f"{rec['job_id']}_0_log.*"))
    assert f"at iteration {killed_at} of 8" in logs                                  # resumed from the last checkpoint
    assert read_metrics(run).dropna(subset=["loss/total"])["iter"].tolist() == list(range(1, 9))

def test_preempted_job_commits_and_requeues(tmp_path):
    "SIGUSR2 (what SLURM sends before a time-out): the trainer commits a checkpoint, submitit requeues, the job resumes and finishes."
    kw = {**TINY, "iters": 30, "save_every": 0, "debug_sleep": 0.2}
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local"); ex.update_parameters(timeout_min=10)
    job = ex.submit(TrainJob({**kw, "objective": "wsum", "out_dir": str(tmp_path)}))
    run = tmp_path / "demo_paper_wsum_x4_s0"
    deadline = time.time() + 120
    while time.time() < deadline and read_metrics(run, missing_ok=True).get("iter", []).__len__() < 3: time.sleep(0.2)
    os.kill(int((run / ".lock").read_text()), signal.SIGUSR2)   # what SLURM sends the job step before a time-out or pre-emption
    assert job.result() == str(run)
    logs = "".join(f.read_text() for f in sorted((tmp_path / "submitit").glob(f"{job.job_id}_0_log.*")))
    assert "SIGUSR2: committed a checkpoint at iteration" in logs and "Requeued job" in logs
    at = int(logs.split("SIGUSR2: committed a checkpoint at iteration ")[1].split()[0])
    assert 0 < at < 30 and f"at iteration {at} of 30" in logs                       # the requeued job resumed from that commit
    assert json.loads((run / "final.json").read_text())["iter"] == 30

def test_slurm_array_against_a_fake_sbatch(tmp_path, monkeypatch):
    fake = tmp_path / "bin"; fake.mkdir(); rec = tmp_path / "sbatch_calls"
    (fake / "sbatch").write_text(f"#!/bin/sh\ncat \"$1\" >> {rec}\necho 'Submitted batch job 4242'\n")
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "sacct").write_text("#!/bin/sh\nexit 1\n")
    for f in fake.iterdir(): f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    m = sweep(["wsum", "cria"], seeds=(0, 1), executor="slurm", out_dir=tmp_path / "sw",
              slurm=dict(partition="gpu", timeout_min=120, gpus_per_node=1, account="proj7"), **TINY)
    script = rec.read_text()
    assert script.count("#!/bin/bash") == 1                                           # one array job
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --gpus-per-node=1", "#SBATCH --account=proj7",
                 "#SBATCH --array=0-3%4", "#SBATCH --signal=USR2@90"):
        assert line in script, line
    assert sorted(r["job_id"] for r in m["runs"].values()) == [f"4242_{i}" for i in range(4)]
    assert {r["executor"] for r in m["runs"].values()} == {"slurm"}
    m2 = sweep(["wsum", "cria"], seeds=(0, 1), executor="slurm", out_dir=tmp_path / "sw",
               slurm=dict(partition="gpu", timeout_min=120, gpus_per_node=1, account="proj7"), **TINY)
    assert script == rec.read_text() and {r["attempts"] for r in m2["runs"].values()} == {1}   # pending/unknown: left alone

@pytest.mark.parametrize("kw, msg", [
    (dict(table="VII"), "unknown table 'VII'"), (dict(table=["wsum", "nope"]), "sweep row 'nope'"), (dict(seeds=()), "seeds is empty"),
    (dict(executor="slurm", slurm=dict(partition="gpu")), "needs slurm options ['timeout_min']"),
    (dict(trackers=["tensorbord"]), "unknown tracker"), (dict(executor="pbs"), "unknown executor")])
def test_bad_input_refused_before_submitting(tmp_path, kw, msg):
    with pytest.raises(ValueError) as e: sweep(**{"table": ["wsum"], "seeds": (0,), "out_dir": tmp_path / "sw", **TINY, **kw})
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "sw").exists()                                              # nothing written, nothing submitted

def test_refusals_wandb_missing_other_manifest_and_busy(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == "wandb" else real(n, *a, **k))
    with pytest.raises(ValueError, match=r"wandb is not installed; pip install criasr\[wandb\]"):
        sweep(["wsum"], seeds=(0,), out_dir=tmp_path / "a", trackers=["wandb"], **TINY)
    monkeypatch.setattr(importlib.util, "find_spec", real)
    sw = tmp_path / "b"; sw.mkdir()
    (sw / SWEEP_FILE).write_text(json.dumps(dict(format="criasr-sweep/1", rows={"plain": {"objective": "plain"}}, common={}, seeds=[0], runs={})))
    with pytest.raises(ValueError, match="belongs to another sweep"): sweep(["wsum"], seeds=(0,), out_dir=sw, **TINY)
    from criasr.runs import RunLock
    with RunLock(tmp_path / "c", what="sweep"):
        res = subprocess.run([str(BIN / "criasr-sweep"), "--rows", "wsum", "--seeds", "0", "--out_dir", str(tmp_path / "c"), "--dataset", "demo",
                              "--arch", json.dumps(TINY["arch"]), "--init_from", "scratch"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "in use by another sweep" in res.stderr and "Traceback" not in res.stderr, res.stderr
