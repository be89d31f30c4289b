"""Entry point for `ray job submit -- python jobs/train.py ...`: the same flags as `bertclf train`."""

import sys

from bertclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
