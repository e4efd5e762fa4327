"""``python -m conveyor.executor``: run the executor until SIGTERM."""

from __future__ import annotations

from conveyor.executor.config import Settings
from conveyor.executor.service import SPEC
from conveyor.shared.runtime.runner import main as run


def main() -> None:
    run(SPEC, Settings)


if __name__ == "__main__":
    main()
