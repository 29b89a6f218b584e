"""`python welkin_dash/alive.py FILE SECONDS`: exit 0 when FILE was touched within SECONDS
(the worker's and beat's liveness probe; see welkin_dash/celery.py). Standard library only,
run as a script (not -m, which would import the package and Celery), so the probe
costs a bare interpreter start."""

import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python welkin_dash/alive.py FILE SECONDS", file=sys.stderr)
        return 2
    path, limit = argv[0], float(argv[1])
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError as e:
        print(f"not alive: {path}: {e.strerror}", file=sys.stderr)
        return 1
    if age > limit:
        print(
            f"not alive: {path} last touched {age:.0f}s ago (limit {limit:.0f}s)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
