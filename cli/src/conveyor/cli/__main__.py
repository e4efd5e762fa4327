"""``conveyor``: operator commands."""

from __future__ import annotations

import sys


def main() -> None:
    print("usage: conveyor dlq {list,show,replay,purge}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
