"""The demo: train the packaged all-MiniLM-L6-v2 on the shipped GoEmotions sample with local Ray, score the
sample, write the evaluation report, and classify and explain a few sentences. Everything offline, nothing but
local files.

    python jobs/demo.py            (after: bash cluster/install.sh)
"""

import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local ray.init must not switch later clusters to tokens
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bertclf.cli import main  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def demo() -> int:
    steps = [
        ["train", "--config", os.path.join(CONFIGS, "demo.yaml")],
        ["score", "--config", os.path.join(CONFIGS, "score_demo.yaml"), "--overwrite"],
        ["report", "--checkpoint", "runs/demo/best", "--output", "runs/demo/report"],
        ["predict", "--checkpoint", "runs/demo/best", "I love this, thank you so much!",
         "This is the worst thing I have ever read.", "Wait, what? I had no idea."],
        ["explain", "--checkpoint", "runs/demo/best", "I love this, thank you so much!"],
    ]
    for argv in steps:
        print(f"\n$ bertclf {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            return code
    print("\nThe evaluation report: runs/demo/report/index.html (open it in a browser)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(demo())
