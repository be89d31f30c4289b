"""Reports on a real local Ray: the evaluation page for both task types, the scoring-run page with drift
against the previous partition, the page in a real headless browser, and every bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bertclf import cli, storage
from bertclf.config import ReportConfig, ScoreConfig
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import CheckpointError, DataError, InputError, LabelError
from bertclf.model import adapters
from bertclf.records import EpochRecord
from bertclf.report import evaluation_report, scores_report
from bertclf.scoring import run as score

NAMES = ["anger", "fear", "joy"]


def _images(directory: Path) -> list[str]:
    return re.findall(r'<img src="figures/([^"]+)"', (directory / "index.html").read_text())


def _assert_page_complete(directory: Path) -> dict:
    """Every figure the page names exists and is a valid PNG; report.json parses."""
    images = _images(directory)
    assert images, "the page shows no figure"
    for name in images:
        with Image.open(directory / "figures" / name) as img:
            img.verify()
            assert img.format == "PNG"
    return json.loads((directory / "report.json").read_text())


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    """A run directory as `bertclf train` leaves it: best/ and metrics.jsonl with two epochs."""
    run = tmp_path_factory.mktemp("run")
    save_tiny_checkpoint(run / "best", tiny_model, "multi_label", [0.45, 0.5, 0.55])
    base = dict(train_loss=0.7, val_loss=0.69, f1_micro=0.3, f1_macro=0.25, f1_weighted=0.3, roc_auc_macro=0.5,
                train_seconds=1.0, samples_per_s=10.0, tokens_per_s=100.0, workers=2, first_batch_seconds=0.1,
                data_wait_seconds=0.2, validation_rows=40)
    lines = [EpochRecord(epoch=e, **{**base, "f1_macro": 0.2 + e / 10}).to_json() for e in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("labelled")
    for task in ("multi_label", "multi_class"):
        write_rows(root / f"{task}.parquet", make_rows(150, seed=7, multi_label=task == "multi_label"))
    return {"multi_label": root / "multi_label.parquet", "multi_class": root / "multi_class.parquet"}


def test_multi_label_report_holds_curves_tables_counts_and_clouds(ray_local, run_dir, labelled, tmp_path):
    out = tmp_path / "report"
    report = evaluation_report(ReportConfig(checkpoint=str(run_dir / "best"), data=str(labelled["multi_label"]),
                                            output=str(out)))
    written = _assert_page_complete(out)
    assert written["headline"] == pytest.approx(report["headline"])
    rows = make_rows(150, seed=7, multi_label=True)
    support = Counter(label for r in rows for label in r["labels"])
    assert {n: int(s["support"]) for n, s in written["per_label"].items()} == {n: support[n] for n in NAMES}
    f1s = [s["f1-score"] for s in written["per_label"].values()]
    assert f1s == sorted(f1s), "per-label table is sorted worst first"
    assert written["headline"]["rows"] == 150
    assert [h["epoch"] for h in written["history"]] == [1, 2], "training curves come from the run's metrics.jsonl"
    images = set(_images(out))
    assert {"training_curves.png", "label_cooccurrence.png", "per_label_counts.png", "pr_curves.png",
            "roc_curves.png", "reliability.png"} <= images
    assert {f"words_{n}_true.png" for n in NAMES} <= images
    counts = written["per_label_counts"]
    assert all(counts[n]["tp"] + counts[n]["fn"] == support[n] for n in NAMES)
    page = (out / "index.html").read_text()
    assert all(n in page for n in NAMES) and "Checkpoint card" in page and "Errors" in page
    explained = [e for e in written["errors"] if "explanation" in e]
    assert len(explained) == min(5, len(written["errors"])) > 0
    assert all(e["explanation"]["label"] == e["worst_label"] for e in explained)
    assert page.count('class="explanation"') == len(explained)
    assert "http://" not in page and "https://" not in page, "the page loads nothing from the network"


def test_multi_class_report_confusion_matrix_sums_to_the_rows(ray_local, tiny_model, labelled, tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mc", tiny_model, "multi_class")
    out = tmp_path / "report"
    report = evaluation_report(ReportConfig(checkpoint=str(ckpt), data=str(labelled["multi_class"]), output=str(out)))
    written = _assert_page_complete(out)
    matrix = written["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == 150 and written["confusion"]["labels"] == NAMES
    true_counts = Counter(r["label"] for r in make_rows(150, seed=7, multi_label=False))
    assert [sum(row) for row in matrix] == [true_counts[n] for n in NAMES]
    assert report["headline"]["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(3)) / 150)
    assert {"confusion_counts.png", "confusion_normalized.png"} <= set(_images(out))
    assert written["history"] == [], "no metrics.jsonl beside this checkpoint, and bertclf.json has no history"


def _chromium_dom(page: Path, profile: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: bash cluster/install.sh installs Debian's chromium for the tests"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.slow  # a headless browser (~17 s); the page's HTML and figures are checked by default above
def test_the_page_renders_in_headless_chromium_with_its_figures(ray_local, run_dir, labelled, tmp_path):
    out = tmp_path / "report"
    evaluation_report(ReportConfig(checkpoint=str(run_dir / "best"), data=str(labelled["multi_label"]),
                                   output=str(out)))
    dom = _chromium_dom(out / "index.html", tmp_path / "profile")
    loaded = re.search(r'data-figures-loaded="(\d+)"', dom)
    assert loaded, "the page's load handler did not run"
    assert int(loaded.group(1)) == len(_images(out)) and 'data-figures-broken="0"' in dom
    assert "Per label (worst F1 first)" in dom

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "figures" / "roc_curves.png").unlink()
    dom = _chromium_dom(broken / "index.html", tmp_path / "profile2")
    assert 'data-figures-broken="1"' in dom and "figure missing: figures/roc_curves.png" in dom


def test_bad_inputs_fail_clearly_and_leave_no_page(run_dir, labelled, tiny_model, tmp_path):
    out = tmp_path / "report"
    ckpt = str(run_dir / "best")

    def fails(exc, match, **cfg):
        with pytest.raises(exc, match=match):
            evaluation_report(ReportConfig(**{"checkpoint": ckpt, "data": str(labelled["multi_label"]),
                                              "output": str(out), **cfg}))
        assert not (out / "index.html").exists()

    fails(CheckpointError, r"has no bertclf\.json", checkpoint=str(tiny_model))
    write_rows(tmp_path / "nolabel.parquet", [{"text": "a b"}])
    fails(DataError, r"nolabel\.parquet: label column 'labels' not found", data=str(tmp_path / "nolabel.parquet"))
    write_rows(tmp_path / "unknown.parquet", [{"text": "a", "labels": ["joy", "surprise"]}])
    fails(LabelError, r"unknown\.parquet: label\(s\) \['surprise'\] .* not in the checkpoint's label space",
          data=str(tmp_path / "unknown.parquet"))
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "labels": pa.array([], pa.list_(pa.string()))}),
                   tmp_path / "empty.parquet")
    fails(DataError, r"has no rows", data=str(tmp_path / "empty.parquet"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match=r"a_file/report"):
        evaluation_report(ReportConfig(checkpoint=ckpt, data=str(labelled["multi_label"]),
                                       output=str(tmp_path / "a_file" / "report")))
    with pytest.raises(DataError, match="no _SUCCESS"):
        scores_report(ReportConfig(scores=str(tmp_path), output=str(out)))


def _shifted_checkpoint(directory: Path, tiny_model: Path) -> Path:
    """The same tiny model with its classifier bias raised: every probability moves up (a model update)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from bertclf.model import checkpoint
    from bertclf.model.modeling import load_tokenizer

    save_tiny_checkpoint(directory, tiny_model, "multi_label", [0.45, 0.5, 0.55])
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    with torch.no_grad():
        model.classifier.bias += 3.0
    # saved as a checkpoint again, so bertclf.json records the new weights' sha256
    adapters.save_model_dir(directory, model, load_tokenizer(str(directory)), checkpoint.load(str(directory)).meta)
    return directory


def test_nightly_drift_is_recorded_alerted_and_rendered_without_blocking_the_scores(
        ray_local, run_dir, tiny_model, tmp_path, capsys):
    write_rows(tmp_path / "in.parquet", [{"id": f"r{i}", **r} for i, r in enumerate(make_rows(120, 3, True))])
    pattern = str(tmp_path / "scores" / "date={date}")
    base = dict(input=str(tmp_path / "in.parquet"), output=pattern)
    day1 = score(ScoreConfig(checkpoint=str(run_dir / "best"), date="2026-11-20", **base))
    assert day1.drift is None, "no previous partition"
    same = score(ScoreConfig(checkpoint=str(run_dir / "best"), date="2026-11-21", **base))
    assert same.drift is not None and not same.drift.alert
    assert max(d.psi for d in same.drift.labels.values()) < 1e-6, "the same model on the same rows does not drift"

    shifted = _shifted_checkpoint(tmp_path / "shifted", tiny_model)
    code = cli.main(["score", "--checkpoint", str(shifted), "--input", str(tmp_path / "in.parquet"), "--output",
                     pattern, "--date", "2026-11-22", "--drift-fails-job"])
    day3 = pattern.replace("{date}", "2026-11-22")
    assert code == cli.EXIT_DRIFT
    assert "DRIFT ALERT vs" in capsys.readouterr().out
    assert storage.exists(f"{day3}/_SUCCESS"), "a drift alert never blocks the scores"
    manifest = json.loads(Path(day3, "_manifest.json").read_text())
    drift = manifest["drift"]
    assert drift["alerts"] and all(drift["labels"][n]["psi"] > 0.2 for n in NAMES)
    assert sum(manifest["score_histograms"]["joy"]) == 120

    out = tmp_path / "page"
    scores_report(ReportConfig(scores=day3, output=str(out)))
    written = _assert_page_complete(out)
    assert {"label_distribution.png", "probability_histograms.png", "drift_psi.png"} <= set(_images(out))
    assert written["manifest"]["rows_out"] == 120
    page = (out / "index.html").read_text()
    assert "DRIFT ALERT" in page and "Throughput" in page
