"""Training-step speed of the objectives on the same network and batch: weighted_sum vs cria vs official.

    python benchmarks/train.py                      # CPU, small network (a quick check)
    python benchmarks/train.py --device cuda --preset paper --num_feat 64 --num_block 17 --batch 16 --patch 128

Each objective runs the real trainer step (`criasr.train.Trainer.one_iter`: generator step, and the
discriminator step when the objective has an adversarial term) on one fixed batch; the script prints
iterations/s and the step time of each objective relative to `weighted_sum` (target: cria ≤ 1.25×).
"""
import argparse, itertools, time, json, os, sys
import torch

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objectives", default="weighted_sum,cria,official")
    ap.add_argument("--preset", default="paper", help="one generator for every objective (the paper's, with both heads)")
    ap.add_argument("--num_feat", type=int, default=16); ap.add_argument("--num_block", type=int, default=2)
    ap.add_argument("--num_grow_ch", type=int, default=8)
    ap.add_argument("--disc", default="patch"); ap.add_argument("--disc_feat", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4); ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10); ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--vgg_weights", default="random", help="random | imagenet: speed does not depend on the values")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    a = ap.parse_args(argv)
    from accelerate import Accelerator
    from criasr.train import validate_params, build_parts, Trainer, HeadsNet, _make_accelerator
    arch = dict(num_feat=a.num_feat, num_block=a.num_block, num_grow_ch=a.num_grow_ch)
    objs = a.objectives.split(",")
    torch.manual_seed(0)
    hr = torch.rand(a.batch, 3, a.patch, a.patch)
    batch = dict(hr=hr, lr=torch.nn.functional.avg_pool2d(hr, 4))
    res = {}
    for o in objs:
        p = validate_params(dataset="demo", objective=o, preset=a.preset, arch=arch, disc=a.disc, disc_arch=dict(num_feat=a.disc_feat),
                            batch=a.batch, patch=a.patch, vgg_weights=a.vgg_weights, precision=a.precision, cpu=a.device == "cpu",
                            ema=0.0, progress=False, pixel_warmup=0)
        acc = _make_accelerator(p)
        parts = build_parts(p, acc.device)
        net, disc = HeadsNet(parts["gen"]), parts["disc"]
        opt_g = torch.optim.Adam(parts["gen"].parameters(), lr=1e-4)
        opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4) if disc is not None else None
        if disc is not None: net, disc, opt_g, opt_d = acc.prepare(net, disc, opt_g, opt_d)
        else: net, opt_g = acc.prepare(net, opt_g)
        t = Trainer(net, parts["part"], parts["bank"], itertools.repeat(batch), opt_g, acc, p, disc, opt_d, [])
        t.dl = iter(t.loader)
        def step():
            t.zero_grad(); t.one_iter(); t.iter += 1
        for _ in range(a.warmup): step()
        if acc.device.type == "cuda": torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.iters): step()
        if acc.device.type == "cuda": torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / a.iters
        res[o] = dict(s_per_it=dt, it_per_s=1 / dt, criteria=sorted(parts["part"].criteria_names), d_step=disc is not None)
    base = res[objs[0]]["s_per_it"]
    print(f"device={a.device} preset={a.preset} arch={arch} batch={a.batch} patch={a.patch} precision={a.precision} "
          f"threads={torch.get_num_threads()} iters={a.iters}")
    print(f"{'objective':<14}{'it/s':>9}{'s/it':>9}{'× ' + objs[0]:>18}  D step  criteria")
    for o, r in res.items():
        r["ratio"] = r["s_per_it"] / base
        print(f"{o:<14}{r['it_per_s']:>9.3f}{r['s_per_it']:>9.4f}{r['ratio']:>18.2f}  {'yes' if r['d_step'] else 'no ':<6}  {','.join(r['criteria'])}")
    if "cria" in res:
        ok = res["cria"]["ratio"] <= 1.25
        print(f"cria step time = {res['cria']['ratio']:.2f}× {objs[0]} (target ≤ 1.25×): {'OK' if ok else 'OVER'}")
    if a.json:
        with open(a.json, "w") as f: json.dump(dict(args=vars(a), results=res), f, indent=1)
    return res

if __name__ == "__main__": main()
