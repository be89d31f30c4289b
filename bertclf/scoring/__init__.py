"""The scoring pipeline: driver (plan units, run the actor pool, commit), the scoring actor, the manifest."""

from bertclf.scoring.driver import ScoreSummary, run
from bertclf.scoring.manifest import ScoreError

__all__ = ["ScoreError", "ScoreSummary", "run"]
