"""``python -m conveyor.deployer``: run the deployment pipeline until SIGTERM."""

from __future__ import annotations

from conveyor.deployer.config import Settings
from conveyor.deployer.service import SPEC
from conveyor.shared.runtime.runner import main as run


def main() -> None:
    run(SPEC, Settings)


if __name__ == "__main__":
    main()
