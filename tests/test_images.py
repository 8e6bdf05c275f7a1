"""Image inputs: Multi-Fashion built from small generated IDX files, image tables of PNG/JPEG files written
here with Pillow, conv models from an ImageSpec, train -> evaluate -> predict through the CLI, the offline
install path of the Debian package, and bad inputs (exit 2, one line naming the file and row)."""
import gzip
import io
import json
import struct
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image as PIL  # the `images` extra; `make test` installs it

from multitask.cli import main
from multitask.data import debian
from multitask.data.images import planned_spec
from multitask.data.multi_fashion import CANVAS, CENTRE, ITEM, MAX_SHIFT, compose, load_multi_fashion
from multitask.models import HardSharing, ImageSpec, Independent, MMoE, build_model
from multitask.tasks import Task



# ------------------------------------------------------------------------------------------ generated data
def _idx(path, array):
    dims = array.shape
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + array.tobytes())


def _value(label):
    return 10 + 20 * int(label)  # every pixel of a generated item: its label, readable from the composite


def fashion_files(folder, n_train=120, n_test=40, seed=0):
    """Four IDX files like Fashion-MNIST's: solid 28x28 items whose intensity encodes their label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.stack([np.full((ITEM, ITEM), _value(y), np.uint8) for y in labels])
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return fashion_files(tmp_path_factory.mktemp("fashion"))


def test_composites_are_deterministic_from_the_seed(fashion):
    a, b, c = (load_multi_fashion(fashion, seed=s) for s in (3, 3, 4))
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).inputs, getattr(b, split).inputs)
        assert torch.equal(getattr(a, split).targets["right"], getattr(b, split).targets["right"])
    assert not torch.equal(a.test.inputs, c.test.inputs)
    assert a.train.inputs.dtype == torch.uint8 and a.train.inputs.shape[1:] == (1, CANVAS, CANVAS)
    assert (len(a.train), len(a.val), len(a.test)) == (108, 12, 40)
    assert a.preprocessor.schema == ImageSpec(1, 36, 36, a.preprocessor.mean, a.preprocessor.std)


def test_each_item_in_its_quadrant_with_its_label(fashion):
    bundle = load_multi_fashion(fashion, seed=1)
    shifts = set()
    for data in (bundle.train, bundle.val, bundle.test):
        for x, left, right in zip(data.inputs[:, 0].numpy(), data.targets["left"], data.targets["right"]):
            rows, cols = np.nonzero(x.any(1))[0], np.nonzero(x.any(0))[0]
            top, first_col, bottom, last_col = rows[0], cols[0], rows[-1] - ITEM + 1, cols[-1] - ITEM + 1
            # the left item's corner is up-left of the centred position by 1..4 px, the right one's down-right
            assert CENTRE - MAX_SHIFT <= top < CENTRE and CENTRE - MAX_SHIFT <= first_col < CENTRE
            assert CENTRE < bottom <= CENTRE + MAX_SHIFT and CENTRE < last_col <= CENTRE + MAX_SHIFT
            assert x[top, first_col] == _value(left)                       # only the left item covers this corner
            assert x[bottom + ITEM - 1, last_col + ITEM - 1] == _value(right)  # only the right item covers this one
            assert (x > 0).sum() == 2 * ITEM * ITEM - (ITEM - (bottom - top)) * (ITEM - (last_col - first_col))
            shifts.add((CENTRE - top, bottom - CENTRE))
    assert len(shifts) > 8  # the shifts vary


def test_compose_pairs_every_image_once_on_each_side():
    images = np.stack([np.full((ITEM, ITEM), i + 1, np.uint8) for i in range(30)])
    labels = np.arange(30, dtype=np.uint8) % 10
    canvas, y, corners = compose(images, labels, seed=0)
    assert sorted(np.bincount(y["right"], minlength=10)) == sorted(np.bincount(labels, minlength=10))
    assert np.array_equal(y["left"], labels)
    assert (corners["left"] >= 0).all() and (corners["right"] + ITEM <= CANVAS).all()


def test_limit_and_missing_data(fashion, tmp_path):
    assert len(load_multi_fashion(fashion, limit=50, val_fraction=0.2).train) == 40
    with pytest.raises(FileNotFoundError, match="multitask data install multi-fashion"):
        load_multi_fashion(tmp_path)


# ------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("name", ["hard_sharing", "independent", "mmoe"])
def test_models_build_on_an_image_spec(name):
    tasks = [Task("a", "multiclass", n_outputs=4), Task("b", "binary")]
    spec = ImageSpec(3, 20, 24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    model = build_model(name, tasks, spec)
    assert isinstance(model, {"hard_sharing": HardSharing, "independent": Independent, "mmoe": MMoE}[name])
    x = torch.randint(0, 256, (5, 3, 20, 24), dtype=torch.uint8)
    out = model(x)
    assert out["a"].shape == (5, 4) and out["b"].shape == (5, 1)
    assert torch.allclose(model(x.float() / 255)["a"], out["a"], atol=1e-5)  # [0, 1] floats read the same
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t)} for t in ("a", "b")]
    assert shared | per_task[0] | per_task[1] == {id(p) for p in model.parameters()}
    assert not (per_task[0] & per_task[1]) and (name == "independent") == (not shared)


@pytest.mark.parametrize("balancer", [{"name": "mgda", "mode": "features"}, {"name": "mgda", "mode": "parameters"},
                                      {"name": "uncertainty"}])
def test_gradient_balancing_trains_the_conv_models(fashion, balancer):
    from multitask.balancing import BALANCERS
    from multitask.training import Trainer

    data = load_multi_fashion(fashion, limit=40)
    model = HardSharing.image(data.tasks, data.preprocessor.schema, conv_channels=(4, 8), hidden=(16,))
    before = [p.detach().clone() for p in model.trunk.parameters()]
    options = {k: v for k, v in balancer.items() if k != "name"}
    trainer = Trainer(model, data.tasks, BALANCERS[balancer["name"]](data.tasks, **options), epochs=1,
                      batch_size=16, progress=False)
    trainer.fit(data.train)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.trunk.parameters()))  # the trunk learned
    assert set(trainer.evaluate(data.test)["metrics"]) == {"left", "right"}


def test_conv_trunk_refuses_images_too_small():
    with pytest.raises(ValueError, match="image size 8x8 is too small"):
        HardSharing.image([Task("a", "binary")], ImageSpec(1, 8, 8))


# ------------------------------------------------------------------------------------------ image tables
def image_table(folder, n=60, seed=0, bad=None):
    """n images (PNG grayscale and JPEG RGB, 20x24) whose brightness is the label, in folder/img, and
    folder/labels.csv naming them by relative path."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        light = i % 2 == 1
        a = np.clip(rng.normal(200 if light else 50, 15, (20, 24)), 0, 255).astype(np.uint8)
        if i % 3 == 0:
            name = f"img/{i}.jpg"
            PIL.fromarray(np.stack([a, a, a], -1), "RGB").save(folder / name, quality=95)
        else:
            name = f"img/{i}.png"
            PIL.fromarray(a, "L").save(folder / name)
        rows.append({"path": name, "shade": "light" if light else "dark", "big": int(i >= n // 2), "note": "x"})
    df = pd.DataFrame(rows)
    df.to_csv(folder / "labels.csv", index=False)
    return df


def _config(tmp_path, data, model=None, **trainer):
    raw = {"data": data, "model": model or {"name": "hard_sharing", "hidden": [16], "head_hidden": [8]},
           "trainer": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "progress": False, **trainer}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(p)


def _table_data(folder, **extra):
    return {"name": "table", "path": str(folder / "labels.csv"), "image_column": "path",
            "targets": {"shade": "multiclass", "big": "binary"}, **extra}


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("images")
    df = image_table(tmp / "data")
    cfg = _config(tmp, _table_data(tmp / "data", image_size=[16, 16], channels=1), epochs=6, lr=1e-2)
    assert main(["train", cfg, "--out", str(tmp / "run")]) == 0
    return tmp, df


def test_image_table_trains_and_saves_an_image_preprocessor(table_run):
    tmp, _ = table_run
    pre = json.loads((tmp / "run" / "preprocessor.json").read_text())
    assert pre["kind"] == "image" and (pre["height"], pre["width"], pre["channels"]) == (16, 16, 1)
    assert 0.3 < pre["mean"][0] < 0.7  # half dark (~50/255), half light (~200/255)
    final = json.loads((tmp / "run" / "final.json").read_text())
    assert final["test"]["shade"]["accuracy"] >= 0.9


def test_predict_and_evaluate_on_an_image_table(table_run, capsys):
    tmp, df = table_run
    (tmp / "new").mkdir()
    new = df[["path"]].assign(path=lambda d: "../data/" + d["path"])  # relative to the input CSV's folder
    new.to_csv(tmp / "new" / "rows.csv", index=False)
    out = tmp / "pred.csv"
    assert main(["predict", str(tmp / "run"), "--input", str(tmp / "new" / "rows.csv"), "--output", str(out)]) == 0
    pred = pd.read_csv(out)
    assert set(pred["shade"]) <= {"dark", "light"} and (pred["shade"] == df["shade"]).mean() >= 0.9
    assert np.allclose(pred[["shade_p_dark", "shade_p_light"]].sum(axis=1), 1, atol=1e-5)
    assert main(["evaluate", str(tmp / "run")]) == 0
    assert "shade" in capsys.readouterr().out


def test_size_and_channels_come_from_the_first_image(tmp_path):
    image_table(tmp_path, n=6)
    PIL.fromarray(np.zeros((20, 24, 3), np.uint8), "RGB").save(tmp_path / "img" / "0.png")
    pd.DataFrame({"path": ["img/0.png", "img/1.png"], "y": [0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    assert planned_spec(tmp_path / "t.csv", "path", None, None) == ImageSpec(3, 20, 24)
    assert planned_spec(tmp_path / "labels.csv", "path", None, None) == ImageSpec(3, 20, 24)  # 0.jpg is RGB
    assert planned_spec(tmp_path / "labels.csv", "path", [12, 10], 1) == ImageSpec(1, 12, 10)


@pytest.mark.parametrize("model", [{"name": "independent", "conv_channels": [4, 8]},
                                   {"name": "mmoe", "n_experts": 2, "expert_hidden": [8], "tower_hidden": [4]}])
def test_other_models_train_on_image_tables(tmp_path, model):
    image_table(tmp_path / "data", n=24)
    cfg = _config(tmp_path, _table_data(tmp_path / "data", image_size=[16, 16]), model)
    assert main(["train", cfg, "--out", str(tmp_path / "run")]) == 0
    assert main(["evaluate", str(tmp_path / "run"), "--split", "val"]) == 0


def test_multi_fashion_through_the_cli(fashion, tmp_path, capsys):
    cfg = _config(tmp_path, {"name": "multi-fashion", "path": str(fashion), "limit": 60},
                  {"name": "hard_sharing", "conv_channels": [4, 8], "hidden": [16], "head_hidden": [8]},
                  batch_size=32)
    assert main(["train", cfg, "--out", str(tmp_path / "run")]) == 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert set(final["test"]) == {"left", "right"} and final["dataset"] == "multi-fashion"
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    assert "left" in capsys.readouterr().out
    # predict reads 36x36 composites saved as PNG files, named in the column `image`
    test = load_multi_fashion(fashion, limit=60).test
    for i in range(3):
        PIL.fromarray(test.inputs[i, 0].numpy(), "L").save(tmp_path / f"{i}.png")
    pd.DataFrame({"image": [f"{i}.png" for i in range(3)]}).to_csv(tmp_path / "in.csv", index=False)
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out.csv")]) == 0
    pred = pd.read_csv(tmp_path / "out.csv")
    assert len(pred) == 3 and {"left", "right", "left_p0", "right_p9"} <= set(pred.columns)


# ------------------------------------------------------------------------------------------ bad inputs
def _one_clean_line(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("multitask: "), err
    return err


@pytest.mark.parametrize("spoil, message", [
    (lambda d: (d / "img" / "4.png").unlink(), "row 5, column 'path': image file"),
    (lambda d: (d / "img" / "4.png").write_text("not a picture"), "row 5, column 'path': "),
])
def test_bad_image_files_exit_2_naming_file_and_row(tmp_path, capsys, spoil, message):
    image_table(tmp_path / "data", n=12)
    spoil(tmp_path / "data")
    code = main(["train", _config(tmp_path, _table_data(tmp_path / "data", image_size=[16, 16])),
                 "--out", str(tmp_path / "run")])
    err = _one_clean_line(capsys, code)
    assert message in err and "4.png" in err and "labels.csv" in err
    assert ("does not exist" in err) or ("is not an image" in err)


def test_predict_with_a_missing_image_exits_2(table_run, tmp_path, capsys):
    tmp, _ = table_run
    pd.DataFrame({"path": [str(tmp / "data" / "img" / "1.png"), "nowhere.png"]}).to_csv(tmp_path / "r.csv",
                                                                                        index=False)
    code = main(["predict", str(tmp / "run"), "--input", str(tmp_path / "r.csv"), "--output", str(tmp_path / "p.csv")])
    err = _one_clean_line(capsys, code)
    assert "row 2, column 'path'" in err and "nowhere.png does not exist" in err


@pytest.mark.parametrize("data, model, message", [
    ("fashion", {"name": "hard_sharing", "embedding_dim": 4},
     "model.embedding_dim: applies to table inputs only; hard_sharing on image inputs takes: conv_channels"),
    ("fashion", {"name": "mmoe", "filters": 3}, "model.filters: unknown field; model 'mmoe' takes: conv_channels"),
    ("fashion", {"name": "hard_sharing", "conv_channels": [0]}, "model: conv_channels: layer widths must be"),
    ("fashion", {"name": "hard_sharing", "conv_channels": [8, 8, 8, 8]}, "image size 36x36 is too small"),
    ({"name": "yeast", "limit": 100}, {"name": "hard_sharing", "conv_channels": [4]},
     "model.conv_channels: applies to image inputs only"),
    ({"name": "yeast", "image_size": [8, 8]}, None, "data.image_size: only an image table"),
    ({"name": "yeast", "image_column": "p"}, None, "data.image_column: only a table"),
    ("table", None, "data.features: an image table's only input is its image column"),
    ("table-small", None, "image size 4x4 is too small"),
    ("table-nocol", None, "image column 'picture' is not in the table"),
    ("fashion-file", None, "multi-fashion reads a folder"),
])
def test_config_rejects_mismatched_options_before_any_work(fashion, tmp_path, capsys, no_work, data, model,
                                                           message):
    image_table(tmp_path / "data", n=6)
    data = {"fashion": {"name": "multi-fashion", "path": str(fashion)},
            "fashion-file": {"name": "multi-fashion", "path": str(tmp_path / "data" / "labels.csv")},
            "table": _table_data(tmp_path / "data", features=["note"]),
            "table-small": _table_data(tmp_path / "data", image_size=[4, 4]),
            "table-nocol": _table_data(tmp_path / "data", image_column="picture")}[data] if isinstance(data, str) else data
    code = main(["train", _config(tmp_path, data, model), "--out", str(tmp_path / "run")])
    assert message in _one_clean_line(capsys, code)


# ------------------------------------------------------------------------------------------ install
def _fake_deb(path, files):
    """A .deb (ar archive) whose data.tar.xz holds `files` {path in package: bytes}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", buf.getvalue())]
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    path.write_bytes(out)


def test_install_unpacks_the_package_without_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MULTITASK_DATA", str(tmp_path / "home"))
    monkeypatch.setattr(debian, "SYSTEM_FASHION", tmp_path / "nowhere")
    files = {f"{debian.FASHION_DIR_IN_PACKAGE}/{f}": f.encode() for f in debian.FASHION_FILES}
    calls = []

    def fake_run(cmd, cwd=None, **kw):
        calls.append(cmd)
        _fake_deb(tmp_path / "pkg.deb", files)
        (tmp_path / "pkg.deb").rename(f"{cwd}/{debian.FASHION_PACKAGE}_1.0_all.deb")
        return type("Done", (), {"returncode": 0, "stderr": "", "stdout": ""})()

    monkeypatch.setattr(debian.subprocess, "run", fake_run)
    monkeypatch.setattr(debian.shutil, "which", lambda name: "/usr/bin/" + name)
    assert main(["data", "install", "multi-fashion"]) == 0
    assert calls == [["apt-get", "download", debian.FASHION_PACKAGE]]
    dest = tmp_path / "home" / "fashion-mnist"
    assert all((dest / f).read_bytes() == f.encode() for f in debian.FASHION_FILES)
    assert str(dest) in capsys.readouterr().out


def test_install_says_how_when_it_cannot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MULTITASK_DATA", str(tmp_path))
    monkeypatch.setattr(debian, "SYSTEM_FASHION", tmp_path / "nowhere")
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    err = _one_clean_line(capsys, main(["data", "install", "multi-fashion"]))
    assert "no apt-get" in err and "apt-get install dataset-fashion-mnist" in err
