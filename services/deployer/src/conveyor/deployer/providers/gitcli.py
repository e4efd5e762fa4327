"""The git command line, run without a shell, without user or system config, with a fixed identity."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

IDENTITY = {
    "GIT_AUTHOR_NAME": "Conveyor Deployer",
    "GIT_AUTHOR_EMAIL": "deployer@conveyor.invalid",
    "GIT_COMMITTER_NAME": "Conveyor Deployer",
    "GIT_COMMITTER_EMAIL": "deployer@conveyor.invalid",
}


class GitError(Exception):
    def __init__(self, args: tuple[str, ...], code: int, stderr: str) -> None:
        super().__init__(f"git {' '.join(args[:3])} exited {code}: {stderr.strip()[:500]}")
        self.code = code
        self.stderr = stderr


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    return {
        **keep,
        **IDENTITY,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "HOME": os.devnull,
        **(extra or {}),
    }


async def git(
    *args: str,
    git_dir: Path | None = None,
    work_tree: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 60.0,
    check: bool = True,
) -> bytes:
    """Run git and return its stdout; raise :class:`GitError` on a non-zero exit when ``check``."""
    argv = ["git"]
    if git_dir is not None:
        argv.append(f"--git-dir={git_dir}")
    if work_tree is not None:
        argv.append(f"--work-tree={work_tree}")
    argv.extend(args)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(env),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if check and proc.returncode != 0:
        raise GitError(tuple(args), proc.returncode or -1, err.decode(errors="replace"))
    return out
