"""A published site as a browser renders it: headless Chromium reads the DOM and takes a screenshot.

The PNG is kept under test-artifacts/deployer/ (gitignored) to look at after the run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conveyor.shared.testing.browser import chromium_command

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "deployer"


async def chromium(*args: str, profile: Path, timeout: float = 90.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *chromium_command(profile, "--window-size=1280,900", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


async def test_published_site_renders_in_chromium(deployer: Any, site_config: Any, tmp_path: Path) -> None:
    await deployer.store.save_draft(site_config("acme", "Fresh bread, every morning"))
    dep = (await deployer.store.request("acme", "publish")).deployment
    done = await deployer.finished(dep.deployment_id)
    assert done.status == "success", done.error
    url = done.url  # http://acme.localhost:PORT/ : Chromium resolves *.localhost to loopback itself

    dom = await chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
    assert "<title>Acme Bakery</title>" in dom
    assert '<h1 id="hero-title">Fresh bread, every morning</h1>' in dom
    assert f'content="{dep.deployment_id}"' in dom  # the live build, not an error page

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / "published-site.png"
    png.unlink(missing_ok=True)
    await chromium(f"--screenshot={png}", url, profile=tmp_path / "profile-shot")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a rendered page, not a blank one
