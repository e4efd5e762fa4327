"""``python -m conveyor.deliverer``: run the deliverer until SIGTERM."""

from __future__ import annotations

from conveyor.deliverer.config import Settings
from conveyor.deliverer.service import SPEC
from conveyor.shared.runtime.runner import main as run


def main() -> None:
    run(SPEC, Settings)


if __name__ == "__main__":
    main()
