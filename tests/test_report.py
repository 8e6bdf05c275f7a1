"""The HTML report: built from run files written by hand (so every number it shows is known), self-contained,
diagnostics sections only when diagnostics.jsonl exists, negative transfer in red, several runs compared, the CLI,
the report at the end of `multitask train`, and a render in a real headless Chromium."""
import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from multitask.config import ConfigError
from multitask.report import metrics_table, summary, write_report, write_run_report
from multitask.report.aggregate import affinity_summary, gradient_summary, smooth
from multitask.report.runs import load_run

pytest.importorskip("matplotlib")

TASKS = ["income", "marital"]


def _final(test, base, delta_m=None, **extra):
    return {"dataset": "census-income", "model": "mmoe", "balancer": "uncertainty", "test": test, "val": test,
            "epochs": 3, "best_epoch": 2, "wall_time_s": 12.5, "parameters": 1234,
            "baseline": None if base is None else {"test": base, "val": base, "source": "baseline/final.json"},
            "delta_m": delta_m, **extra}


def make_run(path, test=None, base=None, weights=None, balancer=None, delta_m=1.0):
    """A run directory as `multitask train` writes it: config.yaml, tasks.json, metrics.jsonl, final.json."""
    path.mkdir(parents=True)
    test = test or {"income": {"auc": 0.90, "f1": 0.50}, "marital": {"auc": 0.95, "f1": 0.90}}
    base = {"income": {"auc": 0.92, "f1": 0.40}, "marital": {"auc": 0.95, "f1": 0.90}} if base is None else base
    weights = weights or [{"income": 1.0, "marital": 1.0}, {"income": 1.5, "marital": 0.7},
                          {"income": 2.0, "marital": 0.5}]
    lines = []
    for e, w in enumerate(weights, start=1):
        lines.append({"epoch": e, "train_loss": {"income": 0.5 / e, "marital": 0.4 / e}, "weights": w,
                      "val_loss": {"income": 0.6 / e, "marital": 0.5 / e},
                      "val": {t: {m: v - 0.01 * (3 - e) for m, v in ms.items()} for t, ms in test.items()},
                      "seconds": 1.0, **({"best": True} if e == 2 else {})})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = {"data": {"name": "census-income"}, "model": {"name": "mmoe", "n_experts": 4},
           "balancer": balancer or {"name": "uncertainty"},
           "trainer": {"optimizer": "adam", "lr": 0.001, "batch_size": 256}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "tasks.json").write_text(json.dumps([{"name": t, "kind": "binary"} for t in TASKS]))
    (path / "final.json").write_text(json.dumps(_final(test, base or None, delta_m)))
    return path


def write_diagnostics(path, steps=6):
    """diagnostics.jsonl in the diagnostics callback's format: gradient records every step, affinity every 2."""
    rows = []
    for s in range(steps):
        c = 0.5 - 0.2 * s  # the pair's cosine falls from 0.5 to -0.5: conflict on the last 3 of 6 steps
        rows.append({"kind": "gradients", "step": s, "epoch": 1 + s // 3, "tasks": TASKS,
                     "cosine": [[1.0, c], [c, 1.0]], "norms": [1.0, 3.0], "weights": {"income": 1.0 + s,
                                                                                      "marital": 1.0}})
        if s % 2 == 0:
            rows.append({"kind": "affinity", "step": s, "epoch": 1 + s // 3, "tasks": TASKS,
                         "affinity": [[0.0, 0.1 * s], [-0.05, 0.0]]})
    (path / "diagnostics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.fixture
def fast_png(monkeypatch):
    """Figures are built but not rasterised (a fixed PNG signature stands in): for tests of the page's logic;
    the real rendering is checked by the tests without this fixture and in the browser."""
    from multitask.report import figures

    monkeypatch.setattr(figures, "png", lambda fig: b"\x89PNG\r\n\x1a\n" + fig.get_axes()[0].get_title().encode())


def _images(page):
    return re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)


def test_text_summary_still_importable():
    final = _final({"a": {"auc": 0.8}}, {"a": {"auc": 0.5}}, 60.0)
    assert "+60.00%" in metrics_table(final) and "Δm" in summary(final)


def test_single_run_report_is_self_contained_and_shows_negative_transfer(tmp_path):
    run = make_run(tmp_path / "run")
    out = write_run_report(run)
    assert out == run / "report.html"
    page = out.read_text()
    # self-contained: no script, no external resource, every image a PNG embedded as a data URI
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "http://" not in page and "https://" not in page
    imgs = _images(page)
    assert len(imgs) == 4  # losses, validation, weights (they change), delta_m
    for data in imgs:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    files = sorted(p.name for p in (run / "figures").iterdir())
    assert files == ["delta_m.png", "losses.png", "validation.png", "weights.png"]
    embedded = {base64.b64decode(d) for d in imgs}
    assert {(run / "figures" / f).read_bytes() for f in files} == embedded  # the same figures for papers
    # what was trained, and the summary table with the change against the baseline
    assert "census-income: mmoe with uncertainty balancing" in page
    assert "mmoe (n_experts=4)" in page and "1,234" in page
    # income.auc 0.90 against 0.92: -2.17% (negative transfer, red); income.f1 0.5 against 0.4: +25%
    assert '<td class="neg">-2.17%</td>' in page and '<td class="pos">+25.00%</td>' in page
    assert "Negative transfer" in page and "income.auc -2.17%" in page
    # no diagnostics file: no diagnostics section
    assert "Gradient conflict" not in page and "Task affinity" not in page


def test_no_negative_transfer_and_no_baseline(tmp_path, fast_png):
    good = make_run(tmp_path / "good", base={"income": {"auc": 0.8, "f1": 0.4}, "marital": {"auc": 0.9, "f1": 0.8}})
    page = write_run_report(good).read_text()
    assert "No negative transfer" in page and 'class="neg"' not in page
    none = make_run(tmp_path / "none", base={}, delta_m=None)
    page = write_run_report(none).read_text()
    assert "No single-task baseline" in page and "single-task test" not in page
    assert "delta_m.png" not in {p.name for p in (none / "figures").iterdir()}


def test_fixed_weights_are_stated_not_plotted(tmp_path, fast_png):
    run = make_run(tmp_path / "run", weights=[{"income": 0.3, "marital": 0.7}] * 3)
    (run / "figures").mkdir()
    (run / "figures" / "weights.png").write_bytes(b"an earlier run's figure")  # a run written again
    (run / "figures" / "mine.png").write_bytes(b"a user's file")
    page = write_run_report(run).read_text()
    assert (run / "figures" / "mine.png").exists()
    assert "did not change during training: income 0.3, marital 0.7" in page
    assert not (run / "figures" / "weights.png").exists()


def test_diagnostics_sections_appear_with_the_file(tmp_path):
    run = make_run(tmp_path / "run")
    write_diagnostics(run)
    page = write_run_report(run).read_text()
    assert "Gradient conflict" in page and "Task affinity" in page
    names = {p.name for p in (run / "figures").iterdir()}
    assert {"conflict.png", "conflict_trend.png", "affinity.png", "affinity_trend.png"} <= names
    from multitask.report.build import FIGURE_FILES

    assert names <= set(FIGURE_FILES)  # every figure is one a later report knows to replace or remove
    assert len(_images(page)) == 8
    assert "over 6 logged steps" in page and "3 measurements" in page


def test_gradient_summary_by_hand():
    # three records; task c is absent from the second one
    recs = [
        {"kind": "gradients", "step": 0, "tasks": ["a", "b", "c"], "norms": [1, 2, 3], "weights": {"a": 1, "b": 2},
         "cosine": [[1, -0.5, 0.2], [-0.5, 1, 0.4], [0.2, 0.4, 1]]},
        {"kind": "gradients", "step": 1, "tasks": ["a", "b"], "norms": [2, 2], "weights": {"a": 3, "b": 1},
         "cosine": [[1, 0.3], [0.3, 1]]},
        {"kind": "gradients", "step": 2, "tasks": ["a", "b", "c"], "norms": [4, 1, 1],
         "cosine": [[1, -0.1, -0.6], [-0.1, 1, 0.0], [-0.6, 0.0, 1]]},
        {"kind": "affinity", "step": 0, "tasks": ["a", "b"], "affinity": [[0, 1], [2, 0]]},
    ]
    g = gradient_summary(recs)
    assert g.tasks == ["a", "b", "c"]
    assert g.mean_cosine[0, 1] == pytest.approx((-0.5 + 0.3 - 0.1) / 3)
    assert g.mean_cosine[0, 2] == pytest.approx((0.2 - 0.6) / 2)  # only the records holding both
    assert g.conflict[0, 1] == pytest.approx(2 / 3) and g.conflict[0, 2] == pytest.approx(1 / 2)
    assert g.conflict[1, 2] == 0.0  # cosine 0 is not a conflict
    assert g.count[0, 2] == 2 and g.count[0, 1] == 3
    np.testing.assert_allclose(g.norm_ratio_series["a"], [1 / 2, 1.0, 4 / 2])
    assert np.isnan(g.norm_ratio_series["c"][1])
    np.testing.assert_allclose(g.weight_series["a"], [1, 3, np.nan])
    assert "c" not in g.weight_series  # never logged
    np.testing.assert_allclose(g.cosine_series[("a", "b")], [-0.5, 0.3, -0.1])


def test_affinity_summary_by_hand():
    recs = [{"kind": "affinity", "step": 4, "tasks": ["a", "b"], "affinity": [[0, 0.2], [-0.4, 0]]},
            {"kind": "affinity", "step": 2, "tasks": ["b", "a"], "affinity": [[0, 0.1], [0.6, 0]]}]
    a = affinity_summary(recs)
    assert a.tasks == ["b", "a"] and list(a.steps) == [2, 4]  # sorted by step; tasks in order of appearance
    i, j = a.tasks.index("a"), a.tasks.index("b")
    # the step-2 record lists b first: its [0][1] is Z[b->a] = 0.1 and [1][0] is Z[a->b] = 0.6
    assert a.mean[i, j] == pytest.approx((0.2 + 0.6) / 2) and a.mean[j, i] == pytest.approx((-0.4 + 0.1) / 2)
    np.testing.assert_allclose(a.series[("a", "b")], [0.6, 0.2])
    assert affinity_summary([]) is None and gradient_summary(recs) is None


def test_smooth_is_a_trailing_nan_aware_mean():
    np.testing.assert_allclose(smooth(np.array([1.0, 3.0, np.nan, 5.0]), 2), [1.0, 2.0, 3.0, 5.0])
    np.testing.assert_allclose(smooth(np.array([1.0, 2.0]), 1), [1.0, 2.0])


def test_delta_m_bars_are_red_for_negative_transfer():
    from matplotlib.colors import to_hex

    from multitask.report.figures import BETTER, WORSE, delta_m_bars

    fig = delta_m_bars({"a.auc": -0.02, "b.mse": 0.1}, 4.0)
    bars = fig.axes[0].patches
    assert [to_hex(b.get_facecolor()) for b in bars] == [WORSE, BETTER]
    assert [b.get_width() for b in bars] == pytest.approx([-2.0, 10.0])


def test_several_runs_comparison_and_pareto(tmp_path):
    runs = []
    for k, (a, b) in enumerate([(0.90, 0.80), (0.85, 0.85), (0.80, 0.90), (0.80, 0.80), (0.85, 0.85)]):
        test = {"income": {"auc": a}, "marital": {"auc": b}}
        runs.append(make_run(tmp_path / f"pref-{k}", test=test, base={"income": {"auc": 0.85}, "marital": {"auc": 0.85}},
                             balancer={"name": "static", "weights": {"income": 1 - k / 4, "marital": k / 4}}))
    out = write_report(runs, tmp_path / "cmp.html")
    page = out.read_text()
    assert "5 runs compared" in page and "Pareto front" in page
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"pareto.png", "compared_validation.png"}
    rows = re.findall(r"<tr( class=\"front\")?><td class=\"text\">(pref-\d)</td>", page)
    assert {name for cls, name in rows if cls} == {"pref-0", "pref-1", "pref-2", "pref-4"}  # pref-3 is dominated
    # hypervolume with the default reference (worst - 10% of the range, in costs): auc 0.79 on both axes
    # front (0.9,0.8), (0.85,0.85), (0.8,0.9): area above (0.79, 0.79) = 0.11*0.01 + 0.06*0.05 + 0.01*0.05 ...
    from multitask.pareto import hypervolume

    hv = hypervolume(-np.array([[0.9, 0.8], [0.85, 0.85], [0.8, 0.9], [0.8, 0.8]]), [-0.79, -0.79])
    assert hv == pytest.approx(0.11 * 0.01 + 0.06 * 0.05 + 0.01 * 0.05)
    assert f"Hypervolume {hv:.4g}" in page
    # explicit objectives, and a bad one
    write_report(runs[:3], tmp_path / "two.html", objectives=["marital.auc", "income.auc"])
    with pytest.raises(ConfigError, match="objectives.*income.nope"):
        write_report(runs, tmp_path / "bad.html", objectives=["income.nope", "marital.auc"])


def test_not_a_run_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for bad, why in [(tmp_path / "missing", "does not exist"), (tmp_path / "empty", "neither final.json")]:
        with pytest.raises(ConfigError, match=re.escape(str(bad))):
            write_run_report(bad)
        with pytest.raises(ConfigError, match=why):
            load_run(bad)
    run = make_run(tmp_path / "run")
    (run / "final.json").write_text("{not json")
    with pytest.raises(ConfigError, match="final.json cannot be read"):
        load_run(run)
    with pytest.raises(ConfigError, match="is a directory"):
        write_report([tmp_path / "run"], tmp_path)


def test_unfinished_run_shows_its_best_validation_epoch(tmp_path, fast_png):
    run = make_run(tmp_path / "run")
    (run / "final.json").unlink()
    page = write_run_report(run).read_text()
    assert "did not finish" in page and "validation (best epoch)" in page
    assert "0.8900" in page  # income.auc at the best epoch (2): 0.90 - 0.01


def test_cli_report(tmp_path, capsys, fast_png):
    from multitask.cli import main

    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    assert main(["report", str(a)]) == 0
    assert (a / "report.html").exists() and "report:" in capsys.readouterr().out
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "ab.html"), "--objectives",
                 "income.f1,marital.f1", "--split", "val", "--figures", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "compared_validation.png").exists()
    assert main(["report", str(a), str(b)]) == 2  # several runs need --out
    assert "--out" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "Traceback" not in err
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "x.html"), "--objectives", "income.auc"]) == 2


CENSUS = {
    "data": {"name": "census-income", "limit": 1500},
    "model": {"name": "hard_sharing", "hidden": [16], "embedding_dim": 4},
    "trainer": {"epochs": 2, "batch_size": 256, "progress": False},
    "baselines": "auto",
}


def test_train_writes_the_report_and_a_report_failure_keeps_the_run(tmp_path, capsys, monkeypatch):
    from multitask import report
    from multitask.cli import main

    monkeypatch.delenv("MULTITASK_NO_REPORT", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CENSUS))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'run' / 'report.html'}" in out
    page = (tmp_path / "run" / "report.html").read_text()
    assert "census-income: hard_sharing with equal balancing" in page and "Against the single-task baselines" in page

    def broken(run_dir):
        raise ValueError("the disk said no")
    monkeypatch.setattr(report, "write_run_report", broken)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run2"), "--set", "baselines=none"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "the disk said no" in captured.err
    assert (tmp_path / "run2" / "final.json").exists() and not (tmp_path / "run2" / "report.html").exists()
    assert main(["train", str(cfg), "--out", str(tmp_path / "run3"), "--no-report", "--set", "baselines=none"]) == 0
    assert not (tmp_path / "run3" / "report.html").exists()


# ------------------------------------------------------------------------------------------ a real browser
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed: `apt-get install chromium` (Debian/Ubuntu) to run this test")
    run = make_run(tmp_path / "run")
    write_diagnostics(run)
    page = write_run_report(run)
    shot = tmp_path / "shot.png"
    width, height = 1000, 1400
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--screenshot={shot}",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (height, width)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05  # not blank
    colours = {tuple(c) for c in (rgb.reshape(-1, 3)[::37] * 255).astype(int)}
    assert len(colours) > 50  # text, tables and figures, not a flat error page
    # the embedded figures were decoded and drawn: the first task's line colour (only in figures) is on screen
    blue = np.array([0x1f, 0x77, 0xb4]) / 255
    assert (np.abs(rgb - blue).max(axis=-1) < 0.08).sum() > 200


def test_python_api_run_with_many_tasks_and_odd_names(tmp_path, fast_png):
    """A run directory of Trainer(run_dir=...) (metrics.jsonl and trainer.json only), eight tasks, one of
    them named with HTML's special characters."""
    run = tmp_path / "api"
    run.mkdir()
    tasks = [f"t{k}" for k in range(7)] + ["a<b>&c"]
    lines = [{"epoch": e, "train_loss": {t: 1.0 / (e + k) for k, t in enumerate(tasks)},
              "weights": {t: 1.0 for t in tasks}, "val_loss": {t: 1.0 / e for t in tasks},
              "val": {t: {"mse": 1.0 / e} for t in tasks}, "seconds": 0.5, **({"best": True} if e == 2 else {})}
             for e in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (run / "trainer.json").write_text("{}")
    page = write_run_report(run).read_text()
    assert "<h1>api: 8 tasks</h1>" in page and "Written by the Python API" in page
    assert "from metrics.jsonl;" in page
    assert "a&lt;b&gt;&amp;c" in page and "a<b>" not in page
    assert "8: t0, t1, t2, ..., a&lt;b&gt;&amp;c" in page  # many tasks: counted, not all listed
    assert (run / "figures" / "losses.png").exists() and (run / "figures" / "validation.png").exists()


def test_without_matplotlib_the_report_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import sys

    from multitask.cli import main

    run = make_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(ConfigError, match=r"pip install 'multitask\[plots\]'"):
        write_run_report(run)
    assert main(["report", str(run)]) == 2
    assert "matplotlib" in capsys.readouterr().err
