"""Label layouts, target encoding and LabelSpace predictions."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from bertclf.labels import LabelError, LabelSpace, encode_targets, label_format, task_for_format


def _types(table: pa.Table) -> dict[str, pa.DataType]:
    return {f.name: f.type for f in table.schema}


# ---------------------------------------------------------------- label_format


@pytest.mark.parametrize("dtype", [pa.list_(pa.string()), pa.large_list(pa.string()), pa.list_(pa.large_string())])
def test_label_format_list(dtype):
    assert label_format({"text": pa.string(), "labels": dtype}, "labels", []) == "list"


@pytest.mark.parametrize("dtype", [pa.string(), pa.large_string(), pa.int64(), pa.int32()])
def test_label_format_single(dtype):
    assert label_format({"text": pa.string(), "label": dtype}, "label", []) == "single"


@pytest.mark.parametrize("dtype", [pa.int8(), pa.bool_(), pa.float32(), pa.float64()])
def test_label_format_wide(dtype):
    cols = {"text": pa.string(), "a": dtype, "b": dtype}
    # label_columns wins over a label_column argument
    assert label_format(cols, "label", ["a", "b"]) == "wide"


def test_task_for_format():
    assert task_for_format("single") == "multi_class"
    assert task_for_format("list") == "multi_label"
    assert task_for_format("wide") == "multi_label"


def test_label_format_missing_column_named():
    with pytest.raises(LabelError, match="'labelz'"):
        label_format({"text": pa.string(), "labels": pa.list_(pa.string())}, "labelz", [])


def test_label_format_no_label_column_given():
    with pytest.raises(LabelError, match="not found"):
        label_format({"text": pa.string()}, None, [])


def test_label_format_missing_wide_column_named():
    with pytest.raises(LabelError, match="'gone'"):
        label_format({"text": pa.string(), "a": pa.int8()}, None, ["a", "gone"])


def test_label_format_list_of_ints_rejected():
    with pytest.raises(LabelError, match="'labels'") as exc:
        label_format({"labels": pa.list_(pa.int64())}, "labels", [])
    assert "list of strings" in str(exc.value)


def test_label_format_float_single_column_rejected():
    with pytest.raises(LabelError, match="'score'"):
        label_format({"score": pa.float64()}, "score", [])


def test_label_format_wide_string_column_rejected():
    with pytest.raises(LabelError, match="'b'"):
        label_format({"a": pa.int8(), "b": pa.string()}, None, ["a", "b"])


# ---------------------------------------------------------------- encode_targets


def test_encode_targets_multi_hot():
    space = LabelSpace("multi_label", ["anger", "joy", "sadness"])
    table = pa.table({"labels": pa.array([["joy"], ["anger", "sadness"], [], None, ["sadness", "joy", "anger"]],
                                         type=pa.list_(pa.string()))})
    got = encode_targets(table, space, "list", "labels", [])
    expected = np.zeros((5, 3), dtype=np.float32)
    rows = [["joy"], ["anger", "sadness"], [], [], ["sadness", "joy", "anger"]]
    for r, labels in enumerate(rows):
        for label in labels:
            expected[r, space.names.index(label)] = 1
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_encode_targets_class_ids():
    space = LabelSpace("multi_class", ["neg", "neu", "pos"])
    values = ["pos", "neg", "neu", "pos"]
    got = encode_targets(pa.table({"label": values}), space, "single", "label", [])
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [space.names.index(v) for v in values])


def test_encode_targets_integer_class_labels():
    space = LabelSpace("multi_class", ["0", "1", "2"])
    got = encode_targets(pa.table({"label": pa.array([2, 0, 1], pa.int64())}), space, "single", "label", [])
    np.testing.assert_array_equal(got, [2, 0, 1])


def test_encode_targets_wide():
    space = LabelSpace("multi_label", ["a", "b"])
    table = pa.table({"a": pa.array([1, 0, 1], pa.int8()), "b": pa.array([False, True, True])})
    got = encode_targets(table, space, "wide", None, ["a", "b"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[1, 0], [0, 1], [1, 1]])


def test_encode_targets_unknown_single_label_named():
    space = LabelSpace("multi_class", ["neg", "pos"])
    with pytest.raises(LabelError, match="'meh'") as exc:
        encode_targets(pa.table({"label": ["pos", "meh"]}), space, "single", "label", [])
    assert "'label'" in str(exc.value)


def test_encode_targets_unknown_list_label_named():
    space = LabelSpace("multi_label", ["joy", "anger"])
    table = pa.table({"labels": pa.array([["joy"], ["anger", "surprise"]], type=pa.list_(pa.string()))})
    with pytest.raises(LabelError, match="'surprise'"):
        encode_targets(table, space, "list", "labels", [])


# ---------------------------------------------------------------- LabelSpace


def test_default_thresholds_and_length_check():
    assert LabelSpace("multi_label", ["a", "b", "c"]).thresholds == [0.5, 0.5, 0.5]
    with pytest.raises(LabelError):
        LabelSpace("multi_label", ["a", "b"], [0.5])


def test_predict_multi_label_uses_per_label_thresholds():
    space = LabelSpace("multi_label", ["a", "b", "c"], thresholds=[0.2, 0.5, 0.9])
    probs = np.array([[0.25, 0.25, 0.95],
                      [0.1, 0.6, 0.8],
                      [0.2, 0.5, 0.9],   # exactly at each threshold: >= counts
                      [0.0, 0.0, 0.0]], dtype=np.float32)
    expected = [[n for n, p, t in zip(space.names, row, space.thresholds, strict=True) if p >= np.float32(t)]
                for row in probs]
    assert expected[2] == ["a", "b", "c"] and expected[3] == []
    assert space.predict(probs) == expected


def test_predict_multi_class_argmax_ignores_thresholds():
    space = LabelSpace("multi_class", ["x", "y", "z"], thresholds=[0.99, 0.99, 0.99])
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=20).astype(np.float32)
    expected = [[space.names[max(range(3), key=lambda j, row=row: row[j])]] for row in probs]
    assert space.predict(probs) == expected


def test_to_dict_from_dict_round_trip():
    space = LabelSpace("multi_label", ["a", "b"], thresholds=[0.25, 0.75])
    d = space.to_dict()
    assert d == {"task": "multi_label", "names": ["a", "b"], "thresholds": [0.25, 0.75]}
    again = LabelSpace.from_dict(d)
    assert again == space
    assert again.index == {"a": 0, "b": 1}
    assert LabelSpace.from_dict(json.loads(json.dumps(d))) == space


def test_class_bias_moves_posteriors_to_the_validation_label_mix():
    from dataclasses import replace

    from bertclf.training.data import class_prior_bias

    space = LabelSpace("multi_class", ["a", "b"])
    logits = np.array([[0.1, 0.0], [3.0, 0.0]], dtype=np.float32)
    assert space.probabilities(logits).argmax(1).tolist() == [0, 0]
    data = SimpleNamespace(space=space, validation_files=["v.parquet"], label_counts={"a": 499, "b": 499},
                           validation_label_counts={"a": 99, "b": 899})
    bias = class_prior_bias(data, "validation")
    assert bias[1] - bias[0] == pytest.approx(np.log(9.0))  # 9 times as many b rows, training balanced
    biased = replace(space, class_bias=bias)
    assert biased.probabilities(logits).argmax(1).tolist() == [1, 0], "only the confident row stays a"
    assert LabelSpace.from_dict(biased.to_dict()) == biased
    assert class_prior_bias(data, "train") == []
    assert class_prior_bias(SimpleNamespace(**{**vars(data), "validation_files": None}), "validation") == []


def test_positive_weights_lift_rare_labels_and_feed_the_loss():
    import torch

    from bertclf.training.data import MAX_POSITIVE_WEIGHT, positive_weights
    from bertclf.training.worker import loss_function

    data = SimpleNamespace(space=LabelSpace("multi_label", ["common", "rare", "never"]), n_train=10_000,
                           label_counts={"common": 4_999, "rare": 99})
    weights = positive_weights(data, "sqrt_inverse")
    assert weights[0] == pytest.approx(1.0, abs=1e-3), "a label in half the rows keeps about weight 1"
    assert weights[1] == pytest.approx(np.sqrt(9_902 / 100), abs=1e-4)
    assert weights[2] == MAX_POSITIVE_WEIGHT, "a label with no positives is clipped"
    assert positive_weights(data, "none") == []
    assert positive_weights(SimpleNamespace(**{**vars(data), "space": LabelSpace("multi_class", ["a", "b"])}),
                            "sqrt_inverse") == []

    logits, target = torch.zeros(1, 3), torch.tensor([[0.0, 1.0, 0.0]])
    weighted = loss_function(data, "sqrt_inverse", torch.device("cpu"))(logits, target)
    plain = loss_function(data, "none", torch.device("cpu"))(logits, target)
    assert float(weighted) == pytest.approx(float(plain) * (2 + weights[1]) / 3, rel=1e-5)
