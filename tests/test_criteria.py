"Tests of criasr.criteria (per-pixel criterion maps) and criasr.cria (Cria-CL losses, partitions)."
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from criasr.criteria import (CRITERIA, CriteriaBank, VGGFeatures, adversarial_map, gan_discriminator_loss, pixel_map,
                             ssim_map, vgg19_layer_names, vgg19_weights_path, weighted_sum)
from criasr.cria import OBJECTIVES, align_loss, get_objective, reduce, unif_loss


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
    assert {"plain", "wsum", "full", "official", "anchor_adversarial"} <= set(OBJECTIVES)
    with pytest.raises(ValueError, match="valid names"): get_objective("nope")
