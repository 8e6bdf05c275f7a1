"""Every bad input is a clean error: exit 2, one line on stderr naming the field or file, no traceback,
and no work done before the error (no data read, no baseline trained)."""
import json

import pytest
import torch
import yaml

from multitask import experiment
from multitask.cli import main

YEAST = {"data": {"name": "yeast", "limit": 300}, "model": {"name": "hard_sharing", "hidden": [8], "head_hidden": [4]},
         "balancer": {"name": "equal"}, "trainer": {"epochs": 1, "batch_size": 64, "progress": False}}


def _write(tmp_path, raw, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def _one_clean_line(capsys, code, expected=2):
    err = capsys.readouterr().err
    assert code == expected, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("multitask: "), err
    return err


def _patch(raw, dotted, value):
    raw = json.loads(json.dumps(raw))
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return raw


@pytest.mark.parametrize("dotted, value, message", [
    ("balancer", {"name": "mgda", "mode": "sideways"}, "balancer: MGDA: mode must be one of"),
    ("trainer.monitor", "class1.rmse", "trainer.monitor: 'class1.rmse' is not available"),
    ("model.hidden", [-4], "model: hidden: layer widths must be integers >= 1"),
    ("model", {"name": "mmoe", "n_experts": 0}, "model: n_experts must be an integer >= 1"),
    ("model.dropout", 2.0, "model: dropout must be a probability in [0, 1)"),
    ("balancer", {"name": "cagrad", "c": -5}, "balancer: cagrad: c must be >= 0"),
    ("balancer", {"name": "dwa", "temperature": 0}, "balancer: dwa: temperature must be > 0"),
    ("trainer.device", "tpu9", "trainer.device: 'tpu9' is not a device name"),
    ("trainer.lr", float("inf"), "trainer.lr: Input should be a finite number"),
    ("trainer.lr", "1e400", "trainer.lr: Input should be a finite number"),
    ("trainer.epochs", True, "trainer.epochs: expected a number, got the boolean True"),
    ("model.head_hidden", [True], "model.head_hidden"),
    ("balancer", {"name": "mgda", "every": 2.5}, "balancer.every"),
    ("balancer", {"name": "cagrad", "c": float("nan")}, "balancer.c: Input should be a finite number"),
    ("data.val_fraction", 0.75, "data.val_fraction: 0.75 overlaps the 0.3 of yeast held out for test"),
    ("data.val_fraction", 0.001, "data.val_fraction: 0.001 of 300 rows and 0.3 for test leaves 210 training and 0 "
                                 "validation rows"),
    ("trainer.nonfinite", "ignore", "trainer.nonfinite: Input should be 'raise' or 'skip'"),
])
def test_bad_option_is_refused_before_any_work(tmp_path, capsys, no_work, dotted, value, message):
    raw = _patch({**YEAST, "baselines": "auto"}, dotted, value)
    code = main(["train", _write(tmp_path, raw), "--out", str(tmp_path / "run")])
    err = _one_clean_line(capsys, code)
    assert message in err
    assert not (tmp_path / "run" / "baseline").exists()  # the baseline did not train first


def test_cuda_without_cuda_is_refused(tmp_path, capsys, no_work):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", _write(tmp_path, _patch(YEAST, "trainer.device", "cuda")), "--out", str(tmp_path / "r")])
    assert "CUDA is not available here" in _one_clean_line(capsys, code)


def test_config_file_that_is_not_text_or_a_file(tmp_path, capsys):
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\xff\xfe\x00data: \x81\x82")
    assert "is not UTF-8 text" in _one_clean_line(capsys, main(["train", str(binary)]))
    assert "is a directory" in _one_clean_line(capsys, main(["train", str(tmp_path)]))
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    assert "must be a mapping of sections" in _one_clean_line(capsys, main(["train", str(listed)]))


def test_usage_errors_are_one_line(capsys):
    assert "the following arguments are required" in _one_clean_line(capsys, _exit_code(["train"]))
    assert "invalid choice" in _one_clean_line(capsys, _exit_code(["evaluate", "x", "--split", "dev"]))


def _exit_code(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.mark.parametrize("kind", ["directory", "empty", "binary", "wrong columns", "header only"])
def test_bad_data_files(tmp_path, capsys, kind):
    path = tmp_path / "yeast.csv"
    if kind == "directory":
        path = tmp_path / "folder"
        path.mkdir()
    elif kind == "empty":
        path.write_text("")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "wrong columns":
        path.write_text("a,b,c\n1,2,3\n4,5,6\n")
    else:
        path.write_text(",".join(f"Att{i}" for i in range(1, 104)) + "\n")
    raw = _patch(YEAST, "data.path", str(path))
    err = _one_clean_line(capsys, main(["train", _write(tmp_path, raw), "--out", str(tmp_path / "run")]))
    assert str(path) in err or "data" in err, err


def test_out_under_a_regular_file(tmp_path, capsys, no_work):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _one_clean_line(capsys, main(["train", _write(tmp_path, YEAST), "--out", str(blocker / "run")]))
    assert f"{blocker} is a file, not a directory" in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small finished run (with baselines) that the evaluate / predict checks read."""
    tmp = tmp_path_factory.mktemp("trained")
    raw = {**YEAST, "baselines": "auto", "trainer": {**YEAST["trainer"], "epochs": 2}}
    assert main(["train", _write(tmp, raw), "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def _copy_run(trained, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(trained, dst)
    return dst


@pytest.mark.parametrize("damage, message", [
    ("truncate", "the file is truncated or not a PyTorch checkpoint"),
    ("pickle", "refuses to load"),
    ("missing key", "does not fit this model (missing: "),
    ("wrong shape", "shape differs (saved vs model)"),
    ("not a checkpoint", "is not a multitask checkpoint"),
])
def test_unreadable_checkpoints(trained, tmp_path, capsys, damage, message):
    run = _copy_run(trained, tmp_path)
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif damage == "pickle":
            torch.save({"model": state["model"], "hook": print}, path)
        elif damage == "missing key":
            state["model"].pop(next(iter(state["model"])))
            torch.save(state, path)
        elif damage == "wrong shape":
            key = next(k for k in state["model"] if k.endswith("weight"))
            state["model"][key] = torch.zeros(3, 3)
            torch.save(state, path)
        else:
            torch.save({"something": torch.ones(1)}, path)
    err = _one_clean_line(capsys, main(["evaluate", str(run)]))
    assert message in err and "weights_only" not in err


@pytest.mark.parametrize("kind, message", [
    ("empty", "is empty"),
    ("header only", "has a header but no rows"),
    ("binary", "--input"),
    ("directory", "is a directory, not a CSV file"),
    ("missing", "does not exist"),
])
def test_predict_refuses_bad_inputs(trained, tmp_path, capsys, kind, message):
    src = tmp_path / "in.csv"
    if kind == "empty":
        src.write_text("")
    elif kind == "header only":
        src.write_text(",".join(f"Att{i}" for i in range(1, 104)) + "\n")
    elif kind == "binary":
        src.write_bytes(b"\x00\xff\x81" * 300)
    elif kind == "directory":
        src = tmp_path
    else:
        src = tmp_path / "nothing.csv"
    code = main(["predict", str(trained), "--input", str(src), "--output", str(tmp_path / "out.csv")])
    assert message in _one_clean_line(capsys, code)


def test_predict_output_folder_must_exist(trained, tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text(",".join(f"Att{i}" for i in range(1, 104)) + "\n" + ",".join(["0.1"] * 103) + "\n")
    code = main(["predict", str(trained), "--input", str(src), "--output", str(tmp_path / "no" / "out.csv")])
    assert "does not exist" in _one_clean_line(capsys, code)
    assert main(["predict", str(trained), "--input", str(src), "--output", str(tmp_path / "out.csv")]) == 0


def test_evaluate_refuses_what_is_not_a_run(tmp_path, capsys):
    assert "does not exist" in _one_clean_line(capsys, main(["evaluate", str(tmp_path / "nothing")]))
    assert "config.yaml is missing" in _one_clean_line(capsys, main(["evaluate", str(tmp_path)]))


# ------------------------------------------------------------------------------------------ fuzzing
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

WEIRD = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.sampled_from([0, -1, 1, 2**63, -2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "auto", "none", "cuda", "cpu", "loss", "1e400", ".inf", "class1.auc", "mgda", "mmoe"]),
    st.lists(st.one_of(st.integers(-3, 70), st.text(max_size=3), st.floats()), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
FIELDS = st.sampled_from([
    "data", "data.name", "data.path", "data.val_fraction", "data.limit", "data.seed", "tasks", "tasks.class1",
    "tasks.class1.importance", "tasks.class1.metrics", "model", "model.name", "model.hidden", "model.head_hidden",
    "model.dropout", "model.embedding_dim", "model.n_experts", "balancer", "balancer.name", "balancer.mode",
    "balancer.every", "balancer.normalize", "balancer.c", "balancer.constraints", "trainer", "trainer.epochs",
    "trainer.batch_size", "trainer.lr", "trainer.optimizer", "trainer.momentum", "trainer.scheduler",
    "trainer.gamma", "trainer.grad_clip", "trainer.patience", "trainer.monitor", "trainer.device",
    "trainer.seed", "trainer.nonfinite", "trainer.max_skips", "baselines", "extra_section",
])


class _WouldTrain(BaseException):  # not an Exception: the CLI must not catch it
    pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(FIELDS, WEIRD), min_size=1, max_size=3))
def test_fuzzed_configs_fail_cleanly_or_are_valid(tmp_path, monkeypatch, capsys, edits):
    """Malformed configs: exit 2 with one line and no traceback; a config that passes validation gets as far
    as training (stopped there) without any other error on the way (data loading included)."""
    def stop(*a, **k):
        raise _WouldTrain
    monkeypatch.setattr(experiment, "train_one", stop)
    raw = YEAST
    for dotted, value in edits:
        try:
            raw = _patch(raw, dotted, value)
        except (AttributeError, TypeError):  # a parent was replaced by a scalar: set the whole section
            raw = {**raw, dotted.split(".")[0]: value}
    path = tmp_path / "fuzz.yaml"
    try:
        path.write_text(yaml.safe_dump(raw))
    except yaml.YAMLError:
        return
    try:
        code = main(["train", str(path), "--out", str(tmp_path / "run"), "--overwrite"])
    except _WouldTrain:
        return
    _one_clean_line(capsys, code)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.one_of(
    st.sampled_from(["train", "evaluate", "predict", "data", "methods", "--out", "--set", "--resume", "--split",
                     "--checkpoint", "--input", "--output", "--tasks", "--json", "install", "yeast", "best", "val",
                     "trainer.epochs=0", "x=", "=", "/", "/dev/null", ".", "-", "--"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)),
    min_size=1, max_size=6))
def test_fuzzed_command_lines_fail_cleanly(tmp_path, monkeypatch, capsys, argv):
    """Random command lines in an empty scratch directory (so no config or run exists and nothing trains):
    exit 0 or 2, and errors on one line. `data install` is left out (it downloads)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    monkeypatch.chdir(scratch)
    if "data" in argv or "install" in argv:
        return
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors and --help
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1, err
