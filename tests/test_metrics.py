"Metrics: formulas in float64, parity with scikit-image and pyiqa on real photographs, offline weights, evaluate_model."
import io, math, os, shutil, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import skimage.data, skimage.metrics
from PIL import Image
from scipy.signal import correlate2d

from criasr.metrics import (psnr, ssim, to_uint8, LPIPS, lpips_distance, niqe, NIQE, MetricUnavailable,
                            evaluate_model, NIQE_FILE, LPIPS_BACKBONES)

SHARED_NIQE = Path(__file__).resolve().parents[2] / "shared" / "weights" / NIQE_FILE
# skipped only outside CI: CI lays shared/ beside the clone, and a missing file there must fail loudly
needs_shared_niqe = pytest.mark.skipif(not SHARED_NIQE.is_file() and not os.environ.get("CI"),
                                       reason=f"shared NIQE parameters missing: {SHARED_NIQE}")
torch.set_num_threads(1)

# ---------------------------------------------------------------- real photographs, degraded as SR inputs would be
def bicubic_x4(img):
    h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
    img = np.ascontiguousarray(img[:h, :w])
    lr = Image.fromarray(img).resize((w // 4, h // 4), Image.BICUBIC)
    return img, np.array(lr.resize((w, h), Image.BICUBIC))

def jpeg(img, q=30):
    b = io.BytesIO(); Image.fromarray(img).save(b, "JPEG", quality=q)
    return img, np.array(Image.open(b))

PAIRS = {  # (hr, sr) uint8 H×W×3
    "astronaut-bicubic": bicubic_x4(skimage.data.astronaut()[100:292, 150:342]),
    "coffee-jpeg": jpeg(skimage.data.coffee()[50:210, 100:340]),
    "chelsea-bicubic": bicubic_x4(skimage.data.chelsea()[:200, :256]),
}

def to_tensor(a): return torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255

# ---------------------------------------------------------------- expected values from the formulas (float64)
def y_of(a):
    "BT.601 Y on [0, 255] from a uint8 RGB array."
    a = a.astype(np.float64) / 255
    return 16 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]

def psnr_formula(x, y):
    return 10 * np.log10(255.0 ** 2 / np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))

def ssim_formula_2d(x, y):
    "SSIM of two 2-D float64 arrays: 11×11 Gaussian (σ 1.5) by 2-D correlation, 'valid' region."
    g = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5 ** 2)); w = np.outer(g, g); w /= w.sum()
    f = lambda z: correlate2d(z, w, mode="valid")
    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    return np.mean((2 * mx * my + C1) * (2 * cxy + C2) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2)))

def crop(a, c): return a[c:-c, c:-c] if c else a

@pytest.mark.parametrize("name", list(PAIRS))
def test_psnr_formula(name):
    hr, sr = PAIRS[name]
    assert abs(psnr(sr, hr) - psnr_formula(sr, hr)) < 1e-6
    assert abs(psnr(sr, hr, crop_border=4) - psnr_formula(crop(sr, 4), crop(hr, 4))) < 1e-6
    assert abs(psnr(sr, hr, crop_border=4, y_channel=True) - psnr_formula(crop(y_of(sr), 4), crop(y_of(hr), 4))) < 1e-6
    yr = lambda a: np.round(y_of(a))
    assert abs(psnr(sr, hr, y_channel=True, y_round=True) - psnr_formula(yr(sr), yr(hr))) < 1e-6

def test_ssim_formula():
    hr, sr = PAIRS["chelsea-bicubic"]
    hr, sr = hr[:40, :56], sr[:40, :56]
    rgb = np.mean([ssim_formula_2d(sr[..., c].astype(np.float64), hr[..., c].astype(np.float64)) for c in range(3)])
    assert abs(ssim(sr, hr) - rgb) < 1e-6
    y = ssim_formula_2d(crop(y_of(sr), 4), crop(y_of(hr), 4))
    assert abs(ssim(sr, hr, crop_border=4, y_channel=True) - y) < 1e-6
    assert ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)

# ---------------------------------------------------------------- input kinds
def test_inputs_batch_float_uint16():
    hr, sr = PAIRS["coffee-jpeg"]
    p, s = psnr(sr, hr, 4, True), ssim(sr, hr, 4, True)
    # float tensors in [0,1] (one image → float; batch → one value per image)
    assert psnr(to_tensor(sr)[0].float(), to_tensor(hr)[0].float(), 4, True) == pytest.approx(p, abs=1e-4)
    b_sr, b_hr = torch.cat([to_tensor(sr), to_tensor(hr)]), torch.cat([to_tensor(hr), to_tensor(hr)])
    pb, sb = psnr(b_sr, b_hr, 4, True), ssim(b_sr, b_hr, 4, True)
    assert pb.shape == (2,) and abs(pb[0] - p) < 1e-9 and math.isinf(pb[1])
    assert abs(sb[0] - s) < 1e-12 and abs(sb[1] - 1) < 1e-12
    # 16-bit: divided by 65535, scaled to 255, not rounded to 8 bits
    assert abs(psnr(sr.astype(np.uint16) * 257, hr.astype(np.uint16) * 257) - psnr(sr, hr)) < 1e-9
    assert abs(ssim(sr.astype(np.uint16) * 257, hr.astype(np.uint16) * 257) - ssim(sr, hr)) < 1e-12
    # gray H×W
    assert abs(psnr(sr[..., 1], hr[..., 1]) - psnr_formula(sr[..., 1], hr[..., 1])) < 1e-9
    assert to_uint8(torch.tensor([0.2]))[0] == 51

def test_input_errors():
    hr, sr = PAIRS["coffee-jpeg"]
    with pytest.raises(ValueError, match="differ in shape"): psnr(sr[:-1], hr)
    with pytest.raises(ValueError, match="smaller than 11"): ssim(sr[:20, :20], hr[:20, :20], crop_border=5)
    with pytest.raises(TypeError, match="uint8, uint16"): psnr(sr.astype(np.int32), hr.astype(np.int32))

# ---------------------------------------------------------------- scikit-image
@pytest.mark.parametrize("name", list(PAIRS))
def test_skimage_parity(name):
    hr, sr = PAIRS[name]
    assert abs(psnr(sr, hr) - skimage.metrics.peak_signal_noise_ratio(hr, sr, data_range=255)) < 1e-6
    sk = skimage.metrics.structural_similarity(hr, sr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                               data_range=255, channel_axis=-1)
    assert abs(ssim(sr, hr) - sk) < 1e-9  # measured ≈3e-15: skimage's reflect-padded result cropped by 5 px = 'valid'

# ---------------------------------------------------------------- pyiqa
@pytest.fixture(scope="module")
def pyiqa():
    return pytest.importorskip("pyiqa")

@pytest.mark.parametrize("name", list(PAIRS))
def test_pyiqa_psnr_parity(pyiqa, name):
    hr, sr = PAIRS[name]
    x, y = to_tensor(sr), to_tensor(hr)
    q = lambda **kw: pyiqa.create_metric("psnr", device="cpu", **kw)(x, y).item()
    ours_y = psnr(sr, hr, y_channel=True)
    # same convention (YCbCr Y, no eps): agreement far below 1e-4 dB (measured ≈2e-7, float32 colour constants)
    assert abs(ours_y - q(test_y_channel=True, color_space="ycbcr", eps=0)) < 1e-6
    assert abs(psnr(sr, hr, 4, True) - q(test_y_channel=True, color_space="ycbcr", eps=0, crop_border=4)) < 1e-6
    assert abs(psnr(sr, hr) - q(eps=0)) < 1e-6
    # pyiqa's default eps=1e-8 on the [0,1] MSE lowers its value by 10·log10(1 + 1e-8/MSE): < 1e-4 dB below ~33 dB
    mse01 = np.mean((y_of(sr) - y_of(hr)) ** 2) / 255 ** 2
    d = ours_y - q(test_y_channel=True, color_space="ycbcr")
    assert abs(d - 10 * np.log10(1 + 1e-8 / mse01)) < 1e-6 and d > 0
    if ours_y < 33: assert d < 1e-4  # 1.5e-4 dB on coffee-jpeg at 35 dB
    # pitfall: pyiqa's default Y (YIQ) is 20·log10(255/219) = 1.32 dB lower than the YCbCr Y of papers
    assert abs(ours_y - q(test_y_channel=True) - 20 * np.log10(255 / 219)) < 5e-3
    assert abs(ours_y - pyiqa.create_metric("psnry", device="cpu")(x, y).item() - 1.3216) < 5e-3

@pytest.mark.parametrize("name", list(PAIRS))
def test_pyiqa_ssim_parity(pyiqa, name):
    hr, sr = PAIRS[name]
    x, y = to_tensor(sr), to_tensor(hr)
    q_y = pyiqa.create_metric("ssim", color_space="ycbcr", device="cpu")(x, y).item()
    q_rgb = pyiqa.create_metric("ssimc", device="cpu")(x, y).item()
    # pyiqa rounds Y (MATLAB rgb2ycbcr on uint8) and clips cs_map at 0, which can only raise its value
    # (measured: up to 2.2e-4 on the astronaut crop, ≈1e-7 where nothing is clipped)
    ours_round = ssim(sr, hr, y_channel=True, y_round=True)
    assert -5e-4 < ours_round - q_y < 1e-6
    assert -5e-4 < ssim(sr, hr) - q_rgb < 1e-6
    # pitfall: BasicSR's unrounded Y gives a different SSIM-Y, ≈1e-3 apart
    assert 3e-4 < abs(ssim(sr, hr, y_channel=True) - q_y) < 3e-3

def test_pyiqa_ssim_exact_where_no_clip(pyiqa):
    "On JPEG damage, where no local covariance is negative enough to be clipped, the Y-rounded SSIM matches to 1e-6."
    hr, sr = PAIRS["coffee-jpeg"]
    q_y = pyiqa.create_metric("ssim", color_space="ycbcr", device="cpu")(to_tensor(sr), to_tensor(hr)).item()
    assert abs(ssim(sr, hr, y_channel=True, y_round=True) - q_y) < 1e-6

# ---------------------------------------------------------------- LPIPS (random backbone; offline cache)
def test_lpips_missing_backbone(torch_home):
    with pytest.raises(MetricUnavailable) as e: LPIPS()
    msg = str(e.value)
    assert LPIPS_BACKBONES["alex"] in msg and str(torch_home / "hub" / "checkpoints") in msg
    with pytest.raises(MetricUnavailable, match="not found"): LPIPS(backbone=torch_home / "nope.pth")

def test_lpips_random_backbone(torch_home):
    torch.manual_seed(0)
    m = LPIPS(backbone=None)
    x = torch.rand(2, 3, 64, 64); y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    d = m(x, y)
    assert d.shape == (2,) and (d > 0).all() and torch.allclose(m(x, x), torch.zeros(2))

def test_lpips_loads_cache_file_like_lpips_package(torch_home, monkeypatch):
    import torchvision, lpips
    torch.manual_seed(1)
    sd = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(sd, torch_home / "hub" / "checkpoints" / LPIPS_BACKBONES["alex"])
    m = LPIPS()  # finds $TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth
    assert m.backbone_path == torch_home / "hub" / "checkpoints" / LPIPS_BACKBONES["alex"]
    assert torch.equal(getattr(m.model.net.slice5, "10").weight, sd["features.10.weight"])
    # reference: the lpips package itself with `pretrained=True`, torchvision's loader returning the same weights
    make = torchvision.models.alexnet
    def tv_alexnet(*a, **k):
        net = make(weights=None); net.load_state_dict(sd); return net
    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", tv_alexnet)
    ref = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()
    hr, sr = PAIRS["chelsea-bicubic"]
    x, y = to_tensor(sr).float(), to_tensor(hr).float()
    with torch.no_grad(): expected = ref(x, y, normalize=True).item()
    assert abs(lpips_distance(sr, hr) - expected) < 1e-6
    # explicit path, file or folder
    assert LPIPS(backbone=torch_home / "hub" / "checkpoints").backbone_path.name == LPIPS_BACKBONES["alex"]

def test_lpips_wrong_file(torch_home):
    torch.save({"features.0.weight": torch.zeros(1)}, torch_home / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"): LPIPS(backbone=torch_home / "bad.pth")

# ---------------------------------------------------------------- NIQE (pyiqa, offline)
@pytest.fixture
def no_download(monkeypatch):
    "Any download attempt fails the test."
    def boom(*a, **k): raise AssertionError(f"download attempted: {a}")
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    import pyiqa.archs.niqe_arch, pyiqa.utils.download_util
    monkeypatch.setattr(pyiqa.archs.niqe_arch, "load_file_from_url", boom)
    monkeypatch.setattr(pyiqa.utils.download_util, "download_url_to_file", boom)
    return pyiqa.utils.download_util

def test_niqe_missing(torch_home, no_download, monkeypatch):
    monkeypatch.setattr(no_download, "DEFAULT_CACHE_DIR", str(torch_home / "hub" / "pyiqa"))
    with pytest.raises(MetricUnavailable) as e: niqe(PAIRS["coffee-jpeg"][0])
    assert NIQE_FILE in str(e.value) and str(torch_home / "hub" / "pyiqa") in str(e.value)

@needs_shared_niqe
def test_niqe_orders_and_matches_pyiqa(torch_home, no_download):
    import pyiqa
    (torch_home / "hub" / "pyiqa").mkdir()
    dst = torch_home / "hub" / "pyiqa" / NIQE_FILE
    shutil.copy(SHARED_NIQE, dst)
    clean = np.ascontiguousarray(skimage.data.chelsea()[:192, :256])
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 10, clean.shape), 0, 255).round().astype(np.uint8)
    a, b = niqe(clean), niqe(noisy)
    assert a < b
    direct = pyiqa.create_metric("niqe", color_space="ycbcr", pretrained_model_path=str(dst), device="cpu")
    assert abs(a - direct(to_tensor(clean)).item()) < 1e-9
    direct4 = pyiqa.create_metric("niqe", color_space="ycbcr", crop_border=4, pretrained_model_path=str(dst), device="cpu")
    assert abs(niqe(noisy, crop_border=4) - direct4(to_tensor(noisy)).item()) < 1e-9
    assert NIQE(params=dst, color_space="yiq")(clean) == pytest.approx(
        pyiqa.create_metric("niqe", pretrained_model_path=str(dst), device="cpu")(to_tensor(clean)).item(), abs=1e-9)
    with pytest.raises(ValueError, match="96"): niqe(clean[:90, :90])

# ---------------------------------------------------------------- evaluate_model
class TinySR(torch.nn.Module):
    "Bicubic ×4 plus a 1×1 conv (so it has parameters and a device)."
    scale = 4
    def __init__(self):
        super().__init__(); self.conv = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad(): self.conv.weight.copy_(torch.eye(3)[..., None, None]); self.conv.bias.zero_()
    def forward(self, x): return self.conv(F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False))

def items(lr_only=False, size=(96, 128)):
    out = []
    for n in ("astronaut", "coffee"):
        hr = torch.from_numpy(getattr(skimage.data, n)()[:size[0], :size[1]].copy()).permute(2, 0, 1).float() / 255
        lr = F.interpolate(hr[None], scale_factor=0.25, mode="bicubic", antialias=True)[0].clamp(0, 1)
        out.append({"lr": lr, "name": n} if lr_only else {"lr": lr, "hr": hr, "name": n})
    return out

def test_evaluate_model(torch_home):
    model, data = TinySR(), items()
    df = evaluate_model(model, data, metrics=("psnr", "ssim", "lpips"), crop_border=4, lpips_backbone=None)
    assert list(df.columns) == ["name", "psnr", "ssim", "lpips"] and list(df.name) == ["astronaut", "coffee"]
    with torch.no_grad(): sr = to_uint8(model(data[0]["lr"][None])[0])
    hr = to_uint8(data[0]["hr"])
    assert abs(df.psnr[0] - psnr(sr, hr, crop_border=4)) < 1e-9
    assert abs(df.ssim[0] - ssim(sr, hr, crop_border=4)) < 1e-12
    assert (df.lpips > 0).all()
    dfy = evaluate_model(model, data, metrics=("psnr",), y_channel=True)
    assert abs(dfy.psnr[0] - psnr(sr, hr, 4, True)) < 1e-9
    dft = evaluate_model(model, data, metrics=("psnr",), tile=16)   # its own tiled forward, 16 LR px of context
    assert np.allclose(dft.psnr, df.psnr, atol=1e-9)                  # bicubic reaches 2 px: tiling changes nothing
    with pytest.raises(ValueError, match="choose from"): evaluate_model(model, data, metrics=("fid",))

def test_evaluate_model_forward_callable_and_no_infer_import(torch_home):
    "metrics (chapter 07) does not import criasr.infer (08); a caller that wants its tiling passes `forward=`."
    import ast, criasr.metrics as M
    mods = {n.module for n in ast.walk(ast.parse(Path(M.__file__).read_text())) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in mods if m and "infer" in m}
    seen = []
    def fwd(model, lr):
        seen.append(tuple(lr.shape)); return (model(lr[None])[0] + 10 / 255).clamp(0, 1)   # brighter by 10 levels
    model, data = TinySR(), items()
    df = evaluate_model(model, data, metrics=("psnr",), forward=fwd)
    assert seen == [(3, 24, 32), (3, 24, 32)]
    with torch.no_grad(): sr = to_uint8((model(data[0]["lr"][None])[0] + 10 / 255).clamp(0, 1))
    assert abs(df.psnr[0] - psnr(sr, to_uint8(data[0]["hr"]), crop_border=4)) < 1e-9
    with pytest.raises(ValueError, match="either"): evaluate_model(model, data, tile=8, forward=fwd)

def test_evaluate_model_missing_weights_give_nan(torch_home):
    with pytest.warns(UserWarning, match="alexnet-owt-7be5be79.pth"):
        df = evaluate_model(TinySR(), items(), metrics=("psnr", "lpips"))
    assert df.lpips.isna().all() and df.psnr.notna().all()

@needs_shared_niqe
def test_evaluate_model_lr_only_niqe(torch_home):
    with pytest.warns(UserWarning, match="NIQE only"):
        df = evaluate_model(TinySR(), items(True, (128, 160)), metrics=("psnr", "ssim"), niqe_params=SHARED_NIQE)
    assert list(df.columns) == ["name", "niqe"] and df.niqe.notna().all()
    with pytest.warns(UserWarning, match=NIQE_FILE):
        df = evaluate_model(TinySR(), items(True, (128, 160)), metrics=("niqe",))
    assert df.niqe.isna().all()
    with pytest.warns(UserWarning, match="96"):  # too small for NIQE: NaN, not a crash
        df = evaluate_model(TinySR(), items(True), metrics=("niqe",), niqe_params=SHARED_NIQE)
    assert df.niqe.isna().all()

# ------------------------------------------------------------------ conformance with BasicSR 1.4.2 and hostile inputs

def _pinned_pair():
    "A 64×80 crop of skimage's astronaut and a deterministic distortion of it (stronger in red, so RGB↔BGR matters)."
    hr = skimage.data.astronaut()[100:164, 180:260]
    i, j, c = np.meshgrid(np.arange(64), np.arange(80), np.arange(3), indexing="ij")
    sr = np.clip(hr.astype(int) + (i * 7 + j * 13 + c * 5) % 11 - 5 + (c == 0) * 9, 0, 255).astype(np.uint8)
    return sr, hr

# BasicSR 1.4.2 `calculate_psnr/ssim(sr[..., ::-1], hr[..., ::-1], crop, test_y_channel=y)` (it takes BGR from cv2).
# On Y, BasicSR converts in float32, so it differs from our float64 by ~3e-7 dB.
BASICSR = {(0, False): (32.50517230968806, 0.9615901408606374), (0, True): (39.64934536953074, 0.991007801651455),
           (4, False): (32.514904057087215, 0.9623393284978047), (4, True): (39.667337044916536, 0.9911909885203422)}

@pytest.mark.parametrize("crop,y", list(BASICSR))
def test_matches_basicsr_pinned(crop, y):
    sr, hr = _pinned_pair()
    p, s = BASICSR[crop, y]
    assert abs(psnr(sr, hr, crop, y) - p) < 1e-6 and abs(ssim(sr, hr, crop, y) - s) < 1e-6

def test_y_channel_uses_rgb_order():
    "Our inputs are RGB: feeding BGR weights (BasicSR's img2y on an RGB array) gives 44.11 dB here, not 39.67."
    sr, hr = _pinned_pair()
    assert abs(psnr(sr, hr, 4, True) - psnr(sr[..., ::-1].copy(), hr[..., ::-1].copy(), 4, True)) > 1

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_refused(bad):
    a = np.random.default_rng(0).random((16, 16, 3)); b = a.copy(); b[3, 4, 1] = bad
    with pytest.raises(ValueError, match="`hr` contains 1 NaN/Inf"): psnr(a, b)
    with pytest.raises(ValueError, match="`sr` contains 1 NaN/Inf"): ssim(torch.from_numpy(b).permute(2, 0, 1), torch.from_numpy(a).permute(2, 0, 1))

def test_hostile_shapes_and_types():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="smaller than 11"): ssim(a[:1, :1], a[:1, :1])
    with pytest.raises(ValueError, match="smaller than 11"): ssim(a, a, crop_border=4)
    with pytest.raises(ValueError, match="differ in shape"): psnr(a, a[:15])
    with pytest.raises(ValueError, match="C×H×W array"): psnr(a.transpose(2, 0, 1), a.transpose(2, 0, 1))
    with pytest.raises(ValueError, match="crop_border"): psnr(a, a, crop_border=2.5)
    with pytest.raises(TypeError, match="int64"): psnr(a.astype(np.int64), a.astype(np.int64))
    with pytest.warns(UserWarning, match=r"\[0, 1\]"): psnr(a.astype(np.float32) + 200, a.astype(np.float32))
