"""Summarise py-spy collapsed stacks written by `bench/run --profile`.

    .venv/bin/python bench/profile_report.py bench/results/profile/get-console-*.txt [--top 40] [--focus console]

Prints, over all non-idle samples of the given files, the share of samples in which each
function is on the stack (inclusive) and on top of it (self), line numbers folded away.
`--focus` keeps only frames whose file path contains the given text.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def fold(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--focus", default="")
    args = parser.parse_args()
    inclusive, self_, total = Counter(), Counter(), 0
    for name in args.files:
        for line in Path(name).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [fold(f) for f in stack.split(";")[1:]]  # [0] is the thread
            if not frames:
                continue
            total += n
            for frame in set(frames):
                inclusive[frame] += n
            self_[frames[-1]] += n
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples from {len(args.files)} file(s)\n")
    print(f"{'incl%':>6} {'self%':>6}  function")
    shown = 0
    for frame, n in inclusive.most_common():
        if args.focus and args.focus not in frame:
            continue
        print(f"{100 * n / total:6.1f} {100 * self_[frame] / total:6.1f}  {frame}")
        shown += 1
        if shown >= args.top:
            break
    print("\ntop self time:")
    for frame, n in self_.most_common(15):
        print(f"{100 * n / total:6.1f}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
