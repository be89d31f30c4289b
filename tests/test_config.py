"""Config loading: defaults, YAML file, overrides, validation and type coercion."""

from __future__ import annotations

import dataclasses
import os

import pytest

from bertclf.config import (
    PACKAGED_MODEL,
    ConfigError,
    ScoreConfig,
    TrainConfig,
    as_dict,
    load_config,
    parse_set_overrides,
)


@pytest.fixture
def yaml_file(tmp_path):
    def write(text: str):
        p = tmp_path / "job.yaml"
        p.write_text(text)
        return p
    return write


def test_defaults_without_file_or_overrides():
    cfg = load_config(TrainConfig)
    assert cfg == TrainConfig()
    assert cfg.model == PACKAGED_MODEL


def test_train_defaults_point_at_shipped_sample_files():
    cfg = TrainConfig()
    for path in (cfg.train, cfg.validation, ScoreConfig().input):
        assert isinstance(path, str) and path.endswith(".parquet")
        assert os.path.isfile(path), path
        with open(path, "rb") as f:
            assert f.read(4) == b"PAR1"  # a real Parquet file, not a pointer
    assert cfg.train != cfg.validation


def test_yaml_then_overrides_win(yaml_file):
    path = yaml_file("epochs: 5\nbatch_size: 16\noutput: from-yaml\nlearning_rate: 0.001\n")
    cfg = load_config(TrainConfig, path, {"epochs": 7, "output": None, "text_column": "body"})
    assert cfg.epochs == 7  # override beats the file
    assert cfg.output == "from-yaml"  # a None override is ignored
    assert cfg.batch_size == 16  # file beats the default
    assert cfg.learning_rate == pytest.approx(0.001)
    assert cfg.text_column == "body"
    assert cfg.num_workers == TrainConfig().num_workers  # untouched default


def test_empty_yaml_file_means_defaults(yaml_file):
    assert load_config(ScoreConfig, yaml_file("")) == ScoreConfig()


def test_unknown_key_names_key_and_file(yaml_file):
    path = yaml_file("epochs: 2\nepochz: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(TrainConfig, path)
    assert "epochz" in str(exc.value)
    assert str(path) in str(exc.value)


def test_unknown_override_key_named():
    with pytest.raises(ConfigError, match="not_a_key"):
        load_config(ScoreConfig, None, {"not_a_key": 1})


def test_missing_config_file_named(tmp_path):
    path = tmp_path / "nope" / "job.yaml"
    with pytest.raises(ConfigError, match="does not exist") as exc:
        load_config(TrainConfig, path)
    assert str(path) in str(exc.value)


def test_invalid_yaml_and_non_mapping(yaml_file):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, yaml_file("epochs: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(TrainConfig, yaml_file("- a\n- b\n"))


@pytest.mark.parametrize("cls,key,value", [
    (TrainConfig, "task", "regression"),
    (TrainConfig, "precision", "fp16"),
    (ScoreConfig, "precision", "int4"),
    (ScoreConfig, "empty_text", "drop"),
    (TrainConfig, "use_gpu", "maybe"),
    (TrainConfig, "best_mode", "avg"),
])
def test_bad_choice(cls, key, value):
    with pytest.raises(ConfigError, match=key) as exc:
        load_config(cls, None, {key: value})
    assert repr(value) in str(exc.value)


@pytest.mark.parametrize("overrides", [
    {"epochs": 0}, {"num_workers": 0}, {"validation_fraction": 1.0}, {"validation_fraction": 0},
    {"max_failures": -1},
])
def test_bad_train_numbers(overrides):
    with pytest.raises(ConfigError, match=next(iter(overrides))):
        load_config(TrainConfig, None, overrides)


def test_bad_score_numbers():
    with pytest.raises(ConfigError, match="rows_per_unit"):
        load_config(ScoreConfig, None, {"rows_per_unit": 0})


def test_coercion_of_cli_strings():
    cfg = load_config(TrainConfig, None, {"epochs": "3", "learning_rate": "2e-5", "label_columns": "a, b,c",
                                          "cpus_per_worker": "1.5"})
    assert cfg.epochs == 3 and type(cfg.epochs) is int
    assert cfg.learning_rate == pytest.approx(2e-5) and type(cfg.learning_rate) is float
    assert cfg.label_columns == ["a", "b", "c"]
    assert cfg.cpus_per_worker == 1.5


@pytest.mark.parametrize("raw,expected", [("true", True), ("True", True), ("yes", True), ("1", True),
                                          ("false", False), ("no", False), ("0", False), (True, True)])
def test_bool_coercion(raw, expected):
    assert load_config(ScoreConfig, None, {"overwrite": raw}).overwrite is expected


def test_bad_values_rejected_naming_key():
    with pytest.raises(ConfigError, match="'epochs'"):
        load_config(TrainConfig, None, {"epochs": "three"})
    with pytest.raises(ConfigError, match="'overwrite'"):
        load_config(ScoreConfig, None, {"overwrite": "maybe"})
    with pytest.raises(ConfigError, match="'epochs'"):
        load_config(TrainConfig, None, {"epochs": True})  # a bool is not an int here
    with pytest.raises(ConfigError, match="'text_column'"):
        load_config(TrainConfig, None, {"text_column": ["a", "b"]})


def test_yaml_typed_values(yaml_file):
    path = yaml_file("train: [a.parquet, b.parquet]\nvalidation: null\nuse_gpu: false\n"
                     "label_columns: [x, y]\ncpus_per_worker: 2\n")
    cfg = load_config(TrainConfig, path)
    assert cfg.train == ["a.parquet", "b.parquet"]
    assert cfg.validation is None
    assert cfg.use_gpu is False
    assert cfg.label_columns == ["x", "y"]
    assert cfg.cpus_per_worker == 2.0


def test_score_yaml_date_and_nullable(yaml_file):
    cfg = load_config(ScoreConfig, yaml_file("date: 2024-03-05\nid_column: null\nnum_actors: 3\n"))
    assert cfg.date == "2024-03-05"  # YAML reads a date object; the config keeps the string
    assert cfg.id_column is None
    assert cfg.num_actors == 3


def test_single_column_string_coerced_to_list():
    assert load_config(ScoreConfig, None, {"passthrough_columns": "title"}).passthrough_columns == ["title"]
    assert load_config(TrainConfig, None, {"label_columns": "toxic"}).label_columns == ["toxic"]


def test_parse_set_overrides_yaml_typing():
    got = parse_set_overrides(["epochs=3", "learning_rate=0.5", "overwrite=true", "name=abc", "ids=[1, 2]",
                               "empty=", " key = x=y", "none=null"])
    assert got["epochs"] == 3 and type(got["epochs"]) is int
    assert got["learning_rate"] == 0.5
    assert got["overwrite"] is True
    assert got["name"] == "abc"
    assert got["ids"] == [1, 2]
    assert got["empty"] is None
    assert got["key"] == "x=y"  # split on the first '=' only, key stripped
    assert got["none"] is None


def test_parse_set_overrides_bad_pair():
    with pytest.raises(ConfigError, match="'epochs'"):
        parse_set_overrides(["ok=1", "epochs"])


def test_set_overrides_through_load_config():
    cfg = load_config(ScoreConfig, None, parse_set_overrides(["overwrite=yes", "max_batch_rows=64", "date=2024-01-02"]))
    assert cfg.overwrite is True and cfg.max_batch_rows == 64 and cfg.date == "2024-01-02"


def test_as_dict_round_trip():
    cfg = load_config(TrainConfig, None, {"epochs": 2, "label_columns": ["a", "b"]})
    d = as_dict(cfg)
    assert d["epochs"] == 2 and set(d) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert load_config(TrainConfig, None, d) == cfg


def test_auto_means_none_for_tristate_booleans():
    cfg = load_config(TrainConfig, None, {"use_gpu": "auto", "reinit_pooler": "false"})
    assert cfg.use_gpu is None and cfg.reinit_pooler is False
    with pytest.raises(ConfigError, match="use_gpu must be true or false or auto"):
        TrainConfig(use_gpu="yes").validate()  # built in Python without load_config
