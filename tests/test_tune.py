"""`bertclf tune` on real Ray: trials are tiny-BERT training runs; the table, the published best, resuming after
the driver is killed, and bad search files refused before any trial starts."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bertclf import tuning
from bertclf.config import TrainConfig
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.errors import ConfigError
from bertclf.model.inference import predict_texts
from bertclf.tuning import SearchSpec

REPO = Path(__file__).resolve().parents[1]


def _data(tmp_path) -> dict:
    write_rows(tmp_path / "t.parquet", make_rows(160, seed=11, multi_label=False))
    write_rows(tmp_path / "v.parquet", make_rows(40, seed=12, multi_label=False))
    return dict(train=str(tmp_path / "t.parquet"), validation=str(tmp_path / "v.parquet"), num_workers=2,
                batch_size=16, max_length=32, precision="fp32", warmup_ratio=0.0)


@pytest.mark.slow
def test_asha_stops_trailing_trials_and_publishes_the_best(tiny_model, tmp_path, s3_server):
    """In a subprocess with its own Ray (dashboard on: Ray Train's placement-group cleaner needs its state API to
    free a stopped trial's CPUs; the in-process test Ray has none)."""
    output = tmp_path / "search"
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**_data(tmp_path), "model": str(tiny_model),
                                                        "output": str(output), "epochs": 3}))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({
        "num_samples": 4, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2,
        "space": {"learning_rate": {"loguniform": [1e-5, 5e-3]}}}))
    run = subprocess.run([sys.executable, "-m", "bertclf.cli", "tune", "--config", str(tmp_path / "base.yaml"),
                          "--search", str(tmp_path / "search.yaml")], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    table = json.loads((output / "trials.json").read_text())
    assert len(table) == 4 and {t["status"] for t in table} <= {"completed", "stopped early"}
    assert all((t["status"] == "completed") == (t["epochs_run"] == 3) for t in table)
    best = max(table, key=lambda t: t["best"])
    best_meta = json.loads((output / "best" / "bertclf.json").read_text())
    assert best_meta["metrics"]["f1_macro"] == pytest.approx(best["best"])
    assert not (output / "best" / "train_state.safetensors").exists()


@pytest.mark.slow  # a whole search, killed and resumed (~150 s on 2 cores)
def test_search_writes_the_table_publishes_the_best_and_resumes_after_the_driver_is_killed(
        tiny_model, tmp_path, s3_server):
    """Paths relative to where the command runs, as users write them (trials run in other directories)."""
    output = tmp_path / "search"
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**_data(tmp_path), "train": "t.parquet",
                                                        "validation": "v.parquet", "model": str(tiny_model),
                                                        "output": "search", "epochs": 2}))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({
        "num_samples": 2, "scheduler": "fifo", "seed": 3,
        "space": {"learning_rate": {"loguniform": [5e-4, 5e-3]}, "method": {"choice": ["full", "lora"]}}}))
    cmd = [sys.executable, "-m", "bertclf.cli", "tune", "--config", str(tmp_path / "base.yaml"),
           "--search", str(tmp_path / "search.yaml")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=open(tmp_path / "first.log", "w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while not list(output.glob("trials/*/best/bertclf.json")) and time.time() < deadline and first.poll() is None:
        time.sleep(1)
    finished_before = {p.parts[-3] for p in output.glob("trials/*/best/bertclf.json")}
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started
    first.wait()
    assert len(finished_before) == 1, (tmp_path / "first.log").read_text()[-3000:]
    done = next(iter(finished_before))
    metrics_before = (output / "trials" / done / "metrics.jsonl").read_text()

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the search" in second.stdout
    assert (output / "trials" / done / "metrics.jsonl").read_text() == metrics_before, "finished trial ran again"

    rows = list(csv.DictReader((output / "trials.csv").open()))
    assert len(rows) == 2 and done in {r["trial_id"] for r in rows}
    assert all(r["status"] == "completed" and r["epochs_run"] == "2" for r in rows)
    assert all(5e-4 <= json.loads(r["values"])["learning_rate"] <= 5e-3 for r in rows)
    table = json.loads((output / "trials.json").read_text())
    best = max(table, key=lambda t: t["best"])
    best_meta = json.loads((output / "best" / "bertclf.json").read_text())
    assert best_meta["metrics"]["f1_macro"] == pytest.approx(best["best"]), "the published trial is the best one"
    assert best_meta["tuning"]["method"] == best["values"]["method"]
    assert not (output / "best" / "train_state.safetensors").exists()
    assert json.loads(second.stdout.strip().splitlines()[-1])["trial"] == best["trial_id"]
    assert predict_texts(str(output / "best"), ["joy happy"])[0]["predicted"]


@pytest.mark.parametrize("search, message", [
    ({"space": {"method": {"choice": ["full", "adapterfusion"]}}}, "method must be one of full, lora, prefix"),
    ({"space": {"learning_rat": {"loguniform": [1e-5, 1e-4]}}}, "'learning_rat' is not a training config key"),
    ({"space": {"learning_rate": {"loguniform": [1e-4, 1e-5]}}}, r"range \[0.0001, 1e-05\] is empty"),
    ({"space": {"lora_rank": {"choice": []}}}, "choice needs a non-empty list"),
    ({"space": {"lora_rank": {"grid": []}}}, "grid needs a non-empty list"),
    ({"space": {"lora_rank": {"between": [1, 2]}}}, "give one of choice, grid, uniform, loguniform, randint"),
    ({"space": {"output": {"choice": ["a", "b"]}}}, "'output' can't be searched"),
    ({"num_samples": 0, "space": {"epochs": 2}}, "num_samples must be >= 1"),
    ({"time_budget_s": 0, "space": {"epochs": 2}}, "time_budget_s must be > 0"),
    ({"space": {}}, "the search space is empty"),
    ({"grace_period": 5, "space": {"epochs": {"choice": [2, 3]}}}, "grace_period 5 is longer than every trial"),
    ({"space": {"epochs": 2}, "searchspace": 1}, "unknown config key"),
])
def test_bad_search_is_refused_before_any_trial(tmp_path, search, message):
    from bertclf.config import load_config

    (tmp_path / "search.yaml").write_text(yaml.safe_dump(search))
    with pytest.raises(ConfigError, match=message):
        spec = load_config(SearchSpec, tmp_path / "search.yaml")
        tuning.run(TrainConfig(output=str(tmp_path / "out")), spec)
    assert not (tmp_path / "out").exists()


def test_grid_keys_try_every_value_num_samples_times():
    """The search space as Ray Tune expands it: every grid combination num_samples times, sampled keys in range."""
    from collections import Counter

    from ray.tune.search.variant_generator import generate_variants

    from bertclf.tuning.space import check_space, param_space, trial_count

    spec = SearchSpec(num_samples=2, space={"learning_rate": {"grid": [5e-5, 2e-4]},
                                            "batch_size": {"grid": [16, 32, 64]},
                                            "warmup_ratio": {"uniform": [0.0, 0.1]}, "epochs": 3})
    check_space(spec, TrainConfig())
    trials = [cfg for _ in range(spec.num_samples) for _, cfg in generate_variants(param_space(spec))]
    assert len(trials) == trial_count(spec) == 12
    combos = Counter((t["learning_rate"], t["batch_size"]) for t in trials)
    assert set(combos) == {(lr, bs) for lr in (5e-5, 2e-4) for bs in (16, 32, 64)} and set(combos.values()) == {2}
    assert all(0.0 <= t["warmup_ratio"] <= 0.1 and t["epochs"] == 3 for t in trials)


def test_cli_tune_bad_search_exits_2(tmp_path):
    from bertclf.cli import main

    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"num_samples": 0, "space": {"epochs": 2}}))
    assert main(["tune", "--search", str(tmp_path / "search.yaml"), "--output", str(tmp_path / "out")]) == 2


def test_a_trial_stopped_early_is_published_from_the_checkpoint_its_run_kept(tiny_model, tmp_path):
    """ASHA kills a stopped trial before its training publishes best/: its row points at the best epoch's Ray Train
    checkpoint (Tune's `checkpoint_path`), which is published without its optimizer state."""
    from types import SimpleNamespace

    import pandas as pd

    from bertclf.dev.tiny_model import save_tiny_checkpoint
    from bertclf.tuning.driver import _publish, trial_rows

    kept = save_tiny_checkpoint(tmp_path / "ray_train" / "checkpoint_1", tiny_model, "multi_class")
    (kept / "train_state.json").write_text("{}")
    frame = pd.DataFrame({"epoch": [1, 2], "f1_macro": [0.6, 0.4], "checkpoint_path": [str(kept), None]})
    result = SimpleNamespace(config={"learning_rate": 1e-3}, metrics={"trial_id": "abcde_00001", "time_total_s": 9.0},
                             metrics_dataframe=frame, error=None, path=str(tmp_path / "tune" / "run_trial_abcde_00001"))
    base = TrainConfig(output=str(tmp_path / "search"), epochs=3)
    (row,) = trial_rows([result], base, SearchSpec(space={"learning_rate": {"choice": [1e-3]}}))
    assert (row.status, row.best, row.best_epoch, row.epochs_run) == ("stopped early", 0.6, 1, 2)
    assert row.kept_checkpoint == str(kept)

    best_uri = _publish(base, row)
    assert (Path(best_uri) / "bertclf.json").is_file() and (Path(best_uri) / "model.safetensors").is_file()
    assert not (Path(best_uri) / "train_state.json").exists()
    assert (kept / "train_state.json").exists(), "Ray Train's own checkpoint is left as it was"
