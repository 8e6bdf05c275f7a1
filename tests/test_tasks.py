import math

import pytest
import torch
import torch.nn.functional as F

from multitask import Task


def test_missing_labels_add_nothing_to_loss_or_gradient():
    task = Task("y", "regression")
    out = torch.randn(6, 1, requires_grad=True)
    target = torch.tensor([1.0, float("nan"), 2.0, float("nan"), 0.5, -1.0])
    loss = task.loss(out, target)
    labelled = ~torch.isnan(target)
    expected = ((out[labelled, 0] - target[labelled]) ** 2).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.all(out.grad[~labelled] == 0)
    assert torch.all(out.grad[labelled] != 0)


def test_batch_without_labels_gives_zero_loss_and_no_nan():
    for task, out, target in [
        (Task("r", "regression"), torch.randn(4, 1), torch.full((4,), float("nan"))),
        (Task("b", "binary"), torch.randn(4, 1), torch.full((4,), float("nan"))),
        (Task("c", "multiclass", n_outputs=3), torch.randn(4, 3), torch.full((4,), -1, dtype=torch.long)),
        (Task("m", "multilabel", n_outputs=2), torch.randn(4, 2), torch.full((4, 2), float("nan"))),
    ]:
        out.requires_grad_(True)
        loss = task.loss(out, target)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.all(out.grad == 0) and not torch.isnan(out.grad).any()


def test_binary_multiclass_multilabel_losses_match_torch_on_labelled_entries():
    out = torch.randn(5, 1)
    y = torch.tensor([1.0, 0.0, float("nan"), 1.0, 0.0])
    m = ~torch.isnan(y)
    assert torch.allclose(Task("b", "binary").loss(out, y), F.binary_cross_entropy_with_logits(out[m, 0], y[m]))

    out = torch.randn(5, 4)
    y = torch.tensor([0, 3, -1, 2, -1])
    m = y >= 0
    assert torch.allclose(Task("c", "multiclass", n_outputs=4).loss(out, y), F.cross_entropy(out[m], y[m]))

    out = torch.randn(3, 2)
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [float("nan"), 0.0]])
    m = ~torch.isnan(y)
    expected = F.binary_cross_entropy_with_logits(out[m], y[m])
    assert torch.allclose(Task("m", "multilabel", n_outputs=2).loss(out, y), expected)


def test_explicit_mask_overrides_labels():
    task = Task("y", "regression")
    out = torch.zeros(3, 1)
    target = torch.tensor([1.0, 2.0, 3.0])
    mask = torch.tensor([True, False, True])
    assert task.loss(out, target, mask).item() == pytest.approx((1 + 9) / 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="t", kind="ordinal"), "kind must be one of"),
    (dict(name="t", kind="binary", n_outputs=3), "binary task has n_outputs=1"),
    (dict(name="t", kind="multiclass", n_outputs=1), "needs n_outputs >= 2"),
    (dict(name="t", kind="binary", metrics=["mse"]), "metric 'mse' does not apply"),
    (dict(name="t", kind="binary", importance=-1.0), "importance must be >= 0"),
])
def test_bad_task_declarations_name_the_task(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        Task(**kwargs)
    assert "'t'" in str(e.value)


def test_shape_mismatch_names_the_task():
    with pytest.raises(ValueError, match="task 'y'"):
        Task("y", "regression").loss(torch.zeros(4, 2), torch.zeros(4))


def test_default_metrics_and_directions():
    assert Task("r", "regression").metrics == ("mse", "mae", "r2")
    assert Task("b", "binary").metrics == ("auc", "accuracy", "f1")
    assert Task("c", "multiclass", n_outputs=3).metrics == ("accuracy", "macro_f1")
    assert Task("m", "multilabel", n_outputs=3).metrics == ("micro_f1", "macro_f1", "map")
    r = Task("r", "regression")
    assert not r.higher_is_better("mse") and r.higher_is_better("r2")


def test_evaluate_ignores_missing_labels():
    task = Task("b", "binary")
    out = torch.tensor([[3.0], [-3.0], [5.0], [-5.0]])
    y = torch.tensor([1.0, 0.0, float("nan"), float("nan")])
    res = task.evaluate(out, y)
    assert res["auc"] == 1.0 and res["accuracy"] == 1.0 and res["f1"] == 1.0
    assert math.isnan(task.evaluate(out, torch.full((4,), float("nan")))["auc"])
