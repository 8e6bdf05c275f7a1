"""Every metric against scikit-learn's implementation; Δm against a hand computation."""
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from multitask.metrics import METRICS_BY_KIND, delta_m, delta_m_terms

rng = np.random.default_rng(0)


def _mask(shape, frac=0.2):
    return rng.random(shape) >= frac


def test_regression_metrics():
    p, y, m = rng.normal(size=200), rng.normal(size=200), _mask(200)
    f = METRICS_BY_KIND["regression"]
    assert f["mse"](p, y, m) == pytest.approx(skm.mean_squared_error(y[m], p[m]))
    assert f["mae"](p, y, m) == pytest.approx(skm.mean_absolute_error(y[m], p[m]))
    assert f["r2"](p, y, m) == pytest.approx(skm.r2_score(y[m], p[m]))
    # several outputs, each with its own labelled rows
    P, Y = rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
    M = _mask((100, 3))
    expected = np.mean([skm.r2_score(Y[M[:, j], j], P[M[:, j], j]) for j in range(3)])
    assert f["r2"](P, Y, M) == pytest.approx(expected)


def test_binary_metrics_with_ties():
    y = rng.integers(0, 2, 300).astype(float)
    p = np.round(rng.random(300), 1)  # many ties
    m = _mask(300)
    f = METRICS_BY_KIND["binary"]
    assert f["auc"](p, y, m) == pytest.approx(skm.roc_auc_score(y[m], p[m]))
    assert f["accuracy"](p, y, m) == pytest.approx(skm.accuracy_score(y[m], p[m] >= 0.5))
    assert f["f1"](p, y, m) == pytest.approx(skm.f1_score(y[m], p[m] >= 0.5))
    assert math.isnan(f["auc"](p, np.ones(300), m))  # one class: undefined, not 0.5


def test_multiclass_metrics():
    p = rng.random((250, 5))
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, 4, 250).astype(float)  # class 4 never true: still counted when predicted
    m = _mask(250)
    f = METRICS_BY_KIND["multiclass"]
    pred = p[m].argmax(1)
    assert f["accuracy"](p, y, m) == pytest.approx(skm.accuracy_score(y[m], pred))
    assert f["macro_f1"](p, y, m) == pytest.approx(skm.f1_score(y[m], pred, average="macro"))


def test_multilabel_metrics():
    y = (rng.random((200, 6)) < 0.3).astype(float)
    p = rng.random((200, 6))
    f = METRICS_BY_KIND["multilabel"]
    full = np.ones_like(y, dtype=bool)
    assert f["micro_f1"](p, y, full) == pytest.approx(skm.f1_score(y, p >= 0.5, average="micro"))
    assert f["macro_f1"](p, y, full) == pytest.approx(skm.f1_score(y, p >= 0.5, average="macro"))
    assert f["map"](p, y, full) == pytest.approx(skm.average_precision_score(y, p, average="macro"))
    # with missing entries: each label on its own labelled rows
    m = _mask(y.shape)
    ap = np.mean([skm.average_precision_score(y[m[:, j], j], p[m[:, j], j]) for j in range(6)])
    assert f["map"](p, y, m) == pytest.approx(ap)
    f1 = np.mean([skm.f1_score(y[m[:, j], j], p[m[:, j], j] >= 0.5) for j in range(6)])
    assert f["macro_f1"](p, y, m) == pytest.approx(f1)
    micro = skm.f1_score(y[m], p[m] >= 0.5)
    assert f["micro_f1"](p, y, m) == pytest.approx(micro)


def test_average_precision_with_tied_scores():
    y = (rng.random(200) < 0.4).astype(float)
    p = np.round(rng.random(200), 1)
    f = METRICS_BY_KIND["multilabel"]["map"]
    assert f(p[:, None], y[:, None], np.ones((200, 1), bool)) == pytest.approx(skm.average_precision_score(y, p))


def test_delta_m_by_hand():
    # two tasks: task a (auc up from 0.80 to 0.84: +5%), task b (mse down 2.0 -> 1.5: +25%, mae up 1.0 -> 1.1: -10%)
    results = {"a": {"auc": 0.84}, "b": {"mse": 1.5, "mae": 1.1}}
    base = {"a": {"auc": 0.80}, "b": {"mse": 2.0, "mae": 1.0}}
    assert delta_m(results, base) == pytest.approx(100 * (0.05 + 0.25 - 0.10) / 3)
    assert delta_m(base, base) == 0.0


def test_delta_m_leaves_out_undefined_pairs_and_rejects_missing_baselines():
    terms, undefined = delta_m_terms({"a": {"f1": 0.3, "auc": 0.9}}, {"a": {"f1": 0.0, "auc": 0.75}})
    assert undefined == ["a.f1"] and terms == {"a.auc": pytest.approx(0.2)}
    with pytest.raises(KeyError, match="no baseline for task 'z'"):
        delta_m({"z": {"auc": 0.5}}, {"a": {"auc": 0.5}})
