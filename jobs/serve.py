"""Entry point for `ray job submit -- python jobs/serve.py ...`: the same flags as `bertclf serve`."""

import sys

from bertclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
