"""Entry point for `ray job submit -- python jobs/tune.py ...`: the same flags as `bertclf tune`."""

import sys

from bertclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
