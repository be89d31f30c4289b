"""Entry point for `ray job submit -- python jobs/evaluate.py ...`: the same flags as `bertclf evaluate`."""

import sys

from bertclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
