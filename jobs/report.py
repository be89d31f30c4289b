"""Entry point for `ray job submit -- python jobs/report.py ...`: the same flags as `bertclf report`."""

import sys

from bertclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
