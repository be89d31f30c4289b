"""The scoring pipeline: driver (plan units, run the actor pool, commit), the scoring actor, the manifest."""

from bertclf.scoring.driver import ScoreSummary, run
from bertclf.scoring.lease import OutputLeasedError
from bertclf.scoring.manifest import ResumeMismatchError, ScoreError

__all__ = ["OutputLeasedError", "ResumeMismatchError", "ScoreError", "ScoreSummary", "run"]
