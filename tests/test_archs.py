"Weight import from files (ESRGAN / BasicSR / our safetensors layouts) and the generator contract, on tiny models."
import re
import pytest
import torch
from safetensors.torch import save_file
import torch.nn.functional as F
from criasr.archs import (GENERATORS, PAPER_VARIANTS, Heads, LoadReport, build_discriminator, build_generator, count_macs,
                          count_params, load_pretrained, read_state_dict)

TINY = dict(esrgan=dict(num_feat=8, num_block=2, num_grow_ch=4),
            paper=dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1),
            official=dict(num_feat=8, num_block=2, num_grow_ch=4, branch_feat=8))
TINY['paper_per_head'] = dict(TINY['paper'], upsampler='per_head')
KINDS = sorted(TINY)  # every preset, and the paper preset's per-head layout
def build(kind, **kw): return build_generator(kind.split('_')[0], **{**TINY[kind], **kw})
OLD = [(r'^body\.(\d+)\.rdb([123])\.', r'RRDB_trunk.\1.RDB\2.'), (r'^conv_body\.', 'trunk_conv.'),
       (r'^conv_up1\.', 'upconv1.'), (r'^conv_up2\.', 'upconv2.'), (r'^conv_hr\.', 'HRconv.')]
OFFICIAL_EXTRA = ('branch1', 'branch2', 'sm', 'tail_conv1', 'tail_conv2')


def old_names(sd):
    out = {}
    for k, v in sd.items():
        for p, r in OLD: k = re.sub(p, r, k)
        out[k] = v
    return out


@pytest.fixture(scope='module')
def esrgan_sd():
    torch.manual_seed(0)
    return build_generator('esrgan', **TINY['esrgan']).state_dict()


def write(tmp_path, name, sd):
    "Write `sd` as the file type `name` says; return the path."
    path = tmp_path / name
    if path.suffix == '.safetensors': save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else: torch.save(sd, path)
    return path


LAYOUTS = {
    'old.pth': lambda sd: old_names(sd),
    'old_module.pth': lambda sd: {'module.' + k: v for k, v in old_names(sd).items()},
    'basicsr_params.pth': lambda sd: {'params': dict(sd)},
    'basicsr_ema.pth': lambda sd: {'params_ema': dict(sd), 'params': {k: torch.zeros_like(v) for k, v in sd.items()}},
    'plain.safetensors': lambda sd: dict(sd),
    'ours.safetensors': lambda sd: {**{f'params_ema.{k}': v for k, v in sd.items()},
                                    **{f'params.{k}': torch.zeros_like(v) for k, v in sd.items()}},
}


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
@pytest.mark.parametrize('kind', KINDS)
def test_load_rrdb_into_every_preset(tmp_path, esrgan_sd, layout, kind):
    path = write(tmp_path, layout, LAYOUTS[layout](esrgan_sd))
    preset = kind.split('_')[0]
    model = build(kind)
    rep = load_pretrained(model, path)
    assert isinstance(rep, LoadReport) and rep.loaded
    got = {re.sub(r'^(RRDB_trunk|body)\.(\d+)\.(RDB|rdb)', r'body.\2.rdb', k): v for k, v in model.state_dict().items()}
    # every trunk tensor the model has is the source's (the `params_ema` copy, not the zeroed `params`)
    n_trunk = TINY[kind]['num_block']
    for k, v in esrgan_sd.items():
        if k.startswith('body.') and int(k.split('.')[1]) >= n_trunk: continue
        mk = {'conv_body.weight': 'trunk_conv.weight', 'conv_body.bias': 'trunk_conv.bias'}.get(k, k) if preset == 'official' else k
        mk = re.sub(r'^conv_up([12])', r'upconv\1', mk) if preset == 'official' else mk
        mk = re.sub(r'^conv_hr', 'HRconv', mk) if preset == 'official' else mk
        if kind == 'paper_per_head' and k.split('.')[0] in ('conv_up1', 'conv_up2', 'conv_hr', 'conv_last'):
            for head in ('up_align', 'up_unif'): assert torch.equal(got[f'{head}.{k}'], v), k
            continue
        assert torch.equal(got[mk], v), (k, mk)
    if preset == 'esrgan': assert rep.missing == [] and rep.unexpected == []
    if kind == 'paper':  # shared upsampler under ESRGAN's names: everything but the heads, their tails and the projector loads
        assert {k.split('.')[0] for k in rep.missing} == {'head_align', 'head_unif', 'tail_align', 'tail_unif', 'projector', 'proj_out'}
    if kind == 'paper_per_head':
        assert {k.split('.')[0] for k in rep.missing} == {'head_align', 'head_unif', 'projector', 'proj_out'}
    if preset == 'paper':
        assert len(rep.unexpected) == 30 and all(k.split('.')[1] == '1' for k in rep.unexpected)
    if preset == 'official':
        assert rep.unexpected == [] and all(k.split('.')[0] in OFFICIAL_EXTRA for k in rep.missing)


def test_prefer_params(tmp_path, esrgan_sd):
    path = write(tmp_path, 'ours.safetensors', LAYOUTS['ours.safetensors'](esrgan_sd))
    m = build_generator('esrgan', **TINY['esrgan'])
    load_pretrained(m, path, prefer='params')
    assert all((v == 0).all() for v in m.state_dict().values())


def test_official_round_trip_and_outputs(tmp_path):
    torch.manual_seed(1)
    src = build_generator('official', **TINY['official'])
    path = write(tmp_path, 'official.pth', {'module.' + k: v for k, v in src.state_dict().items()})
    dst = build_generator('official', **TINY['official'])
    rep = load_pretrained(dst, path, strict=True)
    assert rep.missing == [] and rep.unexpected == []
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad(): assert torch.equal(src(x), dst(x))
    # its ESRGAN part drives an esrgan model to the same `mid` image
    e = build_generator('esrgan', **TINY['esrgan'])
    rep = load_pretrained(e, path)
    assert rep.missing == [] and all(k.split('.')[0] in OFFICIAL_EXTRA for k in rep.unexpected)
    with torch.no_grad(): assert torch.equal(e(x), src.esrgan(x))


@pytest.mark.parametrize('kind', ['paper', 'paper_per_head'])
def test_paper_checkpoint_round_trip(tmp_path, kind):
    torch.manual_seed(2)
    src = build(kind)
    path = write(tmp_path, 'net_g.safetensors', {f'params.{k}': v for k, v in src.state_dict().items()})
    dst = build_generator(**src.config)
    rep = load_pretrained(dst, path, strict=True)
    assert rep.missing == [] and rep.unexpected == []
    x = torch.rand(2, 3, 8, 6)
    with torch.no_grad():
        a, b = src.heads(x), dst.heads(x)
    for f in ('sr', 'align', 'unif', 'mask'): assert torch.equal(getattr(a, f), getattr(b, f))


def test_errors(tmp_path, esrgan_sd):
    m = build_generator('paper', **TINY['paper'])
    wide = build_generator('esrgan', num_feat=16, num_block=1, num_grow_ch=4).state_dict()
    with pytest.raises(ValueError, match=r"conv_first\.weight"): load_pretrained(m, write(tmp_path, 'wide.pth', wide))
    with pytest.raises(ValueError, match="strict=False"): load_pretrained(m, esrgan_sd, strict=True)
    with pytest.raises(FileNotFoundError, match="missing.pth"): load_pretrained(m, tmp_path / 'missing.pth')
    bad = tmp_path / 'w.npz'; bad.write_bytes(b'x')
    with pytest.raises(ValueError, match=r"\.safetensors"): load_pretrained(m, bad)
    with pytest.raises(ValueError, match="choose one of"): read_state_dict(esrgan_sd, prefer='ema')
    # weights_only=True: a pickle with arbitrary objects is refused
    import argparse
    torch.save({'params': esrgan_sd, 'obj': argparse.Namespace(a=1)}, tmp_path / 'evil.pth')
    with pytest.raises(ValueError, match="evil.pth.*weights_only"): load_pretrained(m, tmp_path / 'evil.pth')


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('scale', [1, 2, 4])
def test_contract(kind, scale):
    m = build(kind, scale=scale)
    assert m.scale == scale and m.preset == kind.split('_')[0]
    x = torch.rand(2, 3, 9, 7)
    with torch.no_grad():
        h = m.heads(x)
        assert isinstance(h, Heads)
        for t in (h.sr, h.align, h.unif): assert t.shape == (2, 3, 9*scale, 7*scale)
        assert h.mask.shape[0] == 2 and h.mask.shape[2:] == (9*scale, 7*scale)
        assert torch.equal(m(x), h.sr)
    m2 = build_generator(**m.config)
    m2.load_state_dict(m.state_dict())
    assert m2.config == m.config


def test_gradients_reach_every_parameter():
    for kind in KINDS:
        m = build(kind, scale=2)
        h = m.heads(torch.rand(1, 3, 8, 8))
        (h.align.mean() + h.unif.mean() + h.sr.mean()).backward()
        assert all(p.grad is not None for p in m.parameters()), kind


def conv(ci, co, k=3): return ci*co*k*k + co                       # parameters of a k×k conv with bias
RDB = conv(64, 32) + conv(96, 32) + conv(128, 32) + conv(160, 32) + conv(192, 64)
RRDB, RB = 3*RDB, 2*conv(64, 64)                                      # RRDB; residual block 64 -> 64
PROJ = conv(3, 64) + conv(64, 64) + conv(3, 64, 1) + 2*RB + conv(64, 2)  # F_beta: ResBlock(3, 64), 2 ResBlocks, 2 logits
UPS = 3*conv(64, 64) + conv(64, 3)                                     # ESRGAN's upsampler at x4 (up1, up2, hr, last)
def esrgan_params(nb): return conv(3, 64) + nb*RRDB + conv(64, 64) + UPS
def paper_params(nb, per_head=False):
    heads = 2*(3*RB + (UPS if per_head else conv(64, 48)))             # per head: 3 residual blocks + own upsampler or sub-pixel tail
    return conv(3, 64) + nb*RRDB + conv(64, 64) + (0 if per_head else UPS) + heads + PROJ
# multiply-adds per LR pixel at x4: a 3x3 conv ci -> co costs 9·ci·co per output pixel, and x2/x4 layers run on 4/16 times the pixels
C = 9*64*64
RRDB_MAC = 3*9*(64*32 + 96*32 + 128*32 + 160*32 + 192*64)
UPS_MAC = 4*C + 16*C + 16*C + 16*9*64*3
PROJ_MAC = 9*3*64 + C + 3*64 + 4*C + 9*64*2
ESRGAN_MAC = 9*3*64 + 23*RRDB_MAC + C + UPS_MAC
def paper_macs(nb): return 9*3*64 + nb*RRDB_MAC + C + UPS_MAC + 2*(6*C + 9*64*48) + PROJ_MAC


def meta(preset, **kw):
    with torch.device('meta'): return build_generator(preset, **kw)


def test_full_size_counts():
    "Parameter and multiply-add counts against hand counts; the default at the paper's size (issue 19), the lean variant within issue 14's budget."
    assert count_params(meta('esrgan')) == esrgan_params(23) == 16_697_987   # the figure quoted for ESRGAN everywhere
    assert count_params(meta('official')) == 17_286_473
    lr = (1, 3, 200, 300)
    esr = count_macs(meta('esrgan'), lr)
    assert esr == ESRGAN_MAC * 200 * 300
    d = meta('paper')                                                              # the default: the paper's size
    assert d.config['num_block'] == 19 and d.config['upsampler'] == 'shared'
    assert count_params(d) == paper_params(19) == 14_506_661                       # hand count (Table VII: 14.8M)
    assert 14_000_000 <= count_params(d) <= 15_000_000 and paper_params(19) <= 14_800_000 < paper_params(20)
    assert count_macs(d, lr) == paper_macs(19) * 200 * 300 == 944_190_720_000
    assert 0.85 * esr <= count_macs(d, lr) <= 0.91 * esr                           # Table VII: about 10% less than ESRGAN
    assert PAPER_VARIANTS['size_matched'] == {}
    lean = meta('paper', **PAPER_VARIANTS['lean'])                                 # the earlier default, 15 RRDBs
    assert count_params(lean) == paper_params(15) == 11_628_965
    assert count_macs(lean, lr) == paper_macs(15) * 200 * 300 <= 0.75 * esr
    ph = meta('paper', **PAPER_VARIANTS['per_head'])
    assert count_params(ph) == paper_params(17, per_head=True) == 13_124_936         # the earlier default, unchanged
    assert count_params(meta('paper', **PAPER_VARIANTS['warm_start'])) == paper_params(23)
    assert count_params(build_discriminator('unet')) == 4_376_897


def test_shared_layout_is_esrgan_plus_subpixel_residuals(esrgan_sd):
    "Shared layout: the base is exactly an ESRGAN with the same weights; each head adds pixel_shuffle(tail(head(trunk)))."
    m = build_generator('paper', **{**TINY['paper'], 'num_block': 2})
    rep = load_pretrained(m, esrgan_sd)
    assert not rep.unexpected
    e = build_generator('esrgan', **TINY['esrgan']); e.load_state_dict(esrgan_sd)
    x = torch.rand(2, 3, 7, 6)
    with torch.no_grad():
        h, f = m.heads(x), m.trunk(x)
        assert torch.equal(m.esrgan(x), e(x))
        for head in ('align', 'unif'):
            res = F.pixel_shuffle(getattr(m, f'tail_{head}')(getattr(m, f'head_{head}')(f)), 4)
            torch.testing.assert_close(getattr(h, head), e(x) + res, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="choose one of"): build_generator('paper', upsampler='twice')


# ------------------------------------------------------------------ weight files that must fail with a clear message

class _Evil:
    def __reduce__(self): return (print, ("pickle code ran",))

@pytest.mark.parametrize("name,content,msg", [("e.pth", b"", "zero-byte"), ("j.pth", b"junk" * 8, "not a readable torch.save"),
                                              ("j.safetensors", b"junk" * 8, "not a readable safetensors"), ("evil.pth", None, "weights_only")])
def test_bad_weight_files_name_the_file(tmp_path, name, content, msg):
    from criasr.archs import load_pretrained
    p = tmp_path / name
    if content is None: torch.save({"params": {}, "x": _Evil()}, p)
    else: p.write_bytes(content)
    with pytest.raises(ValueError, match=msg) as e: load_pretrained(build_generator("esrgan", num_feat=8, num_block=1, num_grow_ch=4), p)
    assert name in str(e.value)

def test_vgg128_bias_false_has_basicsr_keys():
    "BasicSR 1.4.2's VGGStyleDiscriminator: only conv0_0 has a bias (checked numerically against BasicSR at review time)."
    keys = build_discriminator("vgg128", num_feat=8, bias=False).state_dict()
    assert sorted(k for k in keys if k.startswith("conv") and k.endswith("bias")) == ["conv0_0.bias"]
    assert len(keys) == 60  # as many entries as BasicSR's state dict (incl. 9 BatchNorm num_batches_tracked)

@pytest.mark.parametrize("scale,chans", [(2, 12), (1, 48)])
def test_pixel_unshuffle_checkpoints_named(scale, chans):
    "BasicSR's ×2/×1 RRDBNet pixel-unshuffles its input (conv_first takes 12/48 channels): refused with a clear reason."
    from criasr.archs import load_pretrained
    m = build_generator("esrgan", scale=scale, num_feat=8, num_block=1, num_grow_ch=4)
    sd = dict(m.state_dict()); sd["conv_first.weight"] = torch.zeros(8, chans, 3, 3)
    with pytest.raises(ValueError, match="pixel-unshuffled"): load_pretrained(m, sd)


@pytest.mark.parametrize('up', ['shared', 'per_head'])
def test_paper_layouts_are_registered_classes(up):
    "Each layout of the `paper` preset is its own class in PAPER_LAYOUTS; every way of building it gives that class, and `config` rebuilds it."
    import copy
    from criasr.archs import PAPER_LAYOUTS, CriaNet
    cls = PAPER_LAYOUTS[up]
    m = build('paper', upsampler=up)
    assert type(m) is cls and isinstance(m, CriaNet) and (m.preset, m.upsampler, m.config['upsampler']) == ('paper', up, up)
    assert type(CriaNet(**TINY['paper'], upsampler=up)) is cls and type(build_generator(**m.config)) is cls
    c = copy.deepcopy(m)                                   # the EMA copy and count_macs' meta copy keep the class
    x = torch.rand(1, 3, 6, 5)
    assert type(c) is cls and torch.equal(c(x), m(x))
    other = next(u for u in PAPER_LAYOUTS if u != up)
    with pytest.raises(ValueError, match=f"is the '{up}' layout, not upsampler='{other}'"): cls(**TINY['paper'], upsampler=other)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('scale', [1, 2, 4])
def test_detect_then_build_gives_the_same_network(kind, scale):
    "Each preset's detector claims its own state dicts only, and what it reads rebuilds the same network (spandrel's detect, then build)."
    from criasr.archs import detect_generator
    net = build(kind, scale=scale, num_block=3)
    sd = net.state_dict()
    preset, found = detect_generator(sd)
    assert preset == kind.split('_')[0] and build_generator(preset, **found).config == net.config
    assert [p for p, cls in GENERATORS.items() if cls.detect(sd) is not None] == [preset]
    if kind == 'esrgan': assert detect_generator(old_names(sd)) == (preset, found)   # ESRGAN's original names
    stray = detect_generator({**sd, 'stray.weight': torch.ones(1)})   # a key of no part: esrgan claims it no longer, the others by their own parts
    assert stray is None if preset == 'esrgan' else stray[0] == preset


def test_pixel_unshuffle_refusal_is_one_message(tmp_path):
    "load_pretrained and criasr.infer.load_model refuse a pixel-unshuffled RRDBNet with the same words (one check)."
    from criasr.infer import load_model
    m = build('esrgan')
    sd = dict(m.state_dict()); sd['conv_first.weight'] = torch.zeros(8, 48, 3, 3)
    path = write(tmp_path, 'x1.pth', sd)
    with pytest.raises(ValueError) as a: load_pretrained(m, path)
    with pytest.raises(ValueError) as b: load_model(path)
    assert str(a.value) == str(b.value) == (f"{path}: conv_first takes 48 input channels: a BasicSR/Real-ESRGAN ×1 RRDBNet with "
                                            "pixel-unshuffled input, which criasr does not build; use ×4 weights (e.g. RealESRGAN_x4plus.pth)")
