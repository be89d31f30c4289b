"""The scoring pipeline: driver (plan units, run the actor pool, commit), the scoring actor, the manifest.

`__all__` is its public API: what jobs, benchmarks and users may import (from here, not from the submodules)."""

from bertclf.errors import ScoreError
from bertclf.scoring.actor import read_part_stats
from bertclf.scoring.driver import ScoreSummary, run
from bertclf.scoring.lease import OutputLeasedError
from bertclf.scoring.manifest import ResumeMismatchError, read_manifest

__all__ = ["OutputLeasedError", "ResumeMismatchError", "ScoreError", "ScoreSummary", "read_manifest", "read_part_stats",
           "run"]
