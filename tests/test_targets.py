"""Target codecs for user tables: kind inference, label round trips, regression scaling, missing labels."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from multitask.data.targets import TargetCodec, codecs_for, infer_kind


@pytest.mark.parametrize("values, kind", [
    ([1.5, 2.25, 3.0, 4.75], "regression"),
    (["yes", "no", None, "yes"], "binary"),
    ([True, False, True, True], "binary"),
    ([0, 1, 1, 0], "binary"),
    (["a", "b", "c", "a"], "multiclass"),
    ([0.0, 1.0, 2.0, np.nan], "multiclass"),  # an integer column with blanks reads as floats
    (list(range(80)), "regression"),
])
def test_kind_inference(values, kind):
    assert infer_kind(pd.Series(values, name="y"))[0] == kind


def test_all_empty_target_is_an_error():
    with pytest.raises(ValueError, match="'y' has no labels at all"):
        infer_kind(pd.Series([None, "", " "], name="y"))


def test_multiclass_labels_round_trip_and_missing_labels():
    train = pd.DataFrame({"species": ["Gentoo", "Adelie", "", "Chinstrap", "Adelie"]})
    codec = TargetCodec("species", "multiclass", ["species"]).fit(train)
    assert codec.labels == ["Adelie", "Chinstrap", "Gentoo"]
    assert codec.encode(train).tolist() == [2, 0, -1, 1, 0]
    probs = torch.tensor([[0.125, 0.25, 0.625], [0.75, 0.125, 0.125]])
    out = codec.decode(probs)
    assert out["species"].tolist() == ["Gentoo", "Adelie"] and out["species_p_Chinstrap"].tolist() == [0.25, 0.125]
    again = TargetCodec.from_dict(codec.to_dict())
    assert again == codec
    with pytest.raises(ValueError, match="1 rows hold labels that the training rows never had .*'Emperor'"):
        codec.encode(pd.DataFrame({"species": ["Emperor", "Adelie"]}))


def test_binary_labels_keep_their_values():
    codec = TargetCodec("sex", "binary", ["sex"]).fit(pd.DataFrame({"sex": ["male", "female", None]}))
    y = codec.encode(pd.DataFrame({"sex": ["female", None, "male"]}))
    assert y[0] == 0 and math.isnan(y[1]) and y[2] == 1
    assert codec.decode(torch.tensor([0.9, 0.2]))["sex"].tolist() == ["male", "female"]


def test_regression_is_standardised_and_predictions_come_back_in_original_units():
    grams = pd.DataFrame({"body_mass_g": [3000.0, 4000.0, None, 5000.0]})
    codec = TargetCodec("body_mass_g", "regression", ["body_mass_g"]).fit(grams)
    y = codec.encode(grams)
    assert torch.allclose(y[[0, 1, 3]].mean(), torch.tensor(0.0)) and math.isnan(y[2])
    assert np.allclose(codec.decode(y[[0, 1, 3]])["body_mass_g"], [3000, 4000, 5000])
    raw = TargetCodec("body_mass_g", "regression", ["body_mass_g"], scale="none").fit(grams)
    assert raw.encode(grams)[0] == 3000.0


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"y": ["a", "a", None]}), "the training rows hold 1 class \\(only 'a'\\)"),
    (pd.DataFrame({"z": [1, 2]}), "column\\(s\\) \\['y'\\] not in the table"),
])
def test_unusable_classification_targets(frame, message):
    with pytest.raises((ValueError, KeyError), match=message):
        TargetCodec("y", "multiclass", ["y"]).fit(frame)


def test_regression_text_and_inf_are_errors():
    codec = TargetCodec("y", "regression", ["y"])
    with pytest.raises(ValueError, match="1 rows are not numbers \\(e.g. 'heavy'\\)"):
        codec.fit(pd.DataFrame({"y": ["1.5", "heavy", "2"]}))
    with pytest.raises(ValueError, match="1 rows are infinite"):
        codec.fit(pd.DataFrame({"y": [1.5, np.inf, 2]}))


def test_codecs_for_declared_and_inferred_targets():
    df = pd.DataFrame({"a": [0.5, 1.5, 2.5], "b": ["x", "y", "x"], "t1": [0, 1, 1], "t2": [1, 1, 0]})
    codecs, notes = codecs_for(df, {"a": None, "b": "multiclass", "tags": {"kind": "multilabel", "columns": ["t1", "t2"]}})
    assert [(c.name, c.kind) for c in codecs] == [("a", "regression"), ("b", "multiclass"), ("tags", "multilabel")]
    assert notes == ["target 'a': regression (inferred: numbers with 3 distinct values)"]
    tags = codecs[2].fit(df)
    assert tags.encode(df).tolist() == [[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]] and tags.task().n_outputs == 2
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['scael'\\]"):
        codecs_for(df, {"a": {"kind": "regression", "scael": "none"}})
