"""Ready for a GPU, checked on the CPU: one device table for every `auto`, one gradient scaler per network, RNG states that
resume on fewer GPUs, an out-of-memory fallback that frees memory, fp32 adversarial maps under autocast, one host sync
per training iteration, and what params.json records about the engine."""
import io, json, weakref
from types import SimpleNamespace
import pytest, torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import criasr.train as T
import criasr.infer as I
from criasr.archs import DEVICE_TABLE, resolve_engine, build_generator, build_discriminator
from criasr.config import TrainConfig, RunConfig
from criasr.criteria import adversarial_map, logits_to_map

TINY = dict(dataset="demo", iters=4, batch=2, patch=32, arch=dict(num_feat=8, num_block=1, num_grow_ch=4, head_blocks=1, proj_blocks=1),
            disc_arch=dict(num_feat=8), num_workers=0, val_every=0, save_every=0, log_every=100, val_images=1, lr=1e-3,
            val_metrics=["psnr"], n_samples=1, progress=False, cpu=True, vgg_weights="random", pixel_warmup=0)


def _fake_capability(monkeypatch, cap):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: cap)


# ---------------------------------------------------------------- one table, every entry point
@pytest.mark.parametrize("cap", [(9, 0), (8, 0), (7, 5), (6, 1)])
def test_device_table_is_what_training_upscale_and_criasr_sr_pick(monkeypatch, capsys, cap):
    _fake_capability(monkeypatch, cap)
    row = next(r for kind, low, r in DEVICE_TABLE if kind == "cuda" and cap >= low)
    cuda = torch.device("cuda")
    # training
    eng = T.resolve_train_engine(TrainConfig.from_params().engine, cuda)
    assert (eng["precision"], eng["channels_last"], eng["tf32"], eng["cudnn_benchmark"]) == \
           (row["precision"], row["channels_last"], row["tf32"], row["cudnn_benchmark"])
    assert T.resolve_train_engine(TrainConfig.from_params(deterministic=True).engine, cuda)["cudnn_benchmark"] is False
    # upscale (and prepare_model) resolve through resolve_precision
    assert I.resolve_precision("auto", cuda) == (row["precision"], row["channels_last"])
    # criasr-sr: the line it prints names what it runs; nothing is moved to the (absent) GPU
    from criasr.cli import build_parser
    seen = {}
    monkeypatch.setattr(I, "resolve_device", lambda name: cuda)
    monkeypatch.setattr(I, "list_images", lambda src: [I.Path("x.png")])
    monkeypatch.setattr(I, "_load_for_cli", lambda a, o: SimpleNamespace(preset="esrgan", scale=4))
    monkeypatch.setattr(I, "describe_weights", lambda m: "test")
    monkeypatch.setattr(I, "prepare_model", lambda m, d, precision, compile: seen.update(prepare=precision) or m)
    monkeypatch.setattr(I, "upscale_file", lambda *a, **k: seen.update(upscale=k["precision"]) or "out.png")
    assert I.run_cli(build_parser().parse_args(["-i", "x.png", "-o", "out", "-w", "x.pth"])) == 0
    out = capsys.readouterr().out
    assert f", {row['precision']}{' + channels-last' if row['channels_last'] else ''} on cuda" in out, out
    assert seen == dict(prepare="auto", upscale="auto")     # both resolve "auto" through the same table


@pytest.mark.parametrize("native", [True, False])
def test_cpu_rows_inference_and_training(monkeypatch, capsys, tmp_path, native):
    "A CPU with native bf16: inference bf16 (measured faster, outputs 50+ dB from fp32), training fp32 (bf16 failed the seed spread)."
    monkeypatch.setattr("criasr.archs.cpu_has_native_bf16", lambda: native)
    want = ("bf16", True) if native else ("fp32", False)
    assert resolve_engine("cpu")["precision"] == want[0] and I.resolve_precision("auto", "cpu") == want
    assert T.resolve_train_precision("auto", True) == "fp32"
    eng = T.resolve_train_engine(TrainConfig.from_params(cpu=True).engine)
    assert (eng["precision"], eng["channels_last"]) == ("fp32", False)
    a = T.engine_assumptions(TrainConfig.from_params(cpu=True).engine, eng, "cpu", False)
    assert (len(a) == 1 and "bf16 for inference" in a[0]) if native else a == []


# ---------------------------------------------------------------- one gradient scaler per network
def _trainer(precision="fp16", clip=None):
    cfg = TrainConfig.from_params(**{**TINY, "clip_grad": clip})
    parts = T.build_parts(cfg)
    from accelerate import Accelerator
    acc = Accelerator(cpu=True)
    gen, disc = parts["gen"], parts["disc"]
    g = T.Player(T.HeadsNet(gen), torch.optim.SGD(gen.parameters(), lr=1.), acc, precision)
    d = T.Player(disc, torch.optim.SGD(disc.parameters(), lr=1.), acc, precision)
    tr = T.GANTrainer(g, d, parts["part"], parts["bank"], [], acc, cfg.optim, precision=precision)
    tr.d_turn = True
    for p in tr.players: p.scaler.scale(torch.ones(()))     # a scaler starts its scale at the first `scale()`
    return tr


@pytest.mark.parametrize("clip", [None, 0.5])
def test_d_step_is_exact_when_g_overflows(clip):
    "fp16 emulated on the CPU (a real GradScaler): G's gradients overflow; D's step is the hand value, unscaled once."
    tr = _trainer(clip=clip)
    assert tr.g.scaler is not tr.d.scaler and tr.g.scaler.is_enabled() and tr.d.scaler.is_enabled()
    s = tr.d.scaler.get_scale(); assert s == tr.g.scaler.get_scale() == 2.**16
    torch.manual_seed(0)
    g0 = {n: p.detach().clone() for n, p in tr.g.module.named_parameters()}
    d0 = [p.detach().clone() for p in tr.d.module.parameters()]
    grads = [torch.randn_like(p) for p in tr.d.module.parameters()]
    for p, g in zip(tr.d.module.parameters(), grads): p.grad = g * s                     # what scaler_d.scale(loss).backward() leaves
    for p in tr.g.module.parameters(): p.grad = torch.full_like(p, s)
    next(tr.g.module.parameters()).grad[0] = float("inf")                                  # G overflows
    tr.step()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = min(1., clip / (float(norm) + 1e-6)) if clip else 1.
    for p, p0, g in zip(tr.d.module.parameters(), d0, grads):
        torch.testing.assert_close(p.grad, g * coef, rtol=1e-6, atol=1e-7)              # unscaled once (and clipped)
        torch.testing.assert_close(p.detach(), p0 - g * coef, rtol=1e-6, atol=1e-7)    # SGD lr 1: the hand step
    assert all(torch.equal(p, g0[n]) for n, p in tr.g.module.named_parameters())           # G's step skipped
    assert tr.g.scaler.get_scale() == s / 2 and tr.d.scaler.get_scale() == s          # only G's scale backs off


def test_both_scalers_are_checkpointed(tmp_path, monkeypatch):
    tr = _trainer()
    tr.g.scaler.update(1024.); tr.d.scaler.update(8.); tr.iter = 1
    saved = {}
    monkeypatch.setattr(T, "save_checkpoint", lambda folder, it, wb, sb: saved.update(state=torch.load(io.BytesIO(sb), weights_only=True)))
    T.CheckpointCB(SimpleNamespace(checkpoints=tmp_path), RunConfig(save_every=1, keep_checkpoints=0), {}, {}).save(tr)
    assert saved["state"]["scaler_g"]["scale"] == 1024. and saved["state"]["scaler_d"]["scale"] == 8.


# ---------------------------------------------------------------- RNG: a state saved on 8 GPUs resumes on 1
def test_rng_state_saved_for_8_gpus_restores_on_one(monkeypatch):
    calls, notes = [], []
    def set_one(state, device="cuda"):
        i = torch.device(device).index or 0 if not isinstance(device, int) else device
        if i >= 1: raise IndexError(f"no CUDA device {i}")                          # what one visible GPU does
        calls.append((i, state))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_one); monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_one)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((8,), 7, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.full((8,), i, dtype=torch.uint8) for i in range(8)])
    s = T.rng_state()
    assert len(s["cuda"]) == 1 and s["cuda"][0][0] == 7                                # this rank's own device only
    old = {**s, "cuda": [torch.full((8,), i, dtype=torch.uint8) for i in range(8)]}  # an older state: one per visible GPU
    with pytest.raises(IndexError): torch.cuda.set_rng_state_all(old["cuda"])         # what resuming did before
    calls.clear()
    T.set_rng_state(old, notes.append)
    assert len(calls) == 1 and calls[0][1][0] == 0 and "8 CUDA RNG states" in notes[0]


# ---------------------------------------------------------------- OOM: the failed batch's memory is freed before the retry
def test_out_of_memory_retry_runs_after_the_failed_batch_is_freed():
    class Greedy(nn.Module):
        "Holds an 'activation' per forward, runs out of memory above one tile; records what is still alive at each call."
        scale = 2
        def __init__(self): super().__init__(); self.refs, self.alive = [], []
        def forward(self, x):
            self.alive.append(sum(r() is not None for r in self.refs))
            act = torch.empty(len(x), 8, *x.shape[-2:]); self.refs.append(weakref.ref(act))
            if len(x) > 1: raise torch.cuda.OutOfMemoryError("simulated")
            return F.interpolate(x, scale_factor=2)
    m = Greedy(); x = torch.rand(3, 16, 16)
    with pytest.warns(UserWarning, match="out of memory"):
        y = I.upscale(m, x, tile=8, overlap=0, batch=4)
    assert torch.equal(y, F.interpolate(x[None], scale_factor=2)[0])
    assert len(m.alive) > 3 and max(m.alive) == 0, m.alive                            # no failed forward's activation survives


# ---------------------------------------------------------------- adversarial maps stay fp32 under autocast
@pytest.mark.parametrize("gan_type", ["ragan", "vanilla"])
def test_adversarial_maps_under_bf16_autocast_equal_fp32(gan_type):
    torch.manual_seed(0)
    fake, real = torch.randn(2, 1, 14, 14) * 3, torch.randn(2, 1, 14, 14) * 3       # PatchGAN logits of 128x128 crops
    ref = adversarial_map(fake, real, gan_type, (128, 128))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = adversarial_map(fake, real, gan_type, (128, 128))
        box = logits_to_map(fake, (128, 128))
    assert got.dtype == torch.float32 and box.dtype == torch.float32
    assert ((got - ref).abs() / ref.abs().clamp_min(1e-6)).max() <= 1e-3
    torch.testing.assert_close(box, logits_to_map(fake, (128, 128)), rtol=1e-3, atol=0)


# ---------------------------------------------------------------- one host sync per iteration, and params.json
class SyncCount(TorchDispatchMode):
    """Counts device→host reads: `.item()`, `bool()`, `float()` all end in `aten._local_scalar_dense`. Adam's `step` counters are not
    counted: they live on the CPU on a GPU too (torch.optim's default, `capturable=False`), so reading them does not sync."""
    def __init__(self): super().__init__(); self.n, self.host = 0, set()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and id(args[0]) not in self.host: self.n += 1
        return func(*args, **(kwargs or {}))

class ReadCount(TorchFunctionMode):
    "Counts the reads that bypass the dispatcher: `.tolist()`, `.numpy()`, `.cpu()`."
    def __init__(self): super().__init__(); self.n = 0
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu): self.n += 1
        return func(*args, **(kwargs or {}))


def test_one_host_sync_per_iteration_and_params_record_the_engine(tmp_path, monkeypatch):
    modes, per_iter = [], {}
    class Probe(T.Callback):
        order = 1000                                                # after logging, validation and checkpoints
        def __init__(self, s): pass
        def after_iter(self, tr):
            per_iter[tr.iter] = sum(m.n for m in modes)
            modes[1].host |= {id(st["step"]) for o in (tr.g.opt, tr.d.opt) for st in o.state.values() if "step" in st}
    monkeypatch.setattr(T, "SleepCB", Probe)
    p = {**TINY, "out_dir": str(tmp_path), "iters": 6, "ema": 0.999, "debug_sleep": 1e-9, "objective": "cria"}
    with ReadCount() as a, SyncCount() as b:
        modes += [a, b]
        run = T.train(**p)
    steps = {i: per_iter[i] - per_iter[i - 1] for i in range(2, 6)}   # iterations 2..5: no logging, validation or checkpoint
    assert max(steps.values()) <= 1, steps
    params = json.loads((run / "params.json").read_text())
    assert params["precision_resolved"] == "fp32" and params["tf32_resolved"] is False
    assert params["channels_last_resolved"] is False and params["cudnn_benchmark_resolved"] is False
    assert params["reuse_d_resolved"] is True and any("num_batches_tracked" in a for a in params["assumptions"])


# ---------------------------------------------------------------- reuse_d: exact weights, BatchNorm statistics once per image
def test_reuse_d_exact_weights_batchnorm_statistics_once():
    from criasr.data import get_dataset, make_train_loader
    from accelerate import Accelerator
    cfg = TrainConfig.from_params(**TINY)
    ds = get_dataset("demo", split="train", scale=4, patch=32, augment=True, seed=0)
    out = {}
    for reuse in (True, False):
        parts = T.build_parts(cfg)
        torch.manual_seed(0)
        g, d = build_generator("paper", **TINY["arch"]), build_discriminator("patch", num_feat=8)
        assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
        acc = Accelerator(cpu=True)
        tr = T.make_trainer(T.Player(T.HeadsNet(g), torch.optim.Adam(g.parameters(), 1e-3), acc),
                            T.Player(d, torch.optim.Adam(d.parameters(), 1e-3), acc), parts["part"], parts["bank"],
                            make_train_loader(ds, 2, seed=0, num_workers=0), acc, cfg.optim, reuse_d=reuse)
        assert isinstance(tr, T.SharedDTrainer) is reuse
        tr.fit(0, 3); out[reuse] = (g, d)
    (ga, da), (gb, db) = out[True], out[False]
    for (k, a), b in zip(list(ga.named_parameters()) + list(da.named_parameters()), list(gb.parameters()) + list(db.parameters())):
        assert torch.equal(a, b), k                                                     # weights: exact
    nt = lambda d: [int(v) for k, v in d.state_dict().items() if k.endswith("num_batches_tracked")]
    assert [2 * n for n in nt(da)] == nt(db)                                            # BN statistics: once per image, not twice
    assert "num_batches_tracked halves" in T.REUSE_D_NOTE
