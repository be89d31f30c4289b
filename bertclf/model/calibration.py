"""What lets `precision: auto` use a lower precision for one checkpoint: the checkpoint scored at fp32 and at each
lower precision on a labelled split, judged by the quality gate (bertclf.model.precision.quality_gate), the verdicts
recorded in the checkpoint directory (precision_gate.json) where every later Predictor.load finds them.

    from bertclf.model.calibration import calibrate
    calibrate("runs/goemotions/best", "../shared/data/goemotions/validation.parquet")   # int8, 2,000 rows

Run it once per checkpoint (its record names the weights it judged, so new weights need a new one); the int8 scheme
gives the same integers on every x86 CPU (7-bit activations never saturate), so a record made on one x86 machine holds
on the others. Scoring does not wait for it: without a record, auto stays fp32 where int8 would have been its choice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from bertclf import storage
from bertclf.model.precision import GateResult, quality_gate, write_gates

log = logging.getLogger(__name__)


def labelled_rows(data: str | Sequence[str], space, rows: int, text_column: str = "text",
                  label_column: str | None = None, label_columns: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
    """(texts, targets) of the first `rows` rows of labelled Parquet, checked against the checkpoint's labels."""
    import pyarrow as pa

    from bertclf.labelled import check_labelled_files
    from bertclf.labels import encode_targets
    from bertclf.units import read_table

    files = storage.list_parquet_files(data)
    label_column, wide, fmt, _ = check_labelled_files(files, space, text_column, label_column, list(label_columns))
    columns = [text_column, *(wide or [label_column])]
    tables, have = [], 0
    for uri in files:
        if have >= rows:
            break
        table = read_table(uri, columns).slice(0, rows - have)
        tables.append(table)
        have += table.num_rows
    table = pa.concat_tables(tables)
    return table[text_column].to_pylist(), encode_targets(table, space, fmt, label_column, wide)


def calibrate(checkpoint_uri: str, data: str | Sequence[str], precisions: Sequence[str] = ("int8",), rows: int = 2000,
              text_column: str = "text", label_column: str | None = None, label_columns: Sequence[str] = (),
              record: bool = True) -> list[GateResult]:
    """Each precision's gate against fp32 on the first `rows` labelled rows (CPU, eager); with `record`, the verdicts
    are written into the checkpoint directory for `precision: auto`. bf16 is judged only where the CPU runs it
    natively (emulated, it would take minutes and prove nothing about the machines that would use it)."""
    from bertclf.model.inference import Predictor
    from bertclf.resources import cpu_class, cpu_has_native_bf16

    fp32 = Predictor.load(checkpoint_uri, device="cpu", precision="fp32", compile="off")
    texts, targets = labelled_rows(data, fp32.space, rows, text_column, label_column, label_columns)
    t0 = time.perf_counter()
    reference = fp32.probabilities(texts)
    seconds = {"fp32": time.perf_counter() - t0}
    results = []
    for name in precisions:
        if name not in ("bf16", "int8"):
            raise ValueError(f"precision {name!r}: calibrate judges bf16 or int8 against fp32")
        if name == "bf16" and not cpu_has_native_bf16():
            log.warning("calibrate: bf16 skipped, this CPU (%s) only emulates it", cpu_class())
            continue
        candidate = Predictor.load(checkpoint_uri, device="cpu", precision=name, compile="off")
        t0 = time.perf_counter()
        probs = candidate.probabilities(texts)
        seconds[name] = time.perf_counter() - t0
        results.append(quality_gate(fp32.space, targets, reference, probs, name))
        log.info("calibrate %s: %s %s (%d rows)", name, "passed" if results[-1].passed else "failed",
                 results[-1].reason, len(texts))
    if record and results:
        import torch

        data_uris = [data] if isinstance(data, str) else list(data)
        uri = write_gates(fp32.checkpoint.uri, fp32.checkpoint.fingerprint(), results,
                               {"data": data_uris, "cpu_class": cpu_class(), "torch": torch.__version__,
                                "seconds": {k: round(v, 2) for k, v in seconds.items()}})
        log.info("calibrate: recorded in %s", uri)
    return results


__all__ = ["calibrate", "labelled_rows"]
