"""The local provider (default, offline): git repository, immutable releases, atomic live switch.

Layout under DATA_DIR, per site::

    <slug>/repo.git           bare repository; main = what went live, preview/<id> = previews
    <slug>/releases/<id>/     one immutable build per deployment (read-only files)
    <slug>/live               symlink to releases/<id>, replaced atomically by rename

The deployer's HTTP server serves ``live`` at http://{slug}.{domain}:PORT/ and any release at
http://{id}--{slug}.{domain}:PORT/ (see :mod:`conveyor.deployer.sitehost`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from conveyor.deployer.providers.base import Outputs, Provider, ProviderError, StepContext
from conveyor.deployer.providers.gitcli import GitError, git
from conveyor.deployer.render import render_site

log = logging.getLogger(__name__)

MARKER = ".conveyor-release.json"
TRAILER = "Conveyor-Deployment"


def site_dir(root: Path, slug: str) -> Path:
    return root / slug


def release_dir(root: Path, slug: str, release: str) -> Path:
    return root / slug / "releases" / release


def live_link(root: Path, slug: str) -> Path:
    return root / slug / "live"


class LocalProvider(Provider):
    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        url_for: Callable[[str, str | None], str],
        health_url: Callable[[], str],
        host_for: Callable[[str, str | None], str],
        keep_releases: int = 5,
        health_timeout_s: float = 10.0,
    ) -> None:
        self.root = root
        self.url_for = url_for  # (slug, release or None for live) -> public URL
        self.host_for = host_for  # (slug, release or None) -> Host header
        self.health_url = health_url  # where this process serves sites, for the health check
        self.keep_releases = keep_releases
        self.health_timeout_s = health_timeout_s

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # --- creating_repo -----------------------------------------------------------------------

    async def create_repo(self, ctx: StepContext) -> Outputs:
        repo = site_dir(self.root, ctx.slug) / "repo.git"
        if not (repo / "HEAD").exists():
            repo.parent.mkdir(parents=True, exist_ok=True)
            # Initialise beside it and rename: a crash never leaves a half-made repository.
            tmp = repo.parent / f".repo-{uuid.uuid4().hex[:8]}.git"
            await git("init", "--bare", "--quiet", "--initial-branch=main", str(tmp))
            try:
                os.rename(tmp, repo)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not (repo / "HEAD").exists():
                    raise
        return {"repo": str(repo)}

    # --- committing_config --------------------------------------------------------------------

    async def commit_config(self, ctx: StepContext) -> Outputs:
        repo = site_dir(self.root, ctx.slug) / "repo.git"
        branch = f"preview/{ctx.deployment_id}" if ctx.preview else "main"
        ref = f"refs/heads/{branch}"
        head = await self._rev(repo, ref)
        # Idempotent: if this deployment's commit is already there, reuse it.
        if head is not None:
            body = (await git("log", "-1", "--format=%B", head, git_dir=repo)).decode()
            if f"{TRAILER}: {ctx.deployment_id}" in body:
                return {"commit_sha": head, "branch": branch}
        parent = head if head is not None else await self._rev(repo, "refs/heads/main")
        build_id = ctx.artifact_of.external["artifact"] if ctx.artifact_of else ctx.deployment_id
        files = render_site(ctx.config, build_id)
        work = self.root / ".work" / ctx.deployment_id
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            for name, data in files.items():
                (work / name).write_bytes(data)
            env = {"GIT_INDEX_FILE": str(work.parent / f"{ctx.deployment_id}.index")}
            await git("add", "--all", ".", git_dir=repo, work_tree=work, cwd=work, env=env)
            tree = (await git("write-tree", git_dir=repo, env=env)).decode().strip()
        finally:
            shutil.rmtree(work, ignore_errors=True)
            (work.parent / f"{ctx.deployment_id}.index").unlink(missing_ok=True)
        title = {
            "publish": f"Publish {ctx.config.name}",
            "preview": f"Preview {ctx.config.name}",
            "rollback": f"Roll back to {ctx.record.rollback_of}",
        }[ctx.record.kind]
        message = (
            f"{title}\n\n{TRAILER}: {ctx.deployment_id}\nConveyor-Kind: {ctx.record.kind}\n"
            f"Conveyor-Config-Hash: {ctx.record.config_hash}\n"
        )
        args = ["commit-tree", tree, "-F", "-"]
        if parent is not None:
            args[2:2] = ["-p", parent]
        sha = (await git(*args, git_dir=repo, stdin=message.encode())).decode().strip()
        # Compare-and-set on the branch: the expected old value ("" = must not exist).
        await git("update-ref", "-m", title, ref, sha, head or "", git_dir=repo)
        return {"commit_sha": sha, "branch": branch}

    async def _rev(self, repo: Path, ref: str) -> str | None:
        out = await git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", git_dir=repo, check=False)
        sha = out.decode().strip()
        return sha or None

    # --- creating_service ---------------------------------------------------------------------

    async def create_service(self, ctx: StepContext) -> Outputs:
        (site_dir(self.root, ctx.slug) / "releases").mkdir(parents=True, exist_ok=True)
        return {"service": f"local:{ctx.slug}"}

    # --- building -------------------------------------------------------------------------------

    async def build(self, ctx: StepContext) -> Outputs:
        sha = ctx.external.get("commit_sha")
        if not sha:
            raise ProviderError("no commit to build")
        repo = site_dir(self.root, ctx.slug) / "repo.git"
        final = release_dir(self.root, ctx.slug, ctx.deployment_id)
        if (final / MARKER).exists():
            return {"release": ctx.deployment_id, "artifact": ctx.deployment_id, "commit_sha_built": sha}
        try:
            archive = await git("archive", "--format=tar", sha, git_dir=repo)
        except GitError as exc:
            raise ProviderError(f"cannot archive {sha}: {exc}") from exc
        tmp = final.parent / f".tmp-{ctx.deployment_id}-{uuid.uuid4().hex[:6]}"
        marker = {"deployment_id": ctx.deployment_id, "commit_sha": sha, "site": ctx.slug}
        await asyncio.to_thread(_extract_release, archive, tmp, marker)
        try:
            os.rename(tmp, final)  # a release appears whole or not at all
        except OSError:
            await asyncio.to_thread(_remove_tree, tmp)
            if not (final / MARKER).exists():
                raise
        return {"release": ctx.deployment_id, "artifact": ctx.deployment_id, "commit_sha_built": sha}

    # --- deploying --------------------------------------------------------------------------------

    async def deploy(self, ctx: StepContext) -> Outputs:
        artifact = ctx.external.get("artifact")
        if not artifact:
            raise ProviderError("nothing was built to deploy")
        release = release_dir(self.root, ctx.slug, artifact)
        if not (release / MARKER).exists():
            raise ProviderError(f"release {artifact} is no longer available (cleaned up)")
        await self._health_check(ctx.slug, artifact)
        if ctx.preview:
            return {"url": self.url_for(ctx.slug, artifact), "preview_release": artifact}
        link = live_link(self.root, ctx.slug)
        tmp = link.with_name(f".live-{uuid.uuid4().hex[:8]}")
        os.symlink(Path("releases") / artifact, tmp)
        os.replace(tmp, link)  # rename(2) over the old link: readers see old or new, never neither
        removed = await asyncio.to_thread(self._cleanup, ctx.slug, artifact)
        out = {"url": self.url_for(ctx.slug, None), "live_release": artifact}
        if removed:
            out["cleaned_releases"] = ",".join(removed)
        return out

    async def _health_check(self, slug: str, release: str) -> None:
        """GET the release through this process's own site server, as a visitor would."""
        host = self.host_for(slug, release)
        want = f'<meta name="conveyor-build" content="{release}">'
        error = "no answer"
        deadline = asyncio.get_running_loop().time() + self.health_timeout_s
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                try:
                    r = await client.get(self.health_url(), headers={"Host": host})
                    if r.status_code == 200 and want in r.text and "<title>" in r.text:
                        return
                    error = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                if asyncio.get_running_loop().time() > deadline:
                    raise ProviderError(f"health check of release {release} failed: {error}")
                await asyncio.sleep(0.2)

    def _cleanup(self, slug: str, live: str) -> list[str]:
        """Remove releases beyond the newest ``keep_releases`` (never the live one)."""
        releases = site_dir(self.root, slug) / "releases"
        built = [p for p in releases.iterdir() if p.is_dir() and (p / MARKER).exists()]
        built.sort(key=lambda p: (p / MARKER).stat().st_mtime, reverse=True)
        keep = {p.name for p in built[: self.keep_releases]} | {live}
        removed = []
        for p in built:
            if p.name not in keep:
                _remove_tree(p)
                removed.append(p.name)
        for p in releases.glob(".tmp-*"):  # leftovers of builds killed mid-extract
            _remove_tree(p)
        if removed:
            log.info("removed old releases of %s: %s", slug, ", ".join(removed))
        return removed


def _extract_release(archive: bytes, dest: Path, marker: dict[str, str]) -> None:
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    (dest / MARKER).write_text(json.dumps(marker))
    for path in dest.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # immutable once built


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
