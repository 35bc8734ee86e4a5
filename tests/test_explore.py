"Headless tests of criasr.explore: each widget is driven by setting its controls, and the arrays/figures it returns are checked against the maths; readability (fonts, colour bars), notices, the busy line and the static image output are checked too."
import io, json, math
import numpy as np
import pytest
import torch
import matplotlib
matplotlib.use("Agg")
import matplotlib.text
from matplotlib.figure import Figure

from criasr import explore as E
from criasr.cria import align_loss, unif_loss, get_objective


@pytest.fixture(scope="module")
def bank():
    from criasr.criteria import CriteriaBank
    return CriteriaBank(vgg_weights=None).eval()

@pytest.fixture(scope="module")
def disc():
    from criasr.archs import build_discriminator
    torch.manual_seed(0)
    return build_discriminator("patch", num_feat=8).eval()

@pytest.fixture(scope="module")
def gen():
    return E.tiny_generator("paper", scale=4, num_feat=8, num_block=1, num_grow_ch=4)

@pytest.fixture(scope="module")
def pair():
    return E.demo_pair(0, scale=4, size=32)


# ---------------------------------------------------------------- helpers

def test_fig_to_png_and_pointwise():
    fig = Figure(figsize=(1, 1)); fig.add_subplot().plot([0, 1])
    assert E.fig_to_png(fig)[:4] == b"\x89PNG"
    a = torch.linspace(0, 1, 6).reshape(2, 3)
    got = E.pointwise(lambda x, y: align_loss(x, [y], eta=2.0), a, torch.zeros_like(a))
    torch.testing.assert_close(got, a ** 2)


# ---------------------------------------------------------------- landscapes

def test_landscape_values_are_the_cria_losses():
    ls = E.loss_landscape("cria", x="pixel", y="adversarial", n=11, fixed=0.3)
    part = ls.part
    i, j = 2, 7                                # y = 0.2, x = 0.7
    a, n = torch.tensor(ls.xs[j]), torch.tensor(ls.ys[i])
    negs = [n if E._name(r) == "adversarial" else torch.tensor(0.3, dtype=torch.float64) for r in part.negatives]
    poss = [torch.tensor(0.3, dtype=torch.float64) for _ in part.positives]
    assert ls.values["unif"][i, j] == pytest.approx(float(unif_loss(a, negs, t=part.t)), abs=1e-9)
    assert ls.values["align"][i, j] == pytest.approx(float(align_loss(a, poss, eta=part.eta)), abs=1e-9)
    # eq. 9 by hand: −log(exp(−t(a+n)²) + exp(−t(a+0.3)²))
    hand = -math.log(math.exp(-2 * (0.7 + 0.2) ** 2) + math.exp(-2 * (0.7 + 0.3) ** 2))
    assert ls.values["unif"][i, j] == pytest.approx(hand, abs=1e-9)
    # eq. 11: α·C_pix + β·C_per + γ·C_adv + λa·align + λu·unif
    wsum = part.alpha * 0.7 + part.beta * 0.3 + part.gamma * 0.2
    assert ls.values["total"][i, j] == pytest.approx(wsum + part.lambda_align * ls.values["align"][i, j]
                                                    + part.lambda_unif * ls.values["unif"][i, j], abs=1e-9)

def test_landscape_gradients_are_analytic():
    ls = E.loss_landscape("cria", x="pixel", y="ssim", n=11, fixed=0.5)
    i, j = 1, 8                                # ssim 0.1, pixel 0.8; other positive at 0.5
    gx, gy = ls.grads["align"]
    assert gx[i, j] == pytest.approx(2 * (0.8 - 0.1) + 2 * (0.8 - 0.5), abs=1e-9)   # d/da Σ (a − p)²
    assert gy[i, j] == pytest.approx(-2 * (0.8 - 0.1), abs=1e-9)

def test_landscape_bad_axis_names_the_choices():
    with pytest.raises(ValueError, match="choose from"):
        E.loss_landscape("cria", x="pixel", y="nonsense", n=5)

def test_plot_landscape_views():
    ls = E.loss_landscape("cria", n=9)
    assert len(E.plot_landscape(ls, terms=("align",), view="contour").axes) == 2   # panel + colorbar
    fig = E.plot_landscape(ls, terms=("unif",), view="surface")
    assert fig.axes[0].name == "3d"
    with pytest.raises(ValueError, match="contour"): E.plot_landscape(ls, view="pie")

@pytest.fixture(scope="module")
def lw():
    return E.LandscapeWidget("cria", n=21)

def _well(w, thr=0.5): return (w.data["unif"].values["unif"] < thr).mean()

def test_landscape_widget_larger_t_narrows_unif_well(lw):
    lw.t.value = 1.0; wide = _well(lw)
    lw.t.value = 6.0; narrow = _well(lw)
    assert narrow < wide
    # −log Σ_k exp(−t s_k²) with both negatives moved by t: at a point, L(t=6) = ... ≥ L(t=1) off the minimum
    i, j = 10, 10
    lw.t.value = 1.0; u1 = lw.data["unif"].values["unif"][i, j]
    lw.t.value = 6.0; u6 = lw.data["unif"].values["unif"][i, j]
    assert u6 > u1
    lw.t.value = 2.0

def test_landscape_widget_eta_changes_align_curvature(lw):
    lw.fixed.value = 0.5
    lw.eta.value = 2.0; a2 = lw.data["align"]
    lw.eta.value = 4.0; a4 = lw.data["align"]
    xs = a2.xs; i, j = 5, 15                   # ssim at ys[5], pixel at xs[15]
    a, p = xs[j], a2.ys[i]
    assert a2.values["align"][i, j] == pytest.approx((a - p) ** 2 + (a - 0.5) ** 2, abs=1e-9)
    assert a4.values["align"][i, j] == pytest.approx((a - p) ** 4 + (a - 0.5) ** 4, abs=1e-9)
    # second derivative across the diagonal: 2 for η = 2, 0 for η = 4 (flat bottom)
    d2 = lambda Z: Z[i, i + 1] - 2 * Z[i, i] + Z[i, i - 1]
    assert d2(a4.values["align"]) < d2(a2.values["align"])
    lw.eta.value = 2.0

def test_landscape_widget_lambdas_scale_total(lw):
    lw.lambda_align.value = 0.01; t1 = lw.data["total"].values["total"].copy()
    lw.lambda_align.value = 0.05; d = lw.data["total"]
    np.testing.assert_allclose(d.values["total"] - t1, 0.04 * d.values["align"], atol=1e-9)
    lw.lambda_unif.value = 0.0
    d0 = lw.data["total"]
    np.testing.assert_allclose(d.values["total"] - d0.values["total"], 0.01 * d.values["unif"], atol=1e-9)
    lw.lambda_align.value = 0.01; lw.lambda_unif.value = 0.01

def test_landscape_widget_objective_and_anchor_dropdowns(lw):
    png = lw.png
    lw.objective.value = "anchor_perceptual"
    part = get_objective("anchor_perceptual")
    assert lw.anchor.value == "perceptual"
    assert list(lw.positive.options) == E._names(part.positives)
    assert lw.data["align"].x_name == "perceptual" and lw.png != png
    lw.objective.value = "cria"
    lw.anchor.value = "ssim"                   # the old anchor 'pixel' takes ssim's place among the positives
    assert "pixel" in lw.positive.options and lw.data["align"].x_name == "ssim"
    lw.anchor.value = "pixel"
    lw.view.value = "both"
    assert sum(ax.name == "3d" for ax in lw.fig.axes) == 3
    lw.view.value = "contour"
    assert lw.status.value == ""


# ---------------------------------------------------------------- criteria on an image

def test_criteria_views_and_combined_map(gen, pair, bank, disc):
    v = E.criteria_views(gen, pair, bank, disc=disc)
    h = v["heads"]
    torch.testing.assert_close(h.sr, h.mask * h.align + (1 - h.mask) * h.unif)     # eq. 10 (paper preset)
    c = E.combined_map(v, "cria")
    terms = E.trainer_terms(v, c["part"])      # the trainer's own numbers
    for k in ("align", "unif", "total"):
        assert float(c[k].mean()) == pytest.approx(terms[f"loss/{k}"], rel=1e-4, abs=1e-7)
    c0 = E.combined_map(v, "cria", lambda_align=0.0, lambda_unif=0.0)
    torch.testing.assert_close(c0["total"], c0["wsum"])
    with pytest.raises(ValueError, match="discriminator"):
        E.combined_map(E.criteria_views(gen, pair, bank), "cria")

def test_criteria_widget_sliders_reweight_live(gen, bank, disc):
    w = E.CriteriaWidget(model=gen, bank=bank, disc=disc, size=32, runs_dir=None)
    w.lambda_align.value = 0.01; t1 = w.data["total"].clone(); png = w.png
    w.lambda_align.value = 0.03
    torch.testing.assert_close(w.data["total"] - t1, 0.02 * w.data["align"])
    assert w.png != png
    a_pixel = w.data["align"].clone()
    w.anchor.value = "ssim"
    assert E._name(w.data["part"].anchor) == "ssim" and not torch.allclose(w.data["align"], a_pixel)
    w.anchor.value = "pixel"
    w.eta.value = 1.0                          # |C_a − C_+|: larger than the squares where the gap is < 1
    assert float(w.data["align"].sum()) > float(a_pixel.sum())
    w.photo.value = 1
    assert w.data["total"].shape == (32, 32) and w.status.value == ""


# ---------------------------------------------------------------- convergence curves

def _write(path, rows, mode="w", tail=""):
    with open(path, mode) as f:
        for r in rows: f.write(json.dumps(r) + "\n")
        f.write(tail)

def test_read_metrics_incremental(tmp_path):
    f = tmp_path / "metrics.jsonl"
    _write(f, [{"iter": 1, "loss/pix": 1.0}], tail='{"iter": 2, "loss/pi')
    assert len(E.read_metrics(tmp_path)) == 1
    _write(f, [], mode="a", tail='x": 0.5}\n')
    df = E.read_metrics(tmp_path)
    assert list(df["loss/pix"]) == [1.0, 0.5]
    _write(f, [{"iter": 1, "loss/pix": 9.0}])   # restarted run: file rewritten, shorter
    assert list(E.read_metrics(f)["loss/pix"]) == [9.0]
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        E.read_metrics(tmp_path / "nope")

def test_smooth():
    np.testing.assert_allclose(E.smooth([2.0, 2.0, 2.0], 0.9), [2, 2, 2])
    np.testing.assert_allclose(E.smooth([0.0, np.nan, 2.0], 0.5), [0, 0, 2 * 0.5 / 0.75])
    with pytest.raises(ValueError): E.smooth([1.0], 1.0)

def test_curves_widget(tmp_path):
    runs = []
    for name, k in (("wsum", 1.0), ("cria", 2.0)):
        r = tmp_path / name; r.mkdir(); runs.append(r)
        _write(r / "metrics.jsonl", [{"iter": i, "time": i / 10, "loss/pix": k / i,
                                      **({"val/psnr": 20 + k * i / 10} if i % 10 == 0 else {})} for i in range(1, 51)])
    w = E.CurvesWidget(tmp_path)               # a parent folder: every run below it
    assert {p.name for p in w.runs_all()} == {"cria", "wsum"}
    w.metrics.value = ("loss/pix",)
    ax = w.fig.axes[0]
    assert len(ax.lines) == 2                  # runs compared on one panel
    raw = {l.get_label(): l.get_ydata().copy() for l in ax.lines}
    np.testing.assert_allclose(raw["cria"], 2.0 / np.arange(1, 51))
    png = w.png
    w.smoothing.value = 0.9
    assert w.png != png                        # the PNG shown in the notebook was redrawn
    sm = {l.get_label(): l.get_ydata() for l in w.fig.axes[0].lines}
    np.testing.assert_allclose(sm["cria"], E.smooth(raw["cria"], 0.9))
    assert np.abs(np.diff(sm["cria"])).max() < np.abs(np.diff(raw["cria"])).max()
    w.logy.value = True
    assert w.fig.axes[0].get_yscale() == "log"
    w.x.value = "time"
    assert w.fig.axes[0].lines[0].get_xdata()[-1] == pytest.approx(5.0)
    # the run keeps writing: new points and a new metric appear after refresh
    _write(runs[1] / "metrics.jsonl", [{"iter": 51, "time": 5.1, "loss/pix": 0.01, "conflict/pixel~ssim": 0.3}], mode="a")
    w.refresh()
    assert "conflict/pixel~ssim" in [v for _, v in w.metrics.options] and w.metrics.rows == 3
    assert max(len(l.get_xdata()) for l in w.fig.axes[0].lines) == 51
    w.metrics.value = ("loss/pix", "val/psnr")
    assert len(w.fig.axes) == 2 and len(w.fig.axes[1].lines[0].get_xdata()) == 5


# ---------------------------------------------------------------- conflicts (the measurement is criasr.cria's; tested there)

def test_explore_uses_cria_diagnostics():
    from criasr import cria
    assert E.conflict_matrix is cria.conflict_matrix and not hasattr(E, "ConflictCB")
    assert "ConflictCB" not in E.__all__ and "conflict_matrix" not in E.__all__   # one owner: criasr.cria

def test_plot_conflicts_pairs_each_criterion_with_its_anchor(gen, pair, bank, disc):
    from criasr.cria import conflict_maps, conflict_matrix, partition_refs
    part = get_objective("cria")
    refs, M = conflict_matrix(gen, pair, bank, partition_refs(part), wrt="trunk", disc=disc)
    _, P = conflict_maps(gen, pair, bank, refs, disc=disc)
    fig = E.plot_conflicts(refs, M, part, maps=P, title="trunk")
    assert isinstance(fig, Figure) and len(fig.axes) == 2 + 2 * 4           # matrix, colorbar, 2 positives + 2 negatives (+ colour bars)
    titles = [ax.get_title() for ax in fig.axes[2::2]]
    assert titles[0].startswith("pixel@align vs\nssim@align") and titles[2].startswith("pixel@unif vs\nperceptual_top@unif")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][:2] == ["pixel@align (anchor)", "ssim@align (+)"]
    assert len(E.plot_conflicts(refs, M).axes) == 2

def test_conflict_widget(gen, pair, bank, disc):
    w = E.ConflictWidget(gen, pair, bank, disc)
    assert list(w.wrt.options) == ["heads", "trunk", "params"] and not hasattr(w, "head")
    M, png = w.data["matrix"].copy(), w.png
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-9)
    assert w.data["maps"].shape[:2] == M.shape
    np.testing.assert_allclose(M[:3, 3:], 0, atol=1e-12)                   # heads: align vs unif criteria are disjoint
    w.wrt.value = "trunk"
    np.testing.assert_allclose(np.diag(w.data["matrix"]), 1.0, atol=1e-9)
    assert not np.allclose(M, w.data["matrix"]) and w.png != png
    w.per_pixel.value = False
    assert w.data["maps"] is None and len(w.fig.axes) == 2               # matrix + colorbar
    w.objective.value = "anchor_perceptual"
    assert w.data["refs"][0] == "perceptual@align"

def test_read_metrics_rewritten_in_place(tmp_path):
    f = tmp_path / "metrics.jsonl"
    _write(f, [{"iter": 1, "loss/pix": 1.0}])
    E.read_metrics(f)
    with open(f, "r+") as fh:                   # same inode, longer, different content: offset lands mid-line
        fh.seek(0); fh.write("\n".join(json.dumps({"iter": i, "loss/pix": 0.1 * i}) for i in range(1, 4)) + "\n")
    df = E.read_metrics(f)
    assert list(df["iter"]) == [1, 2, 3] and list(df["loss/pix"]) == pytest.approx([0.1, 0.2, 0.3])
    bad = tmp_path / "bad.jsonl"; bad.write_text("not json\n")
    with pytest.raises(ValueError, match="JSON-lines"):
        E.read_metrics(bad)


# ---------------------------------------------------------------- what a person sees

def test_fonts_and_colour_bars(gen, pair, bank, disc):
    "Every figure: no text under 9 pt (titles, ticks, matrix numbers); every map of the criteria figure has a colour bar."
    ls = E.loss_landscape("cria", n=9)
    v = E.criteria_views(gen, pair, bank, disc=disc)
    crit = E.plot_criteria(v, E.combined_map(v, "cria"), about="x")
    part = get_objective("cria")
    refs, M = E.conflict_matrix(gen, pair, bank, E.partition_refs(part), disc=disc)
    conf = E.plot_conflicts(refs, M, part, maps=E.conflict_maps(gen, pair, bank, refs, disc=disc)[1])
    for fig in (E.plot_landscape(ls), crit, conf):
        E.fig_to_png(fig)                                       # drawn: tick labels have their text
        sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        assert sizes and min(sizes) >= 9, sorted(set(sizes))
    numbers = [t for t in conf.axes[0].texts]                   # the matrix annotations
    assert len(numbers) == len(refs) ** 2 and all(t.get_fontsize() >= 9 for t in numbers)
    images = [ax for ax in crit.axes if ax.images]
    maps = [ax for ax in images if ax.images[0].get_array().ndim == 2 and ax.get_title()]
    cbars = [ax for ax in crit.axes if getattr(ax, "_colorbar", None) is not None]
    assert len(maps) == 12 and len(cbars) == len(maps)         # 2 masks + 6 criterion maps + 4 objective maps

def test_png_records_its_smallest_font():
    from PIL import Image
    fig = Figure(figsize=(2, 1)); ax = fig.add_subplot(); ax.set_title("t", fontsize=13); ax.tick_params(labelsize=11)
    im = Image.open(io.BytesIO(E.fig_to_png(fig, dpi=50))); im.load()
    assert im.info["criasr_min_font_pt"] == "11" and im.info["criasr_dpi"] == "50" and im.size == (100, 50)

def test_default_bank_is_seeded_and_says_so(torch_home):
    "No ImageNet file (empty TORCH_HOME): a random VGG, the same on every build, global RNG untouched, and a notice."
    torch.manual_seed(123); expect = torch.rand(3)
    torch.manual_seed(123)
    b1, b2 = E.default_bank(), E.default_bank()
    torch.testing.assert_close(torch.rand(3), expect)          # building banks does not move the caller's RNG
    for (k, p), (_, q) in zip(b1.state_dict().items(), b2.state_dict().items()): assert torch.equal(p, q), k
    note = E.vgg_notice(b1)
    assert "random weights (seeded, seed 0)" in note and "vgg19-dcbb9e9d.pth" in note and str(torch_home) in note
    d1, d2 = E.default_disc(), E.default_disc()
    assert d1.untrained and all(torch.equal(p, q) for p, q in zip(d1.state_dict().values(), d2.state_dict().values()))

def test_widgets_show_notice_and_busy_line(gen, bank, disc):
    w = E.ConflictWidget(gen, E.demo_pair(0, 4, 32), bank)                  # the default discriminator: untrained
    assert "VGG-19 has random weights (unseeded" in w.notice.value and "untrained PatchGAN" in w.notice.value
    assert w.status.value == ""
    seen, compute = [], w.compute
    w.compute = lambda **v: (seen.append(w.status.value), compute(**v))[1]
    w.per_pixel.value = False
    assert "computing" in seen[0] and w.status.value == ""      # busy while computing, cleared after

def test_default_generator_is_the_exact_warm_start():
    "The image widgets' default network: paper preset, ESRGAN's 23 blocks, I_SR = Impressionism's output."
    from criasr import zoo
    g = E.as_generator(None)
    assert g is E.default_generator() and g.preset == "paper" and g.config["num_block"] == 23
    x = E.demo_pair(1, 4, 32)["lr"]
    with torch.no_grad():
        torch.testing.assert_close(g.heads(x).sr, zoo.load("realsr_df2k")(x), atol=1e-5, rtol=0)

class _Handle:
    def __init__(self): self.updates = []
    def update(self, obj): self.updates.append(obj)

def test_widget_leaves_a_static_png_output(monkeypatch, lw):
    "Displayed: the controls (a widget bundle with a readable text/plain) and the figure as an image/png output, replaced on change."
    calls, handle = [], _Handle()
    def fake_display(obj, raw=False, display_id=None):
        calls.append((obj, raw, display_id)); return handle if display_id else None
    monkeypatch.setattr(E, "display", fake_display)
    lw._ipython_display_()
    (bundle, raw, _), (img, _, did) = calls
    assert raw and "application/vnd.jupyter.widget-view+json" in bundle and "image below" in bundle["text/plain"]
    assert did is True and img.data == lw.png and img.format == "png"
    lw.t.value = 5.0
    assert handle.updates and handle.updates[-1].data == lw.png
    lw.t.value = 2.0

def _cannot_shrink(c)->bool:
    "CSS flexbox: an item keeps its width when its flex-shrink is 0 and it has a width, or when it has a min-width."
    L = c.layout
    shrink = float(L.flex.split()[1]) if L.flex and len(L.flex.split()) == 3 else 1.0
    return bool(L.min_width) or (shrink == 0 and bool(L.width) and L.width != "auto")

def test_no_control_of_a_widget_can_be_squeezed(lw, tmp_path):
    "Every control in every row of the built widgets keeps its width (rows wrap instead of squeezing a control)."
    import ipywidgets as widgets
    r = tmp_path / "run"; r.mkdir(); _write(r / "metrics.jsonl", [{"iter": 1, "loss/pix": 1.0}])
    cv = E.CurvesWidget([r])
    for w in (lw, cv):
        rows = [b for b in w.widget.children if isinstance(b, widgets.HBox)]
        assert rows and all(b.layout.flex_flow == "row wrap" for b in rows), type(w).__name__
        squeezable = [getattr(c, "description", type(c).__name__) for b in rows for c in b.children if not _cannot_shrink(c)]
        assert not squeezable, (type(w).__name__, squeezable)
    assert not _cannot_shrink(widgets.FloatSlider(layout=widgets.Layout(width="280px")))   # a plain slider would be squeezed

def test_curves_labels_nan_metrics_and_refresh_errors(tmp_path):
    for parent in ("a", "b"):
        r = tmp_path / parent / "run"; r.mkdir(parents=True)
        _write(r / "metrics.jsonl", [{"iter": i, "loss/pix": 1 / i, "val/lpips": None, "val/psnr": 20.0 + i} for i in range(1, 5)])
    w = E.CurvesWidget([tmp_path / "a" / "run", tmp_path / "b" / "run"])
    assert [l for l, _ in w.runs.options] == ["a/run", "b/run"]              # same folder name, told apart
    assert {l.get_label() for l in w.fig.axes[0].lines} == {"a/run", "b/run"}
    assert "val/lpips" not in w.metrics.value and ("val/lpips (no values)", "val/lpips") in w.metrics.options
    assert set(w.metrics.value) == {"loss/pix", "val/psnr"}
    (tmp_path / "b" / "run" / "metrics.jsonl").unlink()                      # a run folder removed under the widget
    w.refresh_button.click()
    assert "FileNotFoundError" in w.status.value                             # said in the status line, not lost

def test_curves_band_is_the_mean_and_t_interval_over_seeds(tmp_path):
    "A sweep folder: one line per objective (the paper's row label) at its seeds' mean, in a band of ± t_0.975,n-1 · s/√n."
    for o, s, vals in [("cria", 0, [1, 20]), ("cria", 1, [2, 21]), ("cria", 2, [3, 22]), ("plain", 0, [5, 5])]:
        d = tmp_path / f"{o}_s{s}"; d.mkdir()
        (d / "params.json").write_text(json.dumps(dict(objective=o, seed=s)))
        _write(d / "metrics.jsonl", [{"iter": 10 * (i + 1), "time": float(i), "val/psnr": v} for i, v in enumerate(vals)] + [{"iter": 25, "loss/pix": 1.0}])
    w = E.CurvesWidget(tmp_path, metrics=["val/psnr"])
    assert w.band.value                                                    # several seeds of one objective: bands by default
    ax = w.fig.axes[0]
    line = next(l for l in ax.lines if l.get_label() == "Ours full (3 seeds)")
    assert list(line.get_xdata()) == [10, 20] and np.allclose(line.get_ydata(), [2, 21])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]                 # by hand: s = 1, t_0.975,2 = 4.3027, 4.3027/√3 = 2.4841
    assert np.isclose(band.min(), 2 - 2.4841, atol=1e-4) and np.isclose(band.max(), 21 + 2.4841, atol=1e-4)
    assert "Plain Model (1 seed)" in [l.get_label() for l in ax.lines] and len(ax.collections) == 1   # one seed: a line, no band
