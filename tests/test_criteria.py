"Tests of criasr.criteria (per-pixel criterion maps) and criasr.cria (Cria-CL losses, partitions)."
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from criasr.criteria import (ADV_UPSAMPLES, CRITERIA, CriteriaBank, VGGFeatures, adversarial_map, gan_discriminator_loss,
                             logits_to_map, pixel_map, ssim_core, ssim_map, vgg19_layer_names, vgg19_weights_path,
                             weighted_sum)
from criasr.cria import (ASSUMPTIONS, OBJECTIVE_ALIASES, OBJECTIVES, WRT, Partition, align_loss, conflict_maps,
                         conflict_matrix, conflict_terms, criterion_grads, get_objective, objective_names,
                         partition_agreement, partition_refs, reduce, trunk_parameters, unif_loss, untouched)
from criasr.archs import Heads


def test_vgg_layer_names():
    names = vgg19_layer_names()
    assert len(names) == 37 and names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names[names.index("pool4") + 1:] == ["conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3",
                                                "conv5_4", "relu5_4", "pool5"]


def test_vgg_imagenet_missing_is_clear(torch_home):
    assert vgg19_weights_path() is None
    with pytest.raises(FileNotFoundError, match=r"vgg19-dcbb9e9d\.pth.*checkpoints"):
        VGGFeatures(["relu1_2"], weights="imagenet")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VGGFeatures(["relu1_2"], weights=torch_home / "nope.pth")


def test_vgg_imagenet_loads_from_hub_cache(torch_home):
    sd = {"features." + k: v for k, v in VGGFeatures(["pool5"], weights=None).features.state_dict().items()}
    torch.save(sd, torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    v = VGGFeatures(["conv5_4"], weights="imagenet")
    assert torch.equal(v.features[0].weight, sd["features.0.weight"])


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 30, 26, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.rand(a.shape, generator=g, dtype=torch.float64) - 0.1).clamp(0, 1)
    _, S = structural_similarity(a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy(), full=True, channel_axis=-1,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
    ref = 1 - S.mean(-1)
    m = ssim_map(a, b)[0, 0].numpy()
    np.testing.assert_allclose(m[5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-10)
    np.testing.assert_allclose(m, ref, atol=1e-10)
    m32 = ssim_map(a.float(), b.float())[0, 0].numpy()
    np.testing.assert_allclose(m32, ref, atol=1e-4)


@pytest.mark.parametrize("shape", [(4, 1), (4, 1, 3, 5), (4, 1, 24, 20)])
@pytest.mark.parametrize("gan", ["vanilla", "ragan", "hinge", "lsgan"])
def test_adversarial_map_mean_is_scalar_loss(shape, gan):
    g = torch.Generator().manual_seed(1)
    f, r = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits
    hand = {"vanilla": lambda: bce(f, torch.ones_like(f)),
            "ragan": lambda: (bce(r - f.mean(), torch.zeros_like(r)) + bce(f - r.mean(), torch.ones_like(f))) / 2,
            "hinge": lambda: -f.mean(), "lsgan": lambda: ((f - 1) ** 2).mean()}[gan]()
    m = adversarial_map(f, r, gan, size=(24, 20))
    assert m.shape == (4, 1, 24, 20)
    assert abs(m.mean().item() - hand.item()) < 1e-12


def test_discriminator_losses():
    f, r = torch.tensor([[0.5], [-1.0]]), torch.tensor([[2.0], [0.0]])
    bce = F.binary_cross_entropy_with_logits
    assert torch.allclose(gan_discriminator_loss(f, r, "vanilla"), bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f)))
    assert torch.allclose(gan_discriminator_loss(f, r, "hinge"), torch.tensor((0 + 1 + 1.5 + 0) / 2))
    assert torch.allclose(gan_discriminator_loss(f, r, "lsgan"), torch.tensor((1 + 1) / 2 + (0.25 + 1) / 2))


def test_bank_shapes_and_errors():
    bank = CriteriaBank(vgg_weights=None, gan_type="hinge")
    sr, hr = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    d = lambda x: x.mean(1, keepdim=True)  # per-pixel "logits"
    ms = bank.maps(CRITERIA, sr, hr, disc=d)
    assert all(v.shape == (1, 1, 32, 32) for v in ms.values())
    assert torch.allclose(ms["adversarial"], -sr.mean(1, keepdim=True))
    with pytest.raises(ValueError, match="valid names"): bank.maps(["pixel", "lpips"], sr, hr)
    with pytest.raises(ValueError, match="valid choices"): CriteriaBank(vgg_weights=None, gan_type="wgan")
    assert torch.allclose(weighted_sum(ms, {"pixel": 2.0}), 2 * pixel_map(sr, hr).mean())


def test_losses_hand_values():
    a, p1, p2 = torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.1]), torch.tensor([0.1, 0.5])
    assert math.isclose(align_loss(a, [p1, p2]).item(), 0.045, abs_tol=1e-7)
    assert math.isclose(align_loss(a, [p1, p2], weight=torch.tensor([1., 3.])).item(), 0.0625, abs_tol=1e-7)
    assert math.isclose(unif_loss(torch.tensor(0.1), [torch.tensor(0.4), torch.tensor(0.9)]).item(),
                        0.5 - math.log(1 + math.exp(-1.5)), abs_tol=1e-6)
    assert torch.isfinite(unif_loss(torch.tensor(50.), [torch.tensor(50.), torch.tensor(60.)]))


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    A, P, N, W = (torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64).requires_grad_() for _ in range(4))
    assert torch.autograd.gradcheck(lambda a, p, w: align_loss(a, [p, p * 0.5], weight=w + 0.1), (A, P, W))
    assert torch.autograd.gradcheck(lambda a, n, w: unif_loss(a, [n, n * 2], weight=w + 0.1), (A, N, W))
    assert torch.autograd.gradcheck(lambda a, n: unif_loss(a, [n, n * 2]), (A, N))


def test_reduce():
    m = torch.arange(8.).view(2, 1, 2, 2)
    w = torch.tensor([1., 0, 0, 1, 1, 1, 1, 1]).view(2, 1, 2, 2)
    assert torch.allclose(reduce(m, "image", w), torch.tensor([1.5, 5.5]))
    assert torch.allclose(reduce(m, "batch", w), torch.tensor(25 / 6))
    with pytest.raises(ValueError, match="valid choices"): reduce(m, "patch")


def test_objectives_registry_and_wsum_invariant():
    archs = pytest.importorskip("criasr.archs")
    torch.manual_seed(0)
    bank = CriteriaBank(vgg_weights=None)
    G = archs.build_generator("paper", scale=4, num_feat=8, num_block=1, num_grow_ch=4)
    D = archs.build_discriminator("patch", num_feat=8)
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
    h = G.heads(lr)
    total, terms = get_objective("cria", lambda_align=0, lambda_unif=0).generator_loss(h, hr, bank, D)
    ms = bank.maps(["pixel", "perceptual", "adversarial"], h.sr, hr, D)
    assert torch.allclose(total, weighted_sum(ms, {"pixel": .01, "perceptual": 1., "adversarial": .005}), atol=1e-6)
    total, terms = get_objective("cria").generator_loss(h, hr, bank, D)
    total.backward()
    assert torch.isfinite(total) and terms["loss/align"] > 0
    assert {"plain", "weighted_sum", "cria", "official", "anchor_adversarial"} <= set(OBJECTIVES)
    with pytest.raises(ValueError, match="valid names"): get_objective("nope")


# ---------------------------------------------------------------- SSIM: one core for the criterion and the metric

def test_ssim_core_valid_is_skimage_interior_and_the_metric():
    from skimage.metrics import structural_similarity
    from criasr import metrics
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 3, 27, 31, generator=g, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(a.shape, generator=g, dtype=torch.float64) - 0.15).clamp(0, 1)
    _, S = structural_similarity(a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy(), full=True, channel_axis=-1,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
    v = ssim_core(a, b, padding="valid")
    assert v.shape == (1, 3, 17, 21)
    np.testing.assert_allclose(v[0].permute(1, 2, 0).numpy(), S[5:-5, 5:-5], atol=1e-12)
    np.testing.assert_allclose(ssim_core(a, b)[0].permute(1, 2, 0).numpy(), S, atol=1e-12)     # symmetric = skimage's full map
    assert metrics.ssim_core is ssim_core and not hasattr(metrics, "ssim_valid_map")
    assert metrics.ssim(a, b) == pytest.approx(float(S[5:-5, 5:-5].mean()), abs=1e-12)         # the metric is the valid core
    with pytest.raises(ValueError, match="valid choices"): ssim_core(a, b, padding="same")


# ---------------------------------------------------------------- adversarial maps: plain upsampling, no rescale

@pytest.mark.parametrize("mode", ADV_UPSAMPLES)
def test_constant_logit_map_stays_constant(mode):
    "A constant 14×14 logit map (PatchGAN on 128² crops) stays constant at 128² (the old rescale gave 0.84…1.03)."
    m = logits_to_map(torch.full((2, 1, 14, 14), 0.7, dtype=torch.float64), (128, 128), mode)
    assert m.shape == (2, 1, 128, 128)
    assert float(m.min()) == pytest.approx(0.7, abs=1e-12) and float(m.max()) == pytest.approx(0.7, abs=1e-12)

def test_box_upsampling_by_hand_and_exact_mean():
    x = torch.tensor([1., 4.], dtype=torch.float64).view(1, 1, 2, 1)
    # 2 cells on 3 pixels: cell 0 covers [0, 1.5), cell 1 [1.5, 3): pixel 1 is half and half
    assert logits_to_map(x, (3, 1), "box").flatten().tolist() == [1., 2.5, 4.]
    assert logits_to_map(x, (3, 1), "nearest").flatten().tolist() == [1., 1., 4.]          # F.interpolate's nearest
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 1, 14, 9, generator=g, dtype=torch.float64)
    assert torch.allclose(logits_to_map(x, (128, 100)).mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-12)
    assert torch.equal(logits_to_map(x, (28, 27)), F.interpolate(x, size=(28, 27), mode="nearest"))
    with pytest.raises(ValueError, match="valid choices"): logits_to_map(x, (28, 27), "area")
    with pytest.raises(ValueError, match="valid choices"): CriteriaBank(vgg_weights=None, adv_upsample="area")


# ---------------------------------------------------------------- objectives: aliases, one backbone, assumptions

def test_aliases_resolve_to_one_preset_and_no_network_hint():
    assert OBJECTIVE_ALIASES == {"wsum": "weighted_sum", "full": "cria", "anchor_pixel": "cria"}
    assert not set(OBJECTIVE_ALIASES) & set(OBJECTIVES) and set(objective_names()) == set(OBJECTIVES) | set(OBJECTIVE_ALIASES)
    assert get_objective("full") == OBJECTIVES["cria"] and get_objective("anchor_pixel", eta=1.).eta == 1.
    assert get_objective("wsum").name == "weighted_sum"
    assert "generator" not in {f.name for f in __import__("dataclasses").fields(Partition)}
    with pytest.raises(TypeError, match="valid fields"): get_objective("cria", generator="esrgan")

def test_needs_mask_refuses_esrgan_cria():
    "cria on a generator without projector: 1 − S ≡ 0 and L_unif is silently 0 — `needs_mask` lets the trainer refuse it."
    assert get_objective("cria").needs_mask and get_objective("anchor_adversarial").needs_mask
    for n in ("plain", "weighted_sum", "wsum_align", "wsum_unif", "wsum_align_unif", "wsum_spatial", "official"):
        assert not get_objective(n).needs_mask, n
    assert not get_objective("cria", spatial_view=False).needs_mask
    from criasr.archs import build_generator
    torch.manual_seed(0)
    G = build_generator("esrgan", scale=4, num_feat=8, num_block=1, num_grow_ch=4)
    _, terms = get_objective("cria", gamma=0., negatives=("perceptual_top",)).generator_loss(
        G.heads(torch.rand(1, 3, 8, 8)), torch.rand(1, 3, 32, 32), CriteriaBank(vgg_weights=None))
    assert float(terms["loss/unif"]) == 0.0                                  # what the predicate guards against

def test_assumptions_labelled():
    assert set(ASSUMPTIONS) == set(objective_names())
    off = " | ".join(ASSUMPTIONS["official"])
    for needle in ("out2", "out1", "α, β, γ", "three outputs"): assert needle in off, needle
    assert all(isinstance(a, str) and a for v in ASSUMPTIONS.values() for a in v)
    assert ASSUMPTIONS["full"] == ASSUMPTIONS["cria"] and any("mask S" in a for a in ASSUMPTIONS["cria"])
    assert not any("mask" in a for a in ASSUMPTIONS["weighted_sum"])
    assert get_objective("cria", detach_mask=True).assumptions != ASSUMPTIONS["cria"]   # follows the fields


# ---------------------------------------------------------------- conflict diagnostics: hand examples for each mode

class TwoHeads(torch.nn.Module):
    "Scalar shared trunk weight θ, one bias per head, fixed mask S: align = lr + θ + b_a, unif = lr + θ − 2 + b_u."
    def __init__(self, s=0.75):
        super().__init__()
        self.theta, self.ba, self.bu = (torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in (2., 0., 0.))
        self.s = s
    def heads(self, lr):
        t = lr + self.theta
        align, unif = t + self.ba, t - 2 + self.bu
        S = torch.full_like(lr[:, :1], self.s)
        return Heads(sr=S * align + (1 - S) * unif, align=align, unif=unif, mask=S)

@pytest.fixture(scope="module")
def pbank(): return CriteriaBank(vgg_weights=None)

@pytest.fixture(scope="module")
def toy_batch():
    "align − hr = 1 + v > 0 and unif − hr = −1 + v < 0 everywhere (θ = 2), v ∈ (−½, ½)."
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 7, 6, generator=g, dtype=torch.float64)
    return {"hr": hr, "lr": hr - 1 + (torch.rand(hr.shape, generator=g, dtype=torch.float64) - 0.5) * 0.98}

def test_conflict_hand_example_each_mode(pbank, toy_batch):
    refs = ["pixel@align", "pixel@unif", "pixel@sr", "pixel_l2@align", "-pixel@align"]
    M = {w: conflict_matrix(TwoHeads(), toy_batch, pbank, refs, wrt=w)[1] for w in WRT}
    # pixel on align vs pixel on unif: ∂/∂align = +1/N, ∂/∂unif = −1/N
    assert M["heads"][0, 1] == pytest.approx(0, abs=1e-12)        # disjoint head tensors
    assert M["trunk"][0, 1] == pytest.approx(-1, abs=1e-12)       # through θ: +1 vs −1
    assert M["params"][0, 1] == pytest.approx(-0.5, abs=1e-12)    # (1, 1, 0)·(−1, 0, −1) / (√2 √2)
    # pixel on sr reaches both heads: gradient (S, 1 − S)/N = (3/4, 1/4)/N
    assert M["heads"][2, 0] == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert M["heads"][2, 1] == pytest.approx(-1 / math.sqrt(10), abs=1e-12)
    # same head, known cosine: ∇L1 ∝ sign(d) = 1, ∇L2 ∝ d, d = align − hr > 0
    d = (toy_batch["lr"] + 2 - toy_batch["hr"]).flatten()
    assert M["heads"][0, 3] == pytest.approx(float(d.sum() / (math.sqrt(d.numel()) * d.norm())), abs=1e-12)
    for w in WRT:
        np.testing.assert_allclose(np.diag(M[w]), 1, atol=1e-12); assert M[w][0, 4] == pytest.approx(-1, abs=1e-12)
        np.testing.assert_allclose(M[w], M[w].T, atol=1e-12)
    g = criterion_grads(TwoHeads(), toy_batch, pbank, ["pixel@unif"], wrt="params")["pixel@unif"]
    assert [float(x) for x in g] == pytest.approx([-1., 0., -1.], abs=1e-12)

def test_conflict_maps_and_terms_by_hand(pbank, toy_batch):
    refs, P = conflict_maps(TwoHeads(), toy_batch, pbank, ["pixel@align", "pixel@unif", "pixel@sr"])
    assert P.shape == (3, 3, 7, 6)
    np.testing.assert_allclose(P[0, 1], 0, atol=1e-12); np.testing.assert_allclose(P[2, 0], 3 / math.sqrt(10), atol=1e-12)
    terms = conflict_terms(refs, P[..., 0, 0])
    assert terms == pytest.approx({"conflict/pixel@align~pixel@unif": 0., "conflict/pixel@align~pixel@sr": 3 / math.sqrt(10),
                                   "conflict/pixel@unif~pixel@sr": -1 / math.sqrt(10)}, abs=1e-12)

def test_partition_refs_on_the_heads_the_partition_uses():
    assert partition_refs(get_objective("cria")) == ["pixel@align", "ssim@align", "perceptual_bottom@align",
                                                     "pixel@unif", "perceptual_top@unif", "adversarial@unif"]
    assert "adversarial@unif" not in partition_refs(get_objective("cria"), adversarial=False)
    assert partition_refs(get_objective("official")) == ["pixel@align", "perceptual@sr", "pixel@sr", "adversarial@sr",
                                                         "adversarial@unif", "adversarial@align"]
    assert partition_refs(get_objective("anchor_perceptual"))[:3] == ["perceptual@align", "perceptual_top@align",
                                                                     "adversarial@align"]

def test_trunk_is_found_structurally_and_nothing_is_touched(pbank):
    from criasr.archs import build_generator, build_discriminator
    torch.manual_seed(0)
    lr, hr = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)
    for preset in ("paper", "esrgan", "official"):
        G = build_generator(preset, scale=4, num_feat=8, num_block=1, num_grow_ch=4)
        h = G.heads(lr)
        reach = lambda t: {n for (n, _), g in zip(G.named_parameters(), torch.autograd.grad(
            t.sum(), list(G.parameters()), retain_graph=True, allow_unused=True)) if g is not None}
        assert set(trunk_parameters(G, h)) == reach(h.align) & reach(h.unif), preset
    G = build_generator("paper", scale=4, num_feat=8, num_block=1, num_grow_ch=4)
    tp = trunk_parameters(G, G.heads(lr))
    # the lean layout shares ESRGAN's whole path (trunk and the upsampler run once); the heads' own blocks are not shared
    assert tp and all(n.startswith(("conv_first", "body", "conv_body", "conv_up", "conv_hr", "conv_last")) for n in tp)
    assert not any(n.startswith(("head_", "tail_", "proj")) for n in tp)
    D = build_discriminator("patch", num_feat=8)
    part = get_objective("cria")
    refs = partition_refs(part)
    G.train(); G.requires_grad_(False)                                        # a frozen (EMA-like) copy can be measured
    before = [p.detach().clone() for p in G.parameters()]
    with untouched(G, D, pbank):
        G.eval()
        M = {w: conflict_matrix(G, {"lr": lr, "hr": hr}, pbank, refs, wrt=w, disc=D)[1] for w in WRT}
    assert G.training and not any(p.requires_grad for p in G.parameters())
    assert all(p.grad is None for p in G.parameters()) and all(torch.equal(a, b) for a, b in zip(before, G.parameters()))
    np.testing.assert_allclose(M["heads"][:3, 3:], 0, atol=1e-12)            # align criteria vs unif criteria
    assert np.abs(M["trunk"][:3, 3:]).max() > 1e-3                           # meet in the trunk
    ag = partition_agreement(refs, M["trunk"], part)
    assert set(ag) == {"ssim@align", "perceptual_bottom@align", "perceptual_top@unif", "adversarial@unif"}
    assert ag["perceptual_top@unif"]["anchor"] == "pixel@unif" and ag["ssim@align"]["role"] == "positive"
    with pytest.raises(ValueError, match="adversarial=False"): conflict_matrix(G, {"lr": lr, "hr": hr}, pbank, refs)
    with pytest.raises(ValueError, match="valid choices"): conflict_matrix(G, {"lr": lr, "hr": hr}, pbank, refs[:1], wrt="output")

def test_untouched_restores_modes_buffers_rng():
    import random
    bn = torch.nn.BatchNorm2d(3).train()
    s0, py0, np0 = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    with untouched(bn, None):
        bn(torch.randn(2, 3, 4, 4)); bn.eval(); random.random(); np.random.rand()
    assert bn.training and int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros(3))
    assert torch.equal(torch.get_rng_state(), s0) and random.getstate() == py0
    assert (np.random.get_state()[1] == np0).all()
