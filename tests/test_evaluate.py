"The evaluation notebook end to end under papermill, on the demo dataset with tiny run folders."
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

papermill = pytest.importorskip("papermill")
from safetensors.torch import save_file
from criasr.archs import build_generator

TINY = dict(num_feat=8, num_block=1, num_grow_ch=4)


def make_run(folder:Path, objective:str, preset:str="paper", seed:int=0)->Path:
    "A run folder as `criasr.train` writes it: params.json + checkpoints/net_g_latest.safetensors (params, params_ema)."
    torch.manual_seed(seed)
    net = build_generator(preset, scale=4, **TINY)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(dict(dataset="demo", preset=preset, scale=4, arch=TINY,
                                                        objective=objective, seed=seed)))
    sd = net.state_dict()
    save_file({**{f"params.{k}": v.clone() for k, v in sd.items()}, **{f"params_ema.{k}": v.clone() for k, v in sd.items()}},
              folder / "checkpoints" / "net_g_latest.safetensors", metadata={"iter": "3"})
    return folder


def run_notebook(repo:Path, tmp:Path, **params)->Path:
    out = tmp / "executed.ipynb"
    papermill.execute_notebook(str(repo / "nbs" / "evaluate.ipynb"), str(out), parameters=params, kernel_name="python3",
                               cwd=str(tmp), progress_bar=False)
    return out


def test_evaluate_notebook_tables(repo, tmp_path):
    run = make_run(tmp_path / "runs" / "demo_paper_cria_x4_s0", "cria")
    for obj, seed in [("plain", 0), ("full", 1), ("full", 2)]: make_run(tmp_path / "ablation" / f"{obj}_s{seed}", obj, seed=seed)
    make_run(tmp_path / "anchors" / "anchor_pixel", "anchor_pixel", preset="esrgan")
    out = tmp_path / "eval"
    run_notebook(repo, tmp_path, runs=str(run), max_images=1, lpips_backbone=None, ablation_sweep=str(tmp_path / "ablation"),
                 anchor_sweep=[str(tmp_path / "anchors")], efficiency_presets=["esrgan"], efficiency_arch=TINY,
                 efficiency_lr=[24, 32], crop_size=32, out_dir=str(out))
    per = pd.read_csv(out / "demo_per_image.csv")
    assert list(per.columns) == ["method", "name", "psnr", "ssim", "lpips"]
    assert list(per["method"]) == ["Bicubic", run.name] and per[["psnr", "ssim", "lpips"]].notna().all().all()
    summary = pd.read_csv(out / "demo_summary.csv", index_col=0)
    assert 15 < summary.loc["Bicubic", "psnr"] < 40
    tables = (out / "tables.md").read_text()
    for s in ["format of Tables II–IV", "PSNR↑ | SSIM↑ | LPIPS↓", "TABLE V", "TABLE VI", "TABLE VII"]: assert s in tables, s
    lines = {l.split(" | ")[0].lstrip("| "): l for l in tables.splitlines() if l.startswith("| ")}
    assert "—" not in lines["Plain Model"] and lines["Ours full"].endswith("| 2 |")        # two seeds averaged
    assert lines["w/ L_pix + L_perc + L_adv + L_align"].count("—") == 3                   # no run: placeholders
    assert "—" not in lines["C_a = C_pix"] and lines["C_a = C_adv"].count("—") == 2
    eff = pd.read_csv(out / "efficiency.csv", index_col=0)
    assert list(eff.index) == ["esrgan preset", run.name] and (eff["frames_per_s"] > 0).all()   # slow cell ran
    assert (out / "demo_crops.png").stat().st_size > 1000


def test_evaluate_notebook_without_runs(repo, tmp_path):
    "No run folder anywhere: bicubic and an untrained tiny generator are evaluated."
    out = tmp_path / "eval"
    run_notebook(repo, tmp_path, runs_dir=str(tmp_path / "no_runs"), max_images=1, efficiency_presets=[], crop_size=32,
                 out_dir=str(out))
    per = pd.read_csv(out / "demo_per_image.csv")
    assert list(per["method"]) == ["Bicubic", "paper (untrained, tiny)"]
    assert per["lpips"].isna().all() or per["lpips"].notna().all()     # NaN when AlexNet weights are not cached
    assert "TABLE VII" in (out / "tables.md").read_text()
