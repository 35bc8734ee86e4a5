"Tiled inference, image formats, weight loading and the `criasr-sr` command (criasr.infer)."
import io, json, math, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from criasr.archs import build_generator
from criasr.data import read_image
from criasr.infer import (cli_main, load_model, png_bytes, save_image, tile_spans, upscale, upscale_image,
                          infer_arch)

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
    full = upscale(m, lr, tile=0)
    tiled = upscale(m, lr, tile=24, batch=3)                       # default overlap = 16
    assert tiled.shape == full.shape == (3, 280, 360)
    assert (tiled - full).abs().max() <= 2 / 255
    # overlap beyond the receptive field (2 RRDB blocks: ~32 LR px + the heads): identical up to float noise
    assert (upscale(m, lr, tile=24, overlap=48) - full).abs().max() < 1e-5


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
    out = upscale(tiny, lr, tile=16, batch=5)
    assert out.shape == (2, 3, 160, 208) and out.dtype == torch.float32
    for i in range(2): assert (out[i] - upscale(tiny, lr[i], tile=0)).abs().max() <= 2 / 255
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
    ref = upscale(tiny, lr, tile=0)
    assert (upscale(tiny, lr, tile=0, precision="bf16") - ref).abs().max() < 0.05


# ---------------------------------------------------------------- image files

@pytest.mark.parametrize("shape,dtype,mode", [((5, 7), np.uint8, "L"), ((5, 7, 2), np.uint8, "LA"),
                                              ((5, 7, 3), np.uint8, "RGB"), ((5, 7, 4), np.uint8, "RGBA"),
                                              ((5, 7), np.uint16, None)])
def test_png_bytes_decodes_with_pillow(shape, dtype, mode):
    a = (np.random.rand(*shape) * np.iinfo(dtype).max).astype(dtype)
    im = Image.open(io.BytesIO(png_bytes(a)))
    if mode: assert im.mode == mode
    assert np.array_equal(np.asarray(im).astype(dtype), a)


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


def test_cli_folder_round_trips(tmp_path, tiny):
    expect = _write_inputs(tmp_path / "in")
    torch.save({"params": {k: v + 1 for k, v in tiny.state_dict().items()}, "params_ema": tiny.state_dict()},
               tmp_path / "tiny.pth")                                # sizes inferred, EMA weights preferred
    with pytest.warns(UserWarning, match="notes.txt"):
        out = cli_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "tiny.pth"),
                        "-t", "8", "--overlap", "8", "--alpha-upsampler", "bicubic"])
    assert sorted(f.name for f in out) == sorted(expect)
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == sorted(expect)
    for name, (mode, size) in expect.items():
        im = Image.open(tmp_path / "out" / name)
        assert im.size == size, name
        if mode: assert im.mode == mode, name
    for stem in ("deep", "deep_gray", "rgba", "gray"):
        src, info = read_image(tmp_path / "in" / f"{stem}.png")
        got, ginfo = read_image(tmp_path / "out" / f"{stem}_out.png")
        assert ginfo["bit_depth"] == info["bit_depth"] and ginfo["gray"] == info["gray"], stem
        sr = upscale(tiny, src, tile=0)
        if info["gray"]: sr = np.repeat((sr @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, 2)
        q = 65535 if info["bit_depth"] == 16 else 255
        assert np.abs(got - sr).max() <= 2 / 255 + 1 / q, stem       # the file holds the model's output
    _, info = read_image(tmp_path / "out" / "rgba_out.png")
    assert info["alpha"][:36].max() < 0.05 and info["alpha"][44:].min() > 0.95   # transparent top, opaque bottom


def test_cli_alpha_through_model_and_ext(tmp_path, tiny):
    (tmp_path / "in").mkdir()
    a = (np.random.rand(16, 16, 4) * 255).astype(np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "in" / "x.png")
    torch.save(tiny.state_dict(), tmp_path / "w.pth")
    out = cli_main(["-i", str(tmp_path / "in" / "x.png"), "-o", str(tmp_path / "o"), "-w", str(tmp_path / "w.pth"),
                    "--suffix", "", "--ext", "png"])
    assert [f.name for f in out] == ["x.png"] and Image.open(out[0]).mode == "RGBA"
    with pytest.warns(UserWarning, match="JPEG"):
        out = cli_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-w", str(tmp_path / "w.pth"), "--ext", "jpg"])
    assert out[0].name == "x_out.jpg" and Image.open(out[0]).mode == "RGB"


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
        with pytest.raises(SystemExit), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli_main(argv)
        assert msg in capsys.readouterr().err, msg


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
    from safetensors.torch import save_file
    save_file(_flat(other, net.state_dict()), run / "checkpoints" / "net_g_0000010.safetensors")
    for src in (run, run / "checkpoints" / "net_g_0000010.safetensors"):
        m = load_model(src)
        assert m.config == net.config                                  # mask_upsample only known from params.json
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
    with pytest.warns(UserWarning, match="b.png"), pytest.raises(SystemExit) as e:
        cli_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-w", str(tmp_path / "w.pth")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "b.png" in err and "zero-byte" in err
    assert (tmp_path / "o" / "a_out.png").is_file()   # the good image was still written

def test_load_model_corrupt_safetensors_names_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"junk" * 8)
    with pytest.raises(ValueError, match="bad.safetensors"): load_model(tmp_path / "bad.safetensors")
