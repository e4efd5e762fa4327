"""``python -m conveyor.receiver``: the HTTP edge of Conveyor."""

from __future__ import annotations

from conveyor.receiver.config import Settings
from conveyor.receiver.service import SPEC
from conveyor.shared.runtime.runner import main as run


def main() -> None:
    run(SPEC, Settings)


if __name__ == "__main__":
    main()
