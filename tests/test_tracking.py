"Experiment tracking (issue 19): TensorBoard events of a real run read back, purge on resume; an old lean-default run folder resumes."
import inspect, json
from pathlib import Path
import numpy as np, pytest
from criasr.runs import Run, TRACKER_PROJECT, read_metrics
from criasr.train import train
from criasr.archs import CriaNet
from criasr.infer import load_model

TINY = dict(dataset="demo", batch=2, patch=32, arch=dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1),
            disc_arch=dict(num_feat=8), num_workers=0, log_every=1, val_images=1, lr=1e-3, val_metrics=["psnr"], n_samples=1,
            sample_crop=32, progress=False, cpu=True, vgg_weights="random", precision="fp32", init_from="scratch")

def events(run:Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(Run(run).tracking / TRACKER_PROJECT), size_guidance={"scalars": 0, "images": 0}); ea.Reload()
    return ea

def test_tensorboard_scalars_and_images(tmp_path):
    run = train(**TINY, out_dir=str(tmp_path), iters=10, val_every=5, save_every=5, trackers=["tensorboard"])
    ea, m = events(run), read_metrics(run)
    tags = ea.Tags()
    for k in ("loss/total", "lr", "val/psnr", "nan_skipped"): assert k in tags["scalars"], k
    loss = [(e.step, e.value) for e in ea.Scalars("loss/total")]
    want = m.dropna(subset=["loss/total"])
    assert [s for s, _ in loss] == list(range(1, 11)) == want["iter"].tolist()        # every logged row, same step
    np.testing.assert_allclose([v for _, v in loss], want["loss/total"], rtol=1e-6)    # same values as metrics.jsonl
    val = m.dropna(subset=["val/psnr"])
    assert [e.step for e in ea.Scalars("val/psnr")] == val["iter"].tolist() == [0, 5, 10]
    np.testing.assert_allclose([e.value for e in ea.Scalars("val/psnr")], val["val/psnr"], rtol=1e-6)
    photo = json.loads(json.dumps(sorted({t.split("/")[1] for t in tags["images"]})))
    assert len(photo) == 1
    for kind in ("lr", "align", "unif", "sr", "hr", "mask"):
        ims = ea.Images(f"images/{photo[0]}/{kind}")
        assert [e.step for e in ims] == [0, 5, 10]
        assert (ims[0].width, ims[0].height) == ((8, 8) if kind == "lr" else (32, 32))
    hp = list((Run(run).tracking / TRACKER_PROJECT).rglob("hparams.yml"))
    assert hp and "arch:" in hp[0].read_text() and "num_feat" in hp[0].read_text()     # dict parameter stored as JSON text

def test_resume_purges_tensorboard_steps(tmp_path):
    kw = dict(**TINY, out_dir=str(tmp_path), val_every=0, save_every=2, trackers=["tensorboard"])
    with pytest.raises(FloatingPointError):     # logs iterations 1..3, checkpoint at 2, dies at 4
        train(**kw, iters=6, inject_nan={"loss/pix": [4]}, max_nan=1)
    run = train(**kw, iters=6)                  # resumes from 2: events 3.. are purged, logged again
    steps = [e.step for e in events(run).Scalars("loss/total")]
    assert steps == [1, 2, 3, 4, 5, 6]          # no duplicate step
    assert read_metrics(run).dropna(subset=["loss/total"])["iter"].tolist() == steps
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    starts = [e.step for f in sorted((Run(run).tracking / TRACKER_PROJECT).glob("events.out.tfevents.*"))
              for e in EventFileLoader(str(f)).Load() if e.HasField("session_log") and e.session_log.status == 1]
    assert starts == [0, 3]                     # purge marks: the fresh start, the resume (whose stale events also left the files)
    from tbparse import SummaryReader           # a second reader agrees
    df = SummaryReader(str(Run(run).tracking / TRACKER_PROJECT)).scalars
    assert df[df.tag == "loss/total"].step.tolist() == steps

def test_lean_default_folder_resumes(tmp_path, monkeypatch):
    "A folder made when the paper default was 15 RRDBs resumes (and loads) with its saved generator."
    sig = inspect.signature(CriaNet.__init__)
    old = tuple(15 if n == "num_block" else p.default for n, p in list(sig.parameters.items())[1:])
    kw = dict(dataset="demo", arch={}, objective="plain", out_dir=str(tmp_path), batch=1, patch=16, num_workers=0, val_every=0,
              save_every=2, log_every=1, val_images=1, val_metrics=["psnr"], n_samples=0, progress=False, cpu=True,
              precision="fp32", init_from="scratch")
    with monkeypatch.context() as mp:
        mp.setattr(CriaNet.__init__, "__defaults__", old)       # the code as it was: paper default = 15 RRDBs
        run = train(**kw, iters=2)
    assert Run(run).read_params()["generator_config"]["num_block"] == 15 and Run(run).read_params()["arch"] == {}
    assert CriaNet().config["num_block"] == 19                 # today's default
    train(**kw, iters=3)                                         # resumes with the saved 15-block generator
    p = Run(run).read_params()
    assert p["generator_config"]["num_block"] == 15 and json.loads((Path(run) / "final.json").read_text())["iter"] == 3
    assert load_model(run).config["num_block"] == 15            # and loads for inference
    with pytest.raises(ValueError, match="different run|generator built"):   # an explicit different arch is refused
        train(**{**kw, "arch": {"num_block": 19}}, iters=4)

def test_wandb_offline_resumes_run_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline"); monkeypatch.setenv("WANDB_SILENT", "true")
    kw = dict(TINY, out_dir=str(tmp_path), val_every=0, save_every=2, n_samples=0, trackers=["wandb"])
    run = Run(train(**kw, iters=2))
    rid = (run.tracking / "wandb_id.txt").read_text().strip()
    train(**kw, iters=4)
    assert (run.tracking / "wandb_id.txt").read_text().strip() == rid
    dirs = sorted(p.name for p in (run.tracking / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and all(d.endswith(rid) for d in dirs)     # both sessions wrote to the one W&B run id
