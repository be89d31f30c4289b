"""The CLI: flags made from the config fields, and exit codes that tell bad input (2) from failures (1)."""

from __future__ import annotations

import dataclasses

import pytest

from bertclf import cli
from bertclf.config import EvaluateConfig, ScoreConfig, TrainConfig
from bertclf.errors import ConfigError


@pytest.mark.parametrize("command,cls", [("train", TrainConfig), ("score", ScoreConfig), ("evaluate", EvaluateConfig)])
def test_every_flag_field_is_a_flag_with_its_help(command, cls):
    sub = cli.build_parser()._subparsers._group_actions[0].choices[command]
    flags = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        if f.metadata.get("flag", True):
            assert f.name in flags, f"--{f.name.replace('_', '-')} missing"
            assert flags[f.name].help.startswith(f.metadata["help"])
        else:
            assert f.name not in flags


def test_flags_and_set_reach_the_config_typed():
    args = cli.build_parser().parse_args(["train", "--train", "a.parquet", "b.parquet", "--epochs", "4",
                                          "--use-gpu", "auto", "--reinit-pooler", "true", "--precision", "fp32",
                                          "--label-columns", "x,y", "--set", "weight_decay=0.2"])
    cfg = cli.config_from_args(args)
    assert cfg.train == ["a.parquet", "b.parquet"] and cfg.epochs == 4 and cfg.precision == "fp32"
    assert cfg.use_gpu is None and cfg.reinit_pooler is True and cfg.label_columns == ["x", "y"]
    assert cfg.weight_decay == 0.2
    score = cli.config_from_args(cli.build_parser().parse_args(["score", "--overwrite", "--input", "c.parquet"]))
    assert score.overwrite is True and score.input == "c.parquet"


def test_bad_choices_are_refused_by_argparse():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--task", "regression"])


def _exit_code(monkeypatch, capsys, exc: Exception) -> tuple[int, str]:
    def boom(cfg):
        raise exc

    monkeypatch.setattr("bertclf.evaluate.evaluate", boom)
    code = cli.main(["evaluate"])
    return code, capsys.readouterr().err


def test_input_errors_exit_2_and_other_errors_exit_1(monkeypatch, capsys):
    code, err = _exit_code(monkeypatch, capsys, ConfigError("epochs must be >= 1, got 0"))
    assert code == cli.EXIT_BAD_INPUT and "error: epochs must be >= 1" in err
    code, err = _exit_code(monkeypatch, capsys, ValueError("operands could not be broadcast"))
    assert code == cli.EXIT_FAILED and "failed: ValueError" in err, "a bug's ValueError is not 'bad input'"
    code, _ = _exit_code(monkeypatch, capsys, FileNotFoundError("x"))
    assert code == cli.EXIT_FAILED
