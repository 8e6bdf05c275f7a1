"""Diagnostics: TAG lookahead affinity and gradient cosines against independent computations, conflict
frequency by hand, no effect on training, resume, the file format and the YAML section."""
import copy
import json

import numpy as np
import pytest
import torch

from conftest import synthetic
from multitask import BALANCERS, HardSharing, InputSchema, Trainer
from multitask.diagnostics import FILE, DiagnosticsCallback, read_diagnostics, records_to_data


def _model(tasks, dropout=0.0, batch_norm=False):
    torch.manual_seed(0)
    return HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,), dropout=dropout,
                               batch_norm=batch_norm)


def _grads(model, tasks, data, wrt):
    """Per-task gradients (flattened) at the model's current parameters, by plain torch.autograd."""
    out = model(data.inputs)
    rows = []
    for t in tasks:
        g = torch.autograd.grad(t.loss(out[t.name], data.targets[t.name]), wrt(model), retain_graph=True,
                                allow_unused=True)
        rows.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).double()
                               for x, p in zip(g, wrt(model))]))
    return torch.stack(rows)


def _cos(G):
    n = G.norm(dim=1)
    return ((G @ G.T) / torch.outer(n, n)).numpy()


def _one_step(tasks, data, balancer, tmp_path, **cb):
    model = _model(tasks)
    start = copy.deepcopy(model)
    trainer = Trainer(model, tasks, balancer, epochs=1, batch_size=len(data), lr=0.05, progress=False,
                      run_dir=tmp_path)
    trainer.fit(data, callbacks=[DiagnosticsCallback(**cb)])
    return start, read_diagnostics(tmp_path)


def test_tag_affinity_equals_a_hand_computed_lookahead(tmp_path):
    tasks, data = synthetic(n=256)
    start, D = _one_step(tasks, data, BALANCERS["equal"](tasks), tmp_path, every=None, affinity_every=1, lr=0.3)
    assert list(D.affinity_steps) == [1]
    shared = lambda m: list(m.shared_parameters())
    G = _grads(start, tasks, data, shared)
    with torch.no_grad():
        base = {t.name: float(t.loss(start(data.inputs)[t.name], data.targets[t.name])) for t in tasks}
    Z = np.zeros((3, 3))
    for i in range(3):
        moved = copy.deepcopy(start)
        offset = 0
        with torch.no_grad():
            for p in moved.shared_parameters():
                p -= 0.3 * G[i, offset:offset + p.numel()].view_as(p).float()
                offset += p.numel()
            out = moved(data.inputs)
        for j, t in enumerate(tasks):
            Z[i, j] = 1 - float(t.loss(out[t.name], data.targets[t.name])) / base[t.name]
    assert np.allclose(D.affinity[0], Z, atol=1e-5)
    assert (np.diag(Z) > 0).all()  # a task's own step lowers its loss: the computation is not trivially zero


@pytest.mark.parametrize("name,mode", [("equal", "parameters"), ("mgda", "parameters"), ("graddrop", "parameters"),
                                       ("mgda", "features"), ("equal", "features")])
def test_cosines_equal_independent_autograd(tmp_path, name, mode):
    tasks, data = synthetic(n=256)
    options = {} if name == "equal" else {"mode": mode}
    start, D = _one_step(tasks, data, BALANCERS[name](tasks, **options), tmp_path, every=1, affinity_every=None,
                         mode=mode if name == "equal" else "auto")
    if mode == "features":
        def rep_grads():
            z = start.shared(data.inputs)
            out = start.heads(z, [t.name for t in tasks])
            return torch.stack([torch.autograd.grad(t.loss(out[t.name], data.targets[t.name]), z,
                                                    retain_graph=True)[0].reshape(-1).double() for t in tasks])
        G = rep_grads()
    else:
        G = _grads(start, tasks, data, lambda m: list(m.shared_parameters()))
    assert list(D.steps) == [1]
    assert np.allclose(D.cosine[0], _cos(G), atol=1e-5)
    assert np.allclose(D.norms[0], G.norm(dim=1).numpy(), rtol=1e-4)


def test_conflict_frequency_and_means_by_hand():
    recs = [{"kind": "gradients", "step": 1, "epoch": 0, "tasks": ["a", "b", "c"], "weights": {"a": 1, "b": 2, "c": 3},
             "cosine": [[1, -0.5, 0.2], [-0.5, 1, 0.1], [0.2, 0.1, 1]], "norms": [1, 2, 3]},
            {"kind": "gradients", "step": 2, "epoch": 0, "tasks": ["a", "b"], "weights": {"a": 1, "b": 1, "c": 0},
             "cosine": [[1, 0.3], [0.3, 1]], "norms": [1, 1]},
            {"kind": "gradients", "step": 3, "epoch": 0, "tasks": ["a", "c"], "weights": {"a": 1, "c": 1},
             "cosine": [[1, -0.1], [-0.1, 1]], "norms": [2, 2]},
            {"kind": "affinity", "step": 3, "epoch": 0, "tasks": ["a", "b"], "affinity": [[0.1, -0.2], [None, 0.3]]}]
    D = records_to_data(recs)
    assert D.tasks == ["a", "b", "c"] and D.cosine.shape == (3, 3, 3)
    freq = D.conflict_frequency()
    assert freq[0, 1] == pytest.approx(1 / 2)   # a,b together at steps 1 (-0.5) and 2 (0.3)
    assert freq[0, 2] == pytest.approx(1 / 2)   # a,c at steps 1 (0.2) and 3 (-0.1)
    assert freq[1, 2] == pytest.approx(0.0)     # b,c only at step 1 (0.1)
    assert D.mean_cosine()[0, 1] == pytest.approx(-0.1)
    assert np.isnan(D.cosine[1, 2, 2]) and np.isnan(D.weights[2, 1])
    A = D.mean_affinity()
    assert A[0, 1] == pytest.approx(-0.2) and np.isnan(A[1, 0]) and np.isnan(A[2, 2])
    assert D.norm_ratios()[0].tolist() == pytest.approx([0.5, 1.0, 1.5])


@pytest.mark.parametrize("name", ["equal", "mgda"])
def test_the_callback_never_changes_training(tmp_path, name):
    tasks, data = synthetic(n=384)

    def train(cbs, run_dir):
        model = _model(tasks, dropout=0.3, batch_norm=True)
        trainer = Trainer(model, tasks, BALANCERS[name](tasks), epochs=2, batch_size=64, lr=1e-2, progress=False,
                          run_dir=run_dir)
        trainer.fit(data, callbacks=cbs)
        return model.state_dict(), torch.get_rng_state()

    plain, rng_plain = train([], tmp_path / "plain")
    seen, rng_seen = train([DiagnosticsCallback(every=1, affinity_every=2)], tmp_path / "seen")
    assert all(torch.equal(plain[k], seen[k]) for k in plain)  # bit-identical, BatchNorm statistics included
    assert torch.equal(rng_plain, rng_seen)
    assert len(read_diagnostics(tmp_path / "seen").steps) == 12


def test_resume_keeps_the_file_and_sums_consistent(tmp_path):
    tasks, data = synthetic(n=256)

    def trainer(run_dir, epochs):
        return Trainer(_model(tasks), tasks, BALANCERS["equal"](tasks), epochs=epochs, batch_size=64, lr=1e-2,
                       progress=False, run_dir=run_dir)

    full_cb = DiagnosticsCallback(every=2, affinity_every=3)
    trainer(tmp_path / "full", 4).fit(data, callbacks=[full_cb])
    trainer(tmp_path / "part", 2).fit(data, callbacks=[DiagnosticsCallback(every=2, affinity_every=3)])
    path = tmp_path / "part" / FILE
    with open(path, "a") as f:  # a crash after the checkpoint: lines of a later step, the last one cut short
        f.write(json.dumps({"kind": "affinity", "step": 9, "epoch": 2, "tasks": ["reg"], "affinity": [[0.5]]}) + "\n")
        f.write('{"kind": "gradients", "st')
    resumed_cb = DiagnosticsCallback(every=2, affinity_every=3)
    trainer(tmp_path / "part", 4).fit(data, resume=True, callbacks=[resumed_cb])
    a, b = (tmp_path / "full" / FILE).read_text(), path.read_text()
    assert a == b
    for k in full_cb.sums:
        assert np.allclose(full_cb.sums[k], resumed_cb.sums[k])
    assert np.allclose(full_cb.summary()["mean_affinity"], read_diagnostics(tmp_path / "full").mean_affinity())


def test_without_diagnostics_the_reader_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="without diagnostics"):
        read_diagnostics(tmp_path)


def test_yaml_section_is_validated_and_wired(tmp_path):
    from multitask import config as cfgmod
    from multitask.config import ConfigError

    base = {"data": {"name": "yeast", "limit": 300}, "tasks": {"class1": {}, "class2": {}, "class3": {}},
            "model": {"name": "hard_sharing", "hidden": [16], "head_hidden": [8]},
            "trainer": {"epochs": 1, "batch_size": 64, "progress": False}}
    with pytest.raises(ConfigError, match="diagnostics"):
        cfgmod.validate({**base, "diagnostics": {"every": 0}})
    with pytest.raises(ConfigError, match="diagnostics"):
        cfgmod.validate({**base, "diagnostics": {"evrey": 3}})
    assert cfgmod.validate(base).diagnostics is None
    from multitask import experiment

    cfg = cfgmod.validate({**base, "diagnostics": {"every": 1, "affinity_every": 2}})
    experiment.run(cfg, tmp_path / "run")
    D = read_diagnostics(tmp_path / "run")
    assert D.tasks == ["class1", "class2", "class3"] and len(D.steps) > 0 and len(D.affinity_steps) > 0


def test_normalized_affinity_by_hand():
    recs = [{"kind": "affinity", "step": 5, "epoch": 0, "tasks": ["a", "b"], "affinity": [[0.2, 0.1], [0.05, 0.4]]},
            {"kind": "affinity", "step": 10, "epoch": 0, "tasks": ["a", "b"], "affinity": [[0.02, -0.01], [0.0, -0.1]]}]
    D = records_to_data(recs)
    assert D.mean_affinity()[0, 1] == pytest.approx(0.045)
    N = D.mean_affinity(normalized=True)
    assert N[0, 1] == pytest.approx(0.1 / 0.4)           # step 10: b's own step did not help: left out
    assert N[1, 0] == pytest.approx((0.05 / 0.2 + 0.0) / 2) and N[0, 0] == pytest.approx(1.0)


def test_a_task_without_labels_in_a_step_is_left_out(tmp_path):
    tasks, data = synthetic(n=192)
    batches = []
    for k in range(3):
        idx = torch.arange(64 * k, 64 * (k + 1))
        targets = {t: y[idx].clone() for t, y in data.targets.items()}
        if k == 1:
            targets["reg"][:] = float("nan")   # no labels for reg in the second step
        batches.append((data.inputs[idx], targets))
    trainer = Trainer(_model(tasks), tasks, BALANCERS["equal"](tasks), epochs=1, lr=1e-2, progress=False,
                      run_dir=tmp_path)
    trainer.fit(batches, callbacks=[DiagnosticsCallback(every=1, affinity_every=1)])
    lines = [json.loads(l) for l in (tmp_path / FILE).read_text().splitlines()]
    assert [l["tasks"] for l in lines if l["step"] == 2] == [["bin", "cls"], ["bin", "cls"]]
    D = read_diagnostics(tmp_path)
    assert np.isnan(D.cosine[1, 0]).all() and np.isnan(D.affinity[1, :, 0]).all()
    assert not np.isnan(D.cosine[1, 1:, 1:]).any() and not np.isnan(D.cosine[0]).any()
