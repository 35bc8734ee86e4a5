"Tests of criasr.degrade: kernels against independent closed forms, the realesrgan preset against the published YAML, noise statistics, JPEG against OpenCV, per-sample draws, seeding, bad inputs, the trainer's degradation (debug dump, val, signature)."
import json, math
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image

from criasr.degrade import (DegradationConfig, Degrader, PRESETS, REALESRGAN_LOSS_USM, draw_params, draw_rng, filter2d,
                            gaussian_kernel, gaussian_noise, get_degradation, jpeg, load_kernels, plateau_kernel, poisson_noise,
                            sinc_kernel, check_patch, degrade_image, noise_pool)
from criasr.config import validate_params

def _offsets(size):
    "Column (x) and row (y) offsets from the centre tap."
    ax = np.arange(size) - (size - 1) / 2
    return np.meshgrid(ax, ax)

def _rotated_q(size, sx, sy, theta):
    "xᵀΣ⁻¹x written as ((x cos θ + y sin θ)/σx)² + ((−x sin θ + y cos θ)/σy)²: no matrix inverse."
    x, y = _offsets(size)
    u, v = x * math.cos(theta) + y * math.sin(theta), -x * math.sin(theta) + y * math.cos(theta)
    return (u / sx) ** 2 + (v / sy) ** 2

# ---------------------------------------------------------------- kernels
@pytest.mark.parametrize("sx,sy,theta", [(2.0, 2.0, 0.0), (3.0, 0.7, math.pi / 5), (0.4, 2.5, -2.0)])
def test_gaussian_kernel_is_the_gaussian_with_that_covariance(sx, sy, theta):
    from scipy.stats import multivariate_normal
    c, s = math.cos(theta), math.sin(theta)
    R = np.array([[c, -s], [s, c]]); cov = R @ np.diag([sx**2, sy**2]) @ R.T
    x, y = _offsets(21)
    ref = multivariate_normal(mean=[0, 0], cov=cov).pdf(np.stack([x, y], -1))
    np.testing.assert_allclose(gaussian_kernel(21, sx, sy, theta), ref / ref.sum(), rtol=1e-9, atol=1e-15)
    k = gaussian_kernel(41, sx, sy, theta)   # its second moments are the covariance (41 taps: tails negligible)
    x, y = _offsets(41)
    np.testing.assert_allclose([(k * x * x).sum(), (k * x * y).sum(), (k * y * y).sum()], [cov[0, 0], cov[0, 1], cov[1, 1]], atol=2e-2)

@pytest.mark.parametrize("beta", [0.5, 1.0, 2.5, 4.0])
def test_generalised_gaussian_and_plateau_closed_forms(beta):
    q = _rotated_q(21, 2.2, 1.1, 0.8)
    g = np.exp(-0.5 * q ** beta); p = 1 / (1 + q ** beta)
    np.testing.assert_allclose(gaussian_kernel(21, 2.2, 1.1, 0.8, beta), g / g.sum(), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(plateau_kernel(21, 2.2, 1.1, 0.8, beta), p / p.sum(), rtol=1e-9, atol=1e-15)

@pytest.mark.parametrize("size,cutoff", [(7, math.pi / 3), (13, math.pi / 5), (21, 2.5)])
def test_sinc_kernel_bessel_form(size, cutoff):
    from scipy.special import j1
    x, y = _offsets(size); r = np.hypot(x, y)
    with np.errstate(invalid="ignore", divide="ignore"): ref = cutoff * j1(cutoff * r) / (2 * np.pi * r)
    ref[size // 2, size // 2] = cutoff**2 / (4 * np.pi)          # the limit r → 0
    np.testing.assert_allclose(sinc_kernel(size, cutoff), ref / ref.sum(), rtol=1e-6, atol=1e-9)

# ---------------------------------------------------------------- the realesrgan preset = options/train_realesrgan_x4plus.yml
PUBLISHED = dict(   # xinntao/Real-ESRGAN, options/train_realesrgan_x4plus.yml, typed from the file
    resize_prob=[0.2, 0.7, 0.1], resize_range=[0.15, 1.5], gaussian_noise_prob=0.5, noise_range=[1, 30], poisson_scale_range=[0.05, 3],
    gray_noise_prob=0.4, jpeg_range=[30, 95],
    second_blur_prob=0.8, resize_prob2=[0.3, 0.4, 0.3], resize_range2=[0.3, 1.2], gaussian_noise_prob2=0.5, noise_range2=[1, 25],
    poisson_scale_range2=[0.05, 2.5], gray_noise_prob2=0.4, jpeg_range2=[30, 95],
    blur_kernel_size=21, kernel_list=["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    kernel_prob=[0.45, 0.25, 0.12, 0.03, 0.12, 0.03], sinc_prob=0.1, blur_sigma=[0.2, 3], betag_range=[0.5, 4], betap_range=[1, 2],
    blur_kernel_size2=21, kernel_list2=["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    kernel_prob2=[0.45, 0.25, 0.12, 0.03, 0.12, 0.03], sinc_prob2=0.1, blur_sigma2=[0.2, 1.5], betag_range2=[0.5, 4], betap_range2=[1, 2],
    final_sinc_prob=0.8)

@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_realesrgan_preset_field_by_field(key):
    v = getattr(PRESETS["realesrgan"], key)
    assert (list(v) if isinstance(v, tuple) else v) == PUBLISHED[key]

def test_realesrgan_preset_structure():
    cfg = PRESETS["realesrgan"]
    assert cfg.pipeline == "second_order" and cfg.second_order_prob == 1.0 and cfg.jpeg_first_prob == 0.5   # realesrgan_model.py
    assert REALESRGAN_LOSS_USM == dict(l1_gt_usm=True, percep_gt_usm=True, gan_gt_usm=False)
    assert cfg.usm_input is True and cfg.usm_target is False   # realesrgan_model.py degrades gt_usm; USM targets are an option
    for _ in range(3):   # every draw: USM, blur, resize, noise, JPEG, [blur], resize, noise, then JPEG and resize + sinc in either order
        ops = [o["op"] for o in draw_params(cfg, draw_rng(0, _), (256, 256), 4)["ops"]]
        assert ops[:5] == ["usm", "blur", "resize", "noise", "jpeg"] and ops[-3:] in (["jpeg", "resize", "blur"], ["resize", "blur", "jpeg"])

def test_draw_frequencies_follow_the_probabilities():
    cfg = PRESETS["realesrgan"]
    ps = [draw_params(cfg, draw_rng(1, d), (64, 64), 4)["ops"] for d in range(3000)]
    sinc1 = np.mean([p[1]["kernel"]["kind"] == "sinc" for p in ps])
    gauss1 = np.mean([p[3]["kind"] == "gaussian" for p in ps])
    down1 = np.mean([p[2]["how"] == "down" for p in ps])
    blur2 = np.mean([len(p) == 11 for p in ps])
    final = np.mean([p[-1]["kernel"]["kind"] == "sinc" if p[-1]["op"] == "blur" else p[-2]["kernel"]["kind"] == "sinc" for p in ps])
    for got, want in ((sinc1, 0.1), (gauss1, 0.5), (down1, 0.7), (blur2, 0.8), (final, 0.8)):
        assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / len(ps)), (got, want)

def test_usm_matches_opencv_unsharp_mask():
    cv2 = pytest.importorskip("cv2")
    from criasr.degrade import usm_sharp
    img = np.random.default_rng(0).random((96, 80, 3)) ** 2          # Real-ESRGAN's USMSharp, written with OpenCV
    blur = lambda a: cv2.GaussianBlur(a, (51, 51), 0)                 # σ 0 → 8.0 for 51 taps; border: reflect-101
    res = img - blur(img)
    soft = blur((np.abs(res) * 255 > 10).astype(np.float64))
    ref = soft * np.clip(img + 0.5 * res, 0, 1) + (1 - soft) * img
    ours = usm_sharp(torch.from_numpy(img).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)

# ---------------------------------------------------------------- noise statistics
@pytest.mark.parametrize("sigma", [1.0, 10.0, 30.0])
def test_gaussian_noise_mean_and_variance(sigma):
    x = torch.full((1, 3, 256, 256), 0.5)
    n = (gaussian_noise(x, sigma, False, seed=3) - x) * 255
    assert abs(float(n.mean())) < 0.05 * sigma and abs(float(n.std()) - sigma) < 0.02 * sigma
    g = (gaussian_noise(x, sigma, True, seed=3) - x)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])     # grey noise: one field on every channel

def test_poisson_variance_proportional_to_intensity():
    x = torch.zeros(1, 3, 256, 512)
    x[..., :256] = 0.2; x[..., 256:] = 0.8
    x[..., 0, :256] = torch.arange(256) / 255          # one ramp row: 256 grey levels, so v = 256 photons per unit
    scale = 1.5
    n = (poisson_noise(x, scale, False, seed=5) - x)[..., 1:, :]
    lo, hi = n[..., 16:240], n[..., 272:496]
    for part, level in ((lo, round(0.2 * 255) / 255), (hi, round(0.8 * 255) / 255)):
        assert abs(float(part.mean())) < 2e-3
        assert abs(float(part.var()) / (scale**2 * level / 256) - 1) < 0.05     # Var = scale² · I / v
    assert abs(float(hi.var() / lo.var()) - 4.0) < 0.25

# ---------------------------------------------------------------- JPEG through a real codec, against OpenCV
@pytest.mark.parametrize("q", [30, 60, 95])
def test_jpeg_matches_opencv(q):
    cv2 = pytest.importorskip("cv2")
    from criasr.data import _demo_hr
    for name in ("astronaut", "coffee", "rocket"):
        hr = _demo_hr(name)
        ours = (jpeg(torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255, q)[0].permute(1, 2, 0).numpy() * 255).round()
        ok, buf = cv2.imencode(".jpg", hr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        ref = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float64)
        mse = np.mean((ours - ref) ** 2)
        psnr = 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)
        assert psnr >= 40, (name, q, psnr)
        assert np.mean((ours - hr) ** 2) > 0          # it did compress

# ---------------------------------------------------------------- per-sample draws, seeding
def test_each_sample_its_own_blur_and_its_own_result():
    hr = torch.rand(1, 3, 64, 64).expand(6, -1, -1, -1).contiguous()
    d = Degrader(PRESETS["realesrgan"], 4)
    lr, ps = d(hr, range(10, 16), seed=0)
    assert len({json.dumps(p["ops"][1]["kernel"], sort_keys=True) for p in ps}) == 6     # no batch shares a blur
    assert all((lr[i] - lr[j]).abs().mean() > 1e-3 for i in range(6) for j in range(i + 1, 6))
    other = torch.rand(1, 3, 64, 64)
    lr2, _ = d(torch.cat([hr[:1], other]), [10, 99], seed=0)   # sample 0's neighbour changes, its LR does not
    assert (lr2[0] - lr[0]).abs().max() <= 1 / 255 + 1e-6
    single = d.apply(hr[0], ps[0])
    assert (single - lr[0]).abs().max() <= 1 / 255 + 1e-6 and (single - lr[0]).abs().mean() < 1e-3
    k = torch.from_numpy(np.stack([gaussian_kernel(21, 0.5), gaussian_kernel(21, 3.0, 1.0, 1.0)])).float()
    y = filter2d(torch.cat([other, other]), k)
    for i in range(2): torch.testing.assert_close(y[i:i+1], filter2d(other, k[i:i+1]))

def test_same_seed_same_lr_other_seed_other_lr():
    hr = torch.rand(4, 3, 64, 64)
    d = Degrader(PRESETS["realesrgan"], 4)
    a, pa = d(hr, range(4), seed=7); b, pb = d(hr, range(4), seed=7); c, _ = d(hr, range(4), seed=8)
    assert torch.equal(a, b) and pa == pb and (a - c).abs().mean() > 1e-3
    img = (hr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(degrade_image(img, 4, 1), degrade_image(img, 4, 1)) and not np.array_equal(degrade_image(img, 4, 1), degrade_image(img, 4, 2))

@pytest.mark.parametrize("preset", ["mild", "realesrgan", "impressionism"])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_lr_size_and_range(preset, scale):
    noise = np.random.default_rng(0).normal(0, 3, (4, 32, 32, 3)).astype(np.float32)
    d = Degrader(PRESETS[preset], scale, noise=noise)
    lr, _ = d(torch.rand(3, 3, 48, 48), range(3), seed=0)
    assert lr.shape == (3, 3, 48 // scale, 48 // scale) and lr.min() >= 0 and lr.max() <= 1
    assert torch.equal((lr * 255).round() / 255, lr)   # 8-bit values, as a stored LR image

def test_impressionism_kernel_pool(tmp_path):
    ks = np.stack([gaussian_kernel(13, 1.0), gaussian_kernel(13, 2.0, 0.5, 0.3)])
    np.save(tmp_path / "k.npy", ks)
    flat = (128 + np.random.default_rng(0).normal(0, 4, (128, 128, 3))).clip(0, 255).astype(np.uint8)
    d = Degrader(get_degradation("impressionism", {"kernel_file": str(tmp_path / "k.npy")}), 4, noise=np.stack(noise_pool([flat], np.random.default_rng(1))))
    lr, ps = d(torch.rand(2, 3, 64, 64), [0, 1], seed=0)
    assert [o["op"] for o in ps[0]["ops"]] == ["blur", "subsample", "noise"] and ps[0]["ops"][0]["kernel"]["kind"] == "file"
    assert lr.shape == (2, 3, 16, 16)

# ---------------------------------------------------------------- bad input: one line naming the parameter
@pytest.mark.parametrize("ov,words", [
    ({"blur_sigma": [0, 2]}, "'blur_sigma'"), ({"noise_range": [-1, 5]}, "'noise_range'"), ({"blur_sigma2": [0.0, 1.0]}, "'blur_sigma2'"),
    ({"jpeg_range": [0, 95]}, "'jpeg_range'"), ({"jpeg_range2": [30, 101]}, "'jpeg_range2'"),
    ({"kernel_prob": [0.5, 0.25, 0.12, 0.03, 0.12, 0.03]}, "sum to 1"), ({"resize_prob": [0.2, 0.2, 0.2]}, "'resize_prob'"),
    ({"blur_kernel_size": 20}, "odd"), ({"blur_kernel_size2": 1}, "'blur_kernel_size2'"), ({"kernel_list": ["iso", "gaus"]}, "'kernel_list'"),
    ({"sinc_prob": 1.5}, "'sinc_prob'"), ({"resize_range": [1.5, 0.15]}, "'resize_range'"), ({"noise_rnage": [1, 3]}, "did you mean 'noise_range'"),
    ({"noise_range": "loud"}, "'noise_range'")])
def test_bad_overrides_refused_in_one_line(ov, words):
    with pytest.raises(ValueError) as e: validate_params(dataset="demo", degradation="realesrgan", degradation_overrides=ov)
    assert words in str(e.value) and "\n" not in str(e.value) and "degradation_overrides" in str(e.value)

def test_bad_patch_and_preset_refused():
    with pytest.raises(ValueError, match="parameter 'patch'"): validate_params(dataset="demo", degradation="realesrgan", patch=16)
    with pytest.raises(ValueError, match="parameter 'degradation'"): validate_params(dataset="demo", degradation="realesrgn")
    with pytest.raises(ValueError, match="parameter 'degradation_overrides'"): validate_params(dataset="demo", degradation_overrides={"sinc_prob": 0})
    with pytest.raises(ValueError, match="parameter 'debug_degradations'"): validate_params(dataset="demo", debug_degradations=2)
    with pytest.raises(ValueError, match="JPEG quality"): jpeg(torch.rand(1, 3, 8, 8), 0)

@pytest.mark.parametrize("arr,words", [(np.ones((4, 4)) / 16, "odd"), (np.ones((2, 5, 7)) / 35, "shape"),
                                       (np.ones((5, 5)) / 20, "sums to"), (-np.ones((3, 3)) / -9 * np.array([[1, 1, 1], [1, -1, 1], [1, 1, 1]]) * 9 / 7, "negative")])
def test_bad_kernel_file_refused(tmp_path, arr, words):
    np.save(tmp_path / "k.npy", arr)
    with pytest.raises(ValueError) as e:
        validate_params(dataset="demo", degradation="impressionism", degradation_overrides={"kernel_file": str(tmp_path / "k.npy")})
    assert words in str(e.value) and "'kernel_file'" in str(e.value) and "\n" not in str(e.value)
    np.save(tmp_path / "ok.npy", gaussian_kernel(9, 1.2)); assert load_kernels(tmp_path / "ok.npy").shape == (1, 9, 9)

# ---------------------------------------------------------------- the trainer's side
TINY = dict(dataset="demo", iters=2, batch=2, patch=32, arch=dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1),
            disc_arch=dict(num_feat=8), num_workers=0, val_every=0, save_every=1, log_every=1, val_images=1, lr=1e-3,
            val_metrics=["psnr"], n_samples=1, progress=False, cpu=True, vgg_weights="random", deterministic=True, pixel_warmup=0,
            precision="fp32", threads=1)

def test_debug_dump_val_and_signature(tmp_path):
    from criasr.train import train, degraded_val
    from criasr.data import get_dataset
    run = train(**TINY, degradation="realesrgan", debug_degradations=3, out_dir=str(tmp_path))
    p = json.loads((run / "params.json").read_text())
    assert p["degradation"] == "realesrgan" and p["degradation_resolved"]["config"]["noise_range"] == [1.0, 30.0]
    assert "realesrgan" in run.name
    dump = run / "debug_degradations"
    files = sorted(dump.glob("*_params.json"))
    assert len(files) == 3 and len(list(dump.glob("*.png"))) == 6
    d = Degrader(PRESETS["realesrgan"], 4)
    for f in files:
        ps = json.loads(f.read_text())
        lr = np.array(Image.open(str(f).replace("_params.json", "_lr.png")))
        hr = np.array(Image.open(str(f).replace("_params.json", "_hr.png")))
        assert lr.shape == (8, 8, 3) and hr.shape == (32, 32, 3) and ps["seed"] == 0
        assert ps == {**d.draw(0, ps["draw"], (32, 32)), "name": ps["name"], "draw": ps["draw"], "seed": 0}   # the draw of (seed, draw)
        again = d.apply(torch.from_numpy(hr).permute(2, 0, 1).float() / 255, ps)        # its parameters reproduce its LR
        assert np.abs((again.permute(1, 2, 0).numpy() * 255).round() - lr).max() <= 1
    # val: degraded once, at a fixed seed whatever the run's seed
    val = get_dataset("demo", split="val", scale=4)
    from criasr.train import VAL_DEGRADATION_SEED
    from criasr.config import TrainConfig
    data = TrainConfig.from_params(**{**TINY, "degradation": "realesrgan"}).data      # the data group: no run seed in it
    a, b = degraded_val(val, data), degraded_val(val, data)
    assert np.array_equal(a.pairs[0]["lr"], b.pairs[0]["lr"]) and not np.array_equal(a.pairs[0]["lr"], val.pairs[0]["lr"])
    hr0 = val[0]["hr"]; want = d.apply(hr0, d.draw(VAL_DEGRADATION_SEED, 0, tuple(hr0.shape[-2:])))          # the fixed seed's draw
    assert np.abs(a.pairs[0]["lr"].astype(int) - (want.permute(1, 2, 0).numpy() * 255).round().astype(int)).max() <= 1
    # a resume with another degradation is refused
    with pytest.raises(ValueError, match="degradation"):
        train(**TINY, degradation="realesrgan", degradation_overrides={"noise_range": [1, 5]}, run_name=run.name, out_dir=str(tmp_path))
