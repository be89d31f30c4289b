"""Entry point for `ray job submit -- python jobs/score.py ...`: the same flags as `bertclf score`."""

import sys

from bertclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
