"""Tasks from different datasets (data.name: sources), the sampling rules, and training from any iterable of
batches (a DataLoader with the library's collate)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from conftest import synthetic
from multitask import Equal, HardSharing, InputSchema, Trainer
from multitask.cli import main
from multitask.data.loading import EpochBatchSampler, RowsDataset, collate
from multitask.data.sampling import (Mixed, Proportional, RoundRobin, SourceBatches, Temperature, Uniform,
                                     epoch_generator, make_rule)
from multitask.data.sources import load_sources

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ generated tables
def _features(n, rng):
    return pd.DataFrame({"x1": rng.normal(size=n).round(3), "x2": rng.normal(size=n).round(3),
                         "color": rng.choice(["red", "green", "blue"], n)})


def write_sources(folder, n_action=300, n_caption=150, seed=0):
    """action.csv (task action, 3 classes) and caption.csv (topic, 3 classes; length, regression): the same
    feature columns x1, x2, color."""
    rng = np.random.default_rng(seed)
    a = _features(n_action, rng)
    a["action"] = np.where(a.x1 > 0.5, "run", np.where(a.x2 > 0, "walk", "sit"))
    c = _features(n_caption, rng)
    c["topic"] = np.where(c.color == "red", "sport", np.where(c.x2 > 0, "news", "art"))
    c["length"] = (3 * c.x1 + rng.normal(0, 0.3, n_caption) + 10).round(3)
    a.to_csv(folder / "action.csv", index=False)
    c.to_csv(folder / "caption.csv", index=False)
    return a, c


def sources_spec(folder):
    return {"action": {"name": "table", "path": str(folder / "action.csv"), "targets": {"action": "multiclass"}},
            "caption": {"name": "table", "path": str(folder / "caption.csv"),
                        "targets": {"topic": "multiclass", "length": "regression"}}}


def raw_config(folder, sampling="proportional", **trainer):
    return {"data": {"name": "sources", "sources": sources_spec(folder), "sampling": sampling},
            "model": {"name": "hard_sharing", "hidden": [32], "head_hidden": [16]},
            "trainer": {"epochs": 3, "batch_size": 32, "lr": 3e-3, "progress": False, **trainer}}


def write_config(folder, raw, name="c.yaml"):
    p = folder / name
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(p)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    write_sources(folder)
    return load_sources(sources_spec(folder), sampling="round_robin")


def _model(tasks, schema, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return HardSharing.tabular(tasks, schema, hidden=(16,), head_hidden=(8,), dropout=dropout)


def _plan(n_rows=(100, 50, 30), rule="round_robin", temperature=None):
    """A plan over rows of three sources a, b, c (values = row numbers, no tasks needed for sampling)."""
    from multitask.data import MultiTaskData

    n = sum(n_rows)
    data = MultiTaskData(torch.arange(n, dtype=torch.float32)[:, None], {})
    return SourceBatches(data, dict(zip("abc", n_rows)), rule, temperature)


def _sources_of(plan, batches):
    return [plan.source_of_row[idx].unique().tolist() for idx in batches]


# ------------------------------------------------------------------------------------------ sampling rules
def test_round_robin_takes_the_sources_in_turn_with_exact_counts():
    plan = _plan()
    batches = list(plan.epoch(16, epoch_generator(0, 0)))
    assert len(batches) == math.ceil(180 / 16) == 12  # the epoch: ceil(N / batch_size) steps
    assert _sources_of(plan, batches) == [[0], [1], [2]] * 4
    assert plan.log()["steps_per_source"] == {"a": 4, "b": 4, "c": 4}
    assert plan.log()["rows_per_source"] == {"a": 64, "b": 16 + 16 + 16 + 2, "c": 16 + 14 + 16 + 14}


def test_each_source_is_a_stream_of_shuffled_passes():
    """A source's batches (whichever steps pick it) cut one shuffled pass after another: every row of the
    source once per pass, the last batch of a pass shorter."""
    plan = _plan(rule="round_robin")
    batches = list(plan.epoch(16, epoch_generator(3, 1)))
    c_batches = [b for b in batches if plan.source_of_row[b[0]] == 2]
    assert [len(b) for b in c_batches] == [16, 14, 16, 14]
    assert sorted(torch.cat(c_batches[:2]).tolist()) == list(range(150, 180))
    assert sorted(torch.cat(c_batches[2:]).tolist()) == list(range(150, 180))
    assert not torch.equal(torch.cat(c_batches[:2]), torch.cat(c_batches[2:]))  # a new shuffle per pass


@pytest.mark.parametrize("rule, expected", [
    (Uniform(), [1 / 3, 1 / 3, 1 / 3]),
    (Proportional(), [100 / 180, 50 / 180, 30 / 180]),
    (Temperature(2.0), [v / sum(math.sqrt(n) for n in (100, 50, 30)) for v in map(math.sqrt, (100, 50, 30))]),
    (Temperature(0.5), [n ** 2 / sum(m ** 2 for m in (100, 50, 30)) for n in (100, 50, 30)]),
])
def test_random_rules_draw_sources_with_their_probabilities(rule, expected):
    p = rule.probabilities([100, 50, 30])
    assert torch.allclose(p, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    draws = 30_000
    counts = torch.bincount(rule.choose([100, 50, 30], draws, torch.Generator().manual_seed(1)), minlength=3)
    exp = torch.tensor(expected, dtype=torch.float64) * draws
    chi2 = float(((counts.double() - exp) ** 2 / exp).sum())
    assert chi2 < 13.82  # the 99.9% quantile of chi-square with 2 degrees of freedom


def test_random_rules_alternate_one_source_per_step_over_a_whole_epoch():
    plan = _plan(rule="proportional")
    batches = list(plan.epoch(8, epoch_generator(0, 0)))
    assert len(batches) == math.ceil(180 / 8)
    assert all(len(s) == 1 for s in _sources_of(plan, batches))
    steps = plan.log()["steps_per_source"]
    assert sum(steps.values()) == len(batches) and steps["a"] > steps["c"]


def test_mixed_sees_every_row_once_in_batches_of_every_source():
    plan = _plan(rule="mixed")
    batches = list(plan.epoch(16, epoch_generator(0, 0)))
    assert len(batches) == 12
    assert sorted(torch.cat(batches).tolist()) == list(range(180))
    assert plan.log()["rows_per_source"] == {"a": 100, "b": 50, "c": 30}
    assert sum(len(s) > 1 for s in _sources_of(plan, batches)) >= 10  # batches mix the sources


@pytest.mark.parametrize("rule", ["uniform", "proportional", "temperature", "round_robin", "mixed"])
def test_the_order_depends_on_seed_and_epoch_only(rule):
    def order(seed, epoch):
        return torch.cat(list(_plan(rule=rule).epoch(16, epoch_generator(seed, epoch)))).tolist()

    assert order(0, 2) == order(0, 2)
    assert order(0, 2) != order(0, 3) and order(0, 2) != order(1, 2)


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="sampling must be one of"):
        make_rule("random")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        make_rule("temperature", 0)
    assert isinstance(make_rule("mixed"), Mixed) and isinstance(make_rule("round_robin"), RoundRobin)


# ------------------------------------------------------------------------------------------ the stacked data
def test_each_row_is_labelled_for_its_own_sources_tasks_only(bundle):
    rows = bundle.info["rows"]
    n_action, n_caption = rows["action"]["train"], rows["caption"]["train"]
    assert len(bundle.train) == n_action + n_caption and (n_action, n_caption) == (210, 105)
    y = bundle.train.targets
    assert (y["action"][:n_action] >= 0).all() and (y["action"][n_action:] == -1).all()
    assert (y["topic"][:n_action] == -1).all() and (y["topic"][n_action:] >= 0).all()
    assert torch.isnan(y["length"][:n_action]).all() and not torch.isnan(y["length"][n_action:]).any()
    assert [t.name for t in bundle.tasks] == ["action", "topic", "length"]
    assert bundle.preprocessor.categorical == ["color"] and bundle.preprocessor.numeric == ["x1", "x2"]


def test_a_tasks_loss_comes_from_its_own_sources_rows_only(bundle):
    tasks = {t.name: t for t in bundle.tasks}
    model = _model(bundle.tasks, bundle.preprocessor.schema)
    trainer = Trainer(model, bundle.tasks, Equal(bundle.tasks), lr=1e-2, progress=False)
    idx = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0))[:64]
    batch = bundle.train.subset(idx)
    with torch.no_grad():
        model.train()
        out = model(batch.inputs)
    losses = trainer.train_step(batch.inputs, batch.targets)
    for t in ("action", "topic", "length"):
        own = tasks[t].label_mask(batch.targets[t])
        assert 0 < int(own.sum()) < 64
        alone = tasks[t].loss(out[t][own], batch.targets[t][own])
        assert float(losses[t].detach()) == pytest.approx(float(alone), rel=1e-6)


def test_a_step_from_another_source_leaves_a_tasks_own_parameters_untouched(bundle):
    model = _model(bundle.tasks, bundle.preprocessor.schema)
    trainer = Trainer(model, bundle.tasks, Equal(bundle.tasks), lr=1e-2, weight_decay=0.1, optimizer="adamw",
                      progress=False)
    n_action = bundle.info["rows"]["action"]["train"]
    both = bundle.train.subset(torch.arange(0, len(bundle.train), 2))
    trainer.train_step(both.inputs, both.targets)  # rows of both sources: every parameter has Adam moments
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    caption = bundle.train.subset(torch.arange(n_action, n_action + 64))
    trainer.train_step(caption.inputs, caption.targets)
    action_own = {id(p) for p in model.task_parameters("action")}
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (id(p) not in action_own), n  # only the action head stays as it was


def test_evaluate_scores_each_task_on_its_own_sources_rows(bundle):
    model = _model(bundle.tasks, bundle.preprocessor.schema)
    trainer = Trainer(model, bundle.tasks, epochs=2, batch_size=32, progress=False)
    trainer.fit(bundle.training_data())
    whole = trainer.evaluate(bundle.test)
    n_action = bundle.info["rows"]["action"]["test"]
    own = {"action": torch.arange(n_action), "topic": torch.arange(n_action, len(bundle.test))}
    for t, rows in own.items():
        sub = bundle.test.subset(rows)
        out = trainer.outputs(sub.inputs)[t]
        task = trainer.tasks[t]
        assert whole["metrics"][t] == pytest.approx(task.evaluate(out, sub.targets[t]))
        assert whole["loss"][t] == pytest.approx(float(task.loss(out, sub.targets[t])), rel=1e-6)


def test_trainer_logs_steps_per_source_and_task_and_resumes_bit_identically(bundle, tmp_path):
    plan_of = lambda: SourceBatches(bundle.train, {n: r["train"] for n, r in bundle.info["rows"].items()},
                                    "temperature", 3.0)

    def trainer(run_dir, epochs):
        return Trainer(_model(bundle.tasks, bundle.preprocessor.schema, dropout=0.2), bundle.tasks,
                       epochs=epochs, batch_size=32, progress=False, run_dir=run_dir)

    history = trainer(tmp_path / "straight", 4).fit(plan_of())
    steps = math.ceil(len(bundle.train) / 32)
    for r in history:
        assert r["steps"] == steps and sum(r["steps_per_source"].values()) == steps
        assert r["steps_per_task"] == {"action": r["steps_per_source"]["action"],
                                       "topic": r["steps_per_source"]["caption"],
                                       "length": r["steps_per_source"]["caption"]}
    assert len({json.dumps(r["steps_per_source"]) for r in history}) > 1  # drawn afresh each epoch
    trainer(tmp_path / "resumed", 2).fit(plan_of())
    resumed = trainer(tmp_path / "resumed", 4).fit(plan_of(), resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["steps_per_source"] for r in resumed] == [r["steps_per_source"] for r in history]


def test_load_sources_refuses_different_feature_columns(tmp_path):
    a, c = write_sources(tmp_path)
    c.assign(mood="calm").drop(columns=["x2"]).to_csv(tmp_path / "caption.csv", index=False)
    with pytest.raises(ValueError, match=r"only in action.csv: \['x2'\]; only in caption.csv: \['mood'\]"):
        load_sources(sources_spec(tmp_path))


# ------------------------------------------------------------------------------------------ any iterable of batches
def test_a_dataloader_trains_exactly_as_the_in_memory_batcher():
    tasks, data = synthetic(384, missing=0.3)

    def fit(train):
        torch.manual_seed(0)
        model = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,), dropout=0.1)
        tr = Trainer(model, tasks, epochs=2, batch_size=48, seed=5, progress=False)
        return tr, tr.fit(train)

    loader = DataLoader(RowsDataset(data), batch_sampler=EpochBatchSampler(len(data), 48, seed=5),
                        collate_fn=collate, generator=torch.Generator())
    a, ha = fit(data)
    b, hb = fit(loader)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert hb[0]["steps"] == 8


def test_a_plain_list_of_batches_is_trained_on_and_a_bad_batch_is_named():
    tasks, data = synthetic(128)
    batches = [(data.inputs[i:i + 32], {t: y[i:i + 32] for t, y in data.targets.items()}) for i in range(0, 128, 32)]
    tr = Trainer(_model(tasks, InputSchema(8)), tasks, epochs=2, progress=False)
    history = tr.fit(batches)
    assert [r["steps"] for r in history] == [4, 4]
    batches[2][1]["cls"] = batches[2][1]["cls"] + 10  # class indices out of range
    with pytest.raises(ValueError, match="training batch 3"):
        Trainer(_model(tasks, InputSchema(8)), tasks, epochs=1, progress=False).fit(batches)
    once = iter(batches[:2])
    with pytest.raises(ValueError, match="epoch 2: the training batches are empty"):
        Trainer(_model(tasks, InputSchema(8)), tasks, epochs=2, progress=False).fit(once)


def test_the_dataloader_example_runs_and_matches_the_in_memory_batcher():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "dataloader.py")], capture_output=True,
                         text=True, check=True, timeout=300).stdout.splitlines()
    metrics = eval(out[0], {"nan": float("nan")})
    assert metrics["price"]["r2"] > 0.9 and metrics["clicked"]["auc"] > 0.9
    assert out[1] == "same weights as the in-memory batcher: True"


# ------------------------------------------------------------------------------------------ through the CLI
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    a, c = write_sources(folder)
    cfg = write_config(folder, raw_config(folder, "round_robin", epochs=8, lr=1e-2))
    assert main(["train", cfg, "--out", str(folder / "run")]) == 0
    return folder, a, c


def test_train_logs_round_robin_steps_and_saves_every_codec(cli_run):
    folder, *_ = cli_run
    records = [json.loads(x) for x in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = math.ceil((210 + 105) / 32)
    assert all(r["steps_per_source"] == {"action": 5, "caption": 5} and r["steps"] == steps for r in records)
    assert all(r["steps_per_task"] == {"action": 5, "topic": 5, "length": 5} for r in records)
    codecs = json.loads((folder / "run" / "targets.json").read_text())
    assert [c["name"] for c in codecs] == ["action", "topic", "length"]
    final = json.loads((folder / "run" / "final.json").read_text())
    assert final["test"]["action"]["accuracy"] > 0.7 and final["test"]["topic"]["accuracy"] > 0.7
    assert final["test"]["length"]["r2"] > 0.5


def test_evaluate_and_predict_a_sources_run(cli_run, capsys):
    folder, a, c = cli_run
    report = folder / "eval.json"
    assert main(["evaluate", str(folder / "run"), "--json", str(report)]) == 0
    assert set(json.loads(report.read_text())["metrics"]) == {"action", "topic", "length"}
    pd.concat([a, c])[["x1", "x2", "color"]].head(40).to_csv(folder / "rows.csv", index=False)
    assert main(["predict", str(folder / "run"), "--input", str(folder / "rows.csv"),
                 "--output", str(folder / "p.csv")]) == 0
    pred = pd.read_csv(folder / "p.csv")
    assert set(pred["action"]) <= {"run", "walk", "sit"} and set(pred["topic"]) <= {"sport", "news", "art"}
    assert 5 < pred["length"].mean() < 15  # original units (the column is around 10)


def _bad(edit):
    def apply(folder):
        raw = raw_config(folder)
        edit(raw, folder)
        return raw
    return apply


@pytest.mark.parametrize("edit, message", [
    (lambda r, f: r["data"].update(sampling="random"), "data.sampling: Input should be 'uniform'"),
    (lambda r, f: r["data"].update(sampling="temperature", temperature=0),
     "data.temperature: Input should be greater than 0"),
    (lambda r, f: r["data"].update(temperature=2), "data.temperature: only sampling: temperature uses it"),
    (lambda r, f: r["data"]["sources"]["action"].update(name="yeast"),
     "data.sources.action.name: a source must be a table (name: table), got 'yeast'"),
    (lambda r, f: r["data"]["sources"]["caption"].update(path=str(f / "nope.csv")),
     "data.sources.caption.path: "),
    (lambda r, f: pd.read_csv(f / "caption.csv").assign(mood=1).to_csv(f / "caption.csv", index=False),
     "have different feature columns: only in action.csv: none; only in caption.csv: ['mood']"),
    (lambda r, f: r["data"]["sources"]["caption"]["targets"].update(action="multiclass"),
     "task 'action' is in both sources 'action' and 'caption'"),
    (lambda r, f: r.update(tasks={"mood": {}}), "tasks.mood: unknown task for dataset 'sources'"),
    (lambda r, f: r["data"]["sources"]["caption"].update(targets={"colour": "multiclass"}),
     "data.sources: source 'caption': "),
    (lambda r, f: r["data"].update(path=str(f / "action.csv")), "data.path: with data.name: sources"),
    (lambda r, f: r["data"].update(sources={}), "data.sources: name at least one source"),
    (lambda r, f: r["data"]["sources"]["action"].update(split={"val_fraction": 0.5, "test_fraction": 0.5}),
     "data.sources.action.split: val_fraction 0.5 + test_fraction 0.5 leave no training rows"),
    (lambda r, f: r.update(data={"name": "table", "path": str(f / "action.csv"), "targets": {"action": None},
                                 "sampling": "uniform"}),
     "data.sampling: only tasks from several sources (data.name: sources) take it"),
])
def test_bad_sources_configs_exit_2_with_one_line_and_train_nothing(tmp_path, capsys, edit, message):
    write_sources(tmp_path)
    raw = raw_config(tmp_path)
    edit(raw, tmp_path)
    code = main(["train", write_config(tmp_path, raw), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_tasks_section_can_drop_a_whole_source(tmp_path):
    write_sources(tmp_path)
    raw = raw_config(tmp_path, "uniform", epochs=1)
    raw["tasks"] = {"topic": {}}
    assert main(["train", write_config(tmp_path, raw), "--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["steps_per_source"] == {"caption": math.ceil(105 / 32)}
    assert [t["name"] for t in json.loads((tmp_path / "run" / "tasks.json").read_text())] == ["topic"]


# ------------------------------------------------------------------------------------------ UberNet accumulation
def test_accumulation_steps_a_part_with_the_sample_weighted_mean_gradient():
    """Shared and task thresholds of 64 rows with batches of 32: nothing moves after the first step; after
    the second every part has moved by -lr x the mean of the two batches' gradients (SGD, no momentum)."""
    tasks, data = synthetic(64)
    model = _model(tasks, InputSchema(8))
    start = copy_params(model)
    tr = Trainer(model, tasks, optimizer="sgd", momentum=0.0, lr=0.1, progress=False,
                 accumulate_shared=64, accumulate_task=64)
    halves = [data.subset(torch.arange(0, 32)), data.subset(torch.arange(32, 64))]
    grads = []
    for h in halves:  # the gradients of the summed losses (Equal) at the starting weights
        ref = _model(tasks, InputSchema(8))
        out = ref(h.inputs)
        total = sum(t.loss(out[t.name], h.targets[t.name]) for t in tasks)
        grads.append(torch.autograd.grad(total, list(ref.parameters())))
    tr.train_step(halves[0].inputs, halves[0].targets)
    assert all(torch.equal(a, b) for a, b in zip(start, model.parameters()))
    tr.train_step(halves[1].inputs, halves[1].targets)
    for p0, p, g1, g2 in zip(start, model.parameters(), *grads):
        assert torch.allclose(p, p0 - 0.1 * (g1 + g2) / 2, atol=1e-6)
    assert tr.accumulator.updates == {"shared": 1, "reg": 1, "bin": 1, "cls": 1}


def _cascade(tasks, seed=0):
    from multitask.models.cascade import Cascade

    torch.manual_seed(seed)
    return Cascade.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))


def test_accumulation_steps_a_group_on_the_rows_labelled_for_any_of_its_tasks():
    """A cascade reg -> bin -> cls: head reg is the group (reg, bin, cls), head bin the group (bin, cls), head cls
    cls's own. Thresholds 40 (shared, groups) and 20 (tasks), SGD without momentum. Batch A (32 rows): reg
    labelled, bin on 10 rows, cls on none; batch B (32 rows): all labelled. After A nothing moves (shared 32,
    group reg 32, group bin 10 rows, cls 0). After B the shared part and head reg step with (32 gA + 32 gB) / 64,
    head bin with (10 gA + 32 gB) / 42 (A's rows labelled for bin or cls), head cls with gB alone."""
    tasks, data = synthetic(64, seed=5)
    y = {t: v.clone() for t, v in data.targets.items()}
    y["bin"][10:32] = float("nan")
    y["cls"][:32] = -1
    model = _cascade(tasks)
    assert set(map(tuple, model.group_parameters())) == {("reg", "bin", "cls"), ("bin", "cls")}
    start = copy_params(model)
    tr = Trainer(model, tasks, optimizer="sgd", momentum=0.0, lr=0.1, progress=False,
                 accumulate_shared=40, accumulate_task=20)
    batches = [(data.inputs[a:b], {t: v[a:b] for t, v in y.items()}) for a, b in ((0, 32), (32, 64))]
    grads = []
    for x, yy in batches:  # the gradients of the summed losses (Equal) of the labelled tasks, at the start
        ref = _cascade(tasks)
        out = ref(x)
        total = sum(t.loss(out[t.name], yy[t.name]) for t in tasks if bool(t.label_mask(yy[t.name]).any()))
        grads.append([torch.zeros_like(p) if g is None else g
                      for p, g in zip(ref.parameters(), torch.autograd.grad(total, list(ref.parameters()),
                                                                           allow_unused=True))])
    tr.train_step(*batches[0])
    assert all(torch.equal(a, b) for a, b in zip(start, model.parameters()))
    # reg's and bin's own parts are empty here (their heads are groups); reg's reached 20 rows and "stepped"
    assert tr.accumulator.counts == {"shared": 32, "reg+bin+cls": 32, "bin+cls": 10, "reg": 0, "bin": 10,
                                     "cls": 0}
    tr.train_step(*batches[1])
    weights = {id(p): (10, 32) for p in model.task_heads["bin"].parameters()}
    weights.update({id(p): (0, 32) for p in model.task_heads["cls"].parameters()})
    for p0, p, ga, gb in zip(start, model.parameters(), *grads):
        wa, wb = weights.get(id(p), (32, 32))
        assert torch.allclose(p, p0 - 0.1 * (wa * ga + wb * gb) / (wa + wb), atol=1e-6)
    assert tr.accumulator.updates == {"shared": 1, "reg+bin+cls": 1, "bin+cls": 1, "reg": 2, "bin": 1, "cls": 1}


def test_accumulation_group_counts_rows_not_entries_and_old_states_load():
    """A group's and a multilabel task's counts are rows with any label (not labelled entries); a state saved
    without the group parts (before groups were accumulated) loads with those parts empty."""
    from multitask import Task
    from multitask.training.accumulation import PartAccumulator

    tasks = [Task("a", "multilabel", n_outputs=3), Task("b", "binary")]
    model = _cascade(tasks)
    tr = Trainer(model, tasks, progress=False, accumulate_shared=5)
    masks = {"a": torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool),
             "b": torch.tensor([False, False, False, True])}
    assert tr._labelled_rows(torch.zeros(4, 8), masks) == (4, {"a": 2, "b": 1, "a+b": 3})
    acc = PartAccumulator(model, ["a", "b"], 5, 5)
    acc.load_state_dict({"counts": {"shared": 2, "a": 1, "b": 0}, "sums": {"shared": [None] * 4, "a": [], "b": []},
                         "updates": {"shared": 3, "a": 1, "b": 1}})
    assert acc.counts == {"shared": 2, "a": 1, "b": 0, "a+b": 0} and acc.updates["a+b"] == 0


def copy_params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_accumulation_counts_each_tasks_own_samples_and_resumes_bit_identically(bundle, tmp_path):
    sizes = {n: r["train"] for n, r in bundle.info["rows"].items()}

    def trainer(run_dir, epochs):
        return Trainer(_model(bundle.tasks, bundle.preprocessor.schema), bundle.tasks, epochs=epochs, batch_size=32,
                       progress=False, run_dir=run_dir, accumulate_shared=32, accumulate_task=64)

    history = trainer(tmp_path / "straight", 3).fit(SourceBatches(bundle.train, sizes, "round_robin"))
    # 10 steps a epoch, 5 per source; action's batches hold 32 rows, caption's 32, 32, 32, 9, 32: each task
    # steps every 64 of its labelled rows (twice), the shared part every 32 rows (not after the 9-row batch)
    assert history[0]["updates_per_part"] == {"shared": 9, "action": 2, "topic": 2, "length": 2}
    trainer(tmp_path / "resumed", 1).fit(SourceBatches(bundle.train, sizes, "round_robin"))
    resumed = trainer(tmp_path / "resumed", 3).fit(SourceBatches(bundle.train, sizes, "round_robin"), resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["accumulator"]["counts"] == b["accumulator"]["counts"]
    assert [r["updates_per_part"] for r in resumed] == [r["updates_per_part"] for r in history]


def test_a_task_absent_from_a_step_keeps_its_balancer_row_and_optimiser_state():
    """Uncertainty's log-variance of a task without labels in the step, and Adam's moments of that row, stay as
    they were (the task's head too); the present task's row moves."""
    from multitask import Uncertainty

    tasks, data = synthetic(64, seed=3)
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
    balancer = Uncertainty(tasks)
    trainer = Trainer(model, tasks, balancer, batch_size=64, progress=False, lr=0.05)
    trainer.train_step(data.inputs, data.targets)  # every task present: Adam's moments become non-zero
    absent = dict(data.targets, reg=torch.full_like(data.targets["reg"], float("nan")))
    row = balancer.task_names.index("reg")
    before = balancer.log_vars.detach().clone()
    state = {k: v.clone() for k, v in trainer.optimizer.state[balancer.log_vars].items() if v.shape == before.shape}
    head = [p.detach().clone() for p in model.task_parameters("reg")]
    trainer.train_step(data.inputs, absent)
    after = balancer.log_vars.detach()
    assert after[row] == before[row]
    assert all(not torch.equal(after[i], before[i]) for i in range(len(tasks)) if i != row)
    for k, v in state.items():
        assert trainer.optimizer.state[balancer.log_vars][k][row] == v[row], k
    assert all(torch.equal(p, q) for p, q in zip(model.task_parameters("reg"), head))


def test_select_tasks_on_sources_is_refused_with_the_way_to_do_it(tmp_path):
    write_sources(tmp_path)
    bundle = load_sources(sources_spec(tmp_path))
    with pytest.raises(ValueError, match=r"load_sources\(\.\.\., tasks=\[\.\.\.\]\)"):
        bundle.select_tasks(["topic", "length"])
    assert load_sources(sources_spec(tmp_path), tasks=["topic", "length"]).info["rows"].keys() == {"caption"}


def test_a_source_with_a_byte_order_mark_and_label_errors_name_their_source(tmp_path):
    a, c = write_sources(tmp_path)
    (tmp_path / "caption.csv").write_text("\ufeff" + (tmp_path / "caption.csv").read_text(), encoding="utf-8")
    bundle = load_sources(sources_spec(tmp_path))  # the mark is not part of the first column's name
    assert {"topic", "length", "action"} == {t.name for t in bundle.tasks}
    c.loc[c.index[-3:], "topic"] = "weather"
    c["fold"] = ["train"] * (len(c) - 13) + ["val"] * 10 + ["test"] * 3
    c.to_csv(tmp_path / "caption.csv", index=False)
    spec = sources_spec(tmp_path)
    spec["caption"]["split"] = {"column": "fold"}
    spec["caption"]["features"] = ["x1", "x2", "color"]
    spec["action"]["features"] = ["x1", "x2", "color"]
    with pytest.raises(ValueError, match=r"source 'caption' \(.*caption.csv\): target 'topic': 3 rows hold labels"):
        load_sources(spec)
