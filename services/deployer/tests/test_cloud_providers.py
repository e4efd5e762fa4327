"""The github, lightsail and dns providers through the real pipeline.

Route53 and ECR are moto (in-process, via boto3). GitHub and Lightsail are local aiohttp
servers that follow the documented request and response formats: GitHub's REST API (App
JWT -> installation token, template generation that finishes asynchronously, contents API
with blob shas and 409 on a stale one, workflow_dispatch answering 204 with no run id, rate
limiting) and Lightsail's JSON 1.1 API (X-Amz-Target, NotFoundException, ThrottlingException,
services PENDING -> READY -> DEPLOYING -> RUNNING, deployments ACTIVATING -> ACTIVE).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto import mock_aws

from conveyor.shared.runtime.config import Secret
from conveyor.shared.testing.rawhttp import serve_app

# --- a GitHub that follows the REST API's documented behaviour -----------------------------------


@dataclass
class Repo:
    full_name: str
    ready_after: int  # branch GETs answered 404 before the template copy "finishes"
    branches: dict[str, str] = field(default_factory=dict)  # name -> head commit sha
    files: dict[tuple[str, str], tuple[bytes, str]] = field(
        default_factory=dict
    )  # (branch, path) -> (data, blob)
    commits: list[tuple[str, str, str]] = field(default_factory=list)  # (sha, branch, message)


@dataclass
class FakeGitHub:
    public_key: Any
    app_id: str = "4242"
    installation_id: str = "77"
    repos: dict[str, Repo] = field(default_factory=dict)
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    run_polls: dict[int, int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    dispatches: list[dict[str, Any]] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    throttle_next: dict[str, int] = field(default_factory=dict)  # route name -> 429s to answer first
    stale_next_put: int = 0  # PUTs answered 409 as if someone committed in between
    conclusion: str = "success"
    on_dispatch: Callable[[str, dict[str, Any]], None] | None = None
    _seq: Any = field(default_factory=lambda: itertools.count(1000))

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_post("/app/installations/{inst}/access_tokens", self.token)
        r.add_post("/repos/{owner}/{name}/generate", self.generate)
        r.add_get("/repos/{owner}/{name}", self.get_repo)
        r.add_get("/repos/{owner}/{name}/branches/{branch:.+}", self.get_branch)
        r.add_get("/repos/{owner}/{name}/git/ref/heads/{branch:.+}", self.get_ref)
        r.add_post("/repos/{owner}/{name}/git/refs", self.create_ref)
        r.add_get("/repos/{owner}/{name}/contents/{path}", self.get_contents)
        r.add_put("/repos/{owner}/{name}/contents/{path}", self.put_contents)
        r.add_get("/repos/{owner}/{name}/commits/{ref:.+}", self.get_commit)
        r.add_post("/repos/{owner}/{name}/actions/workflows/{wf}/dispatches", self.dispatch)
        r.add_get("/repos/{owner}/{name}/actions/workflows/{wf}/runs", self.list_runs)
        r.add_get("/repos/{owner}/{name}/actions/runs/{run_id}", self.get_run)
        return app

    @staticmethod
    def _error(status: int, message: str, **extra: Any) -> web.Response:
        body = {"message": message, "documentation_url": "https://docs.github.com/rest", **extra}
        return web.json_response(body, status=status)

    def _check(self, request: web.Request, route: str) -> web.Response | None:
        self.calls.append((request.method, route))
        if request.headers.get("X-GitHub-Api-Version") != "2022-11-28":
            return self._error(400, "missing X-GitHub-Api-Version")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return self._error(401, "Bad credentials")
        if self.throttle_next.get(route, 0) > 0:
            self.throttle_next[route] -= 1
            resp = self._error(429, "API rate limit exceeded")
            resp.headers["Retry-After"] = "1"
            return resp
        return None

    async def token(self, request: web.Request) -> web.Response:
        raw = request.headers.get("Authorization", "")[7:]
        try:
            claims = jwt.decode(
                raw, self.public_key, algorithms=["RS256"], options={"require": ["iat", "exp", "iss"]}
            )
        except jwt.PyJWTError as exc:
            return self._error(401, f"A JSON web token could not be decoded: {exc}")
        if claims["iss"] != self.app_id or claims["exp"] - claims["iat"] > 600:
            return self._error(401, "'Expiration time' claim ('exp') is too far in the future")
        if request.match_info["inst"] != self.installation_id:
            return self._error(404, "Not Found")
        token = f"ghs_{next(self._seq)}"
        self.tokens.add(token)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        return web.json_response({"token": token, "expires_at": expires, "permissions": {}}, status=201)

    def _repo(self, request: web.Request) -> Repo | None:
        return self.repos.get(f"{request.match_info['owner']}/{request.match_info['name']}")

    def _commit(self, repo: Repo, branch: str, message: str) -> str:
        sha = hashlib.sha1(f"{repo.full_name}{branch}{message}{next(self._seq)}".encode()).hexdigest()
        repo.branches[branch] = sha
        repo.commits.append((sha, branch, message))
        return sha

    async def generate(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "generate")) is not None:
            return err
        body = await request.json()
        full = f"{body['owner']}/{body['name']}"
        if full in self.repos:
            return self._error(
                422,
                "Repository creation failed.",
                errors=[
                    {
                        "resource": "Repository",
                        "code": "custom",
                        "field": "name",
                        "message": "name already exists on this account",
                    }
                ],
            )
        self.repos[full] = Repo(full_name=full, ready_after=2)
        return web.json_response(
            {"full_name": full, "html_url": f"https://github.com/{full}", "private": body["private"]},
            status=201,
        )

    async def get_repo(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "get_repo")) is not None:
            return err
        repo = self._repo(request)
        if repo is None:
            return self._error(404, "Not Found")
        return web.json_response(
            {"full_name": repo.full_name, "html_url": f"https://github.com/{repo.full_name}"}
        )

    async def get_branch(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "get_branch")) is not None:
            return err
        repo = self._repo(request)
        branch = request.match_info["branch"]
        if repo is None:
            return self._error(404, "Not Found")
        if repo.ready_after > 0:  # the template is still being copied
            repo.ready_after -= 1
            return self._error(404, "Branch not found")
        if not repo.branches:
            self._commit(repo, "main", "Initial commit (from template)")
        if branch not in repo.branches:
            return self._error(404, "Branch not found")
        return web.json_response({"name": branch, "commit": {"sha": repo.branches[branch]}})

    async def get_ref(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "get_ref")) is not None:
            return err
        repo = self._repo(request)
        branch = request.match_info["branch"]
        if repo is None or branch not in repo.branches:
            return self._error(404, "Not Found")
        return web.json_response({"ref": f"refs/heads/{branch}", "object": {"sha": repo.branches[branch]}})

    async def create_ref(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "create_ref")) is not None:
            return err
        repo = self._repo(request)
        body = await request.json()
        branch = body["ref"].removeprefix("refs/heads/")
        assert repo is not None
        if branch in repo.branches:
            return self._error(422, "Reference already exists")
        repo.branches[branch] = body["sha"]
        for (b, path), value in list(repo.files.items()):
            if b == "main":
                repo.files[(branch, path)] = value
        return web.json_response({"ref": body["ref"], "object": {"sha": body["sha"]}}, status=201)

    async def get_contents(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "get_contents")) is not None:
            return err
        repo = self._repo(request)
        assert repo is not None
        found = repo.files.get((request.query.get("ref", "main"), request.match_info["path"]))
        if found is None:
            return self._error(404, "Not Found")
        data, blob = found
        return web.json_response(
            {"type": "file", "encoding": "base64", "sha": blob, "content": base64.encodebytes(data).decode()}
        )

    async def put_contents(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "put_contents")) is not None:
            return err
        repo = self._repo(request)
        assert repo is not None
        body = await request.json()
        branch, path = body.get("branch", "main"), request.match_info["path"]
        current = repo.files.get((branch, path))
        if self.stale_next_put > 0 and current is not None:
            # Someone else committed the file between our read and our write.
            self.stale_next_put -= 1
            repo.files[(branch, path)] = (current[0] + b" ", hashlib.sha1(current[0] + b" ").hexdigest())
            current = repo.files[(branch, path)]
        if current is not None and "sha" not in body:
            return self._error(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
        if current is not None and body["sha"] != current[1]:
            return self._error(409, f"{path} does not match {body['sha']}")
        data = base64.b64decode(body["content"])
        blob = hashlib.sha1(data).hexdigest()
        repo.files[(branch, path)] = (data, blob)
        sha = self._commit(repo, branch, body["message"])
        status = 200 if current is not None else 201
        return web.json_response(
            {"content": {"path": path, "sha": blob}, "commit": {"sha": sha}}, status=status
        )

    async def get_commit(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "get_commit")) is not None:
            return err
        repo = self._repo(request)
        assert repo is not None
        return web.json_response({"sha": repo.branches[request.match_info["ref"]]})

    async def dispatch(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "dispatch")) is not None:
            return err
        body = await request.json()
        repo = self._repo(request)
        assert repo is not None and body["ref"] in repo.branches
        run_id = next(self._seq)
        self.dispatches.append(body)
        self.runs[run_id] = {
            "id": run_id,
            "repo": repo.full_name,
            "display_title": f"Deploy {body['inputs']['deployment_id']}",  # deploy.yml's run-name
            "head_branch": body["ref"],
            "head_sha": repo.branches[body["ref"]],
            "event": "workflow_dispatch",
            "status": "queued",
            "conclusion": None,
            "html_url": f"https://github.com/{repo.full_name}/actions/runs/{run_id}",
        }
        self.run_polls[run_id] = 0
        return web.Response(status=204)

    async def list_runs(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "list_runs")) is not None:
            return err
        runs = [r for r in self.runs.values() if r["head_branch"] == request.query.get("branch")]
        return web.json_response({"total_count": len(runs), "workflow_runs": runs[::-1]})

    async def get_run(self, request: web.Request) -> web.Response:
        if (err := self._check(request, "get_run")) is not None:
            return err
        run = self.runs[int(request.match_info["run_id"])]
        self.run_polls[run["id"]] += 1
        polls = self.run_polls[run["id"]]
        if polls == 1:
            run["status"] = "in_progress"
        elif polls >= 3 and run["status"] != "completed":
            run.update(status="completed", conclusion=self.conclusion)
            if self.conclusion == "success" and self.on_dispatch:
                self.on_dispatch(run["head_sha"], run)  # the workflow pushed its image
        return web.json_response(run)


# --- a Lightsail that follows the JSON 1.1 API --------------------------------------------------


@dataclass
class FakeLightsail:
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    throttle_next: dict[str, int] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.handle)
        return app

    @staticmethod
    def _error(kind: str, message: str, status: int = 400) -> web.Response:
        return web.Response(
            status=status,
            body=json.dumps({"__type": kind, "message": message}).encode(),
            content_type="application/x-amz-json-1.1",
        )

    async def handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        assert target.startswith("Lightsail_20161128."), target
        assert request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 ")
        op = target.split(".", 1)[1]
        body = json.loads(await request.read() or b"{}")
        self.calls.append((op, body))
        if self.throttle_next.get(op, 0) > 0:
            self.throttle_next[op] -= 1
            return self._error("ThrottlingException", "Rate exceeded")
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            return self._error("InvalidInputException", f"{op} is not supported here")
        result = handler(body)
        if isinstance(result, web.Response):
            return result
        return web.Response(body=json.dumps(result).encode(), content_type="application/x-amz-json-1.1")

    def _advance(self, name: str) -> None:
        """Each read moves a service one state on, as the real one does over minutes."""
        svc = self.services[name]
        self.polls[name] = self.polls.get(name, 0) + 1
        if svc["state"] == "PENDING" and self.polls[name] >= 2:
            svc["state"] = "READY"
        elif svc["state"] == "DEPLOYING" and self.polls[name] >= 2:
            nxt = svc.pop("nextDeployment")
            for d in self.deployments[name]:
                if d["state"] == "ACTIVE":
                    d["state"] = "INACTIVE"
            nxt["state"] = "ACTIVE"
            svc["currentDeployment"] = nxt
            svc["state"] = "RUNNING"
            svc["url"] = f"https://{name}.a1b2c3.us-east-1.cs.amazonlightsail.com/"

    def op_GetContainerServices(self, body: dict[str, Any]) -> Any:
        name = body.get("serviceName")
        if name is None:
            return {"containerServices": list(self.services.values())}
        if name not in self.services:
            return self._error("NotFoundException", f"The container service {name} does not exist.")
        self._advance(name)
        return {"containerServices": [self.services[name]]}

    def op_CreateContainerService(self, body: dict[str, Any]) -> Any:
        name = body["serviceName"]
        if name in self.services:
            return self._error("InvalidInputException", f"A container service named {name} already exists.")
        self.services[name] = {
            "containerServiceName": name,
            "arn": f"arn:aws:lightsail:us-east-1:123456789012:ContainerService/{name}",
            "power": body["power"],
            "scale": body["scale"],
            "state": "PENDING",
            "isDisabled": False,
        }
        self.deployments[name] = []
        self.polls[name] = 0
        return {"containerService": self.services[name]}

    def op_CreateContainerServiceDeployment(self, body: dict[str, Any]) -> Any:
        name = body["serviceName"]
        svc = self.services[name]
        if svc["state"] not in ("READY", "RUNNING"):
            return self._error("InvalidInputException", f"{name} is {svc['state']}")
        version = len(self.deployments[name]) + 1
        dep = {
            "version": version,
            "state": "ACTIVATING",
            "containers": body["containers"],
            "publicEndpoint": body.get("publicEndpoint"),
        }
        self.deployments[name].append(dep)
        svc["nextDeployment"] = dep
        svc["state"] = "DEPLOYING"
        self.polls[name] = 0
        return {"containerService": svc}

    def op_GetContainerServiceDeployments(self, body: dict[str, Any]) -> Any:
        self._advance(body["serviceName"])
        return {"deployments": self.deployments[body["serviceName"]][::-1]}


# --- fixtures -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def http_server(app: web.Application) -> AsyncIterator[str]:
    runner, port = await serve_app(app)
    port = port
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@dataclass
class Cloud:
    github: FakeGitHub
    lightsail: FakeLightsail
    route53: Any
    ecr: Any
    zone_id: str
    settings: dict[str, Any]


ECR_REPO = "conveyor-sites"


@pytest.fixture
async def cloud(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cloud]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    with mock_aws():
        route53 = boto3.client("route53", region_name="us-east-1")
        zone_id = route53.create_hosted_zone(Name="sites.example.", CallerReference="conveyor-test")[
            "HostedZone"
        ]["Id"]
        ecr = boto3.client("ecr", region_name="us-east-1")
        ecr.create_repository(repositoryName=ECR_REPO)

        def push_image(tag: str, _run: dict[str, Any]) -> None:
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": 7,
                    "digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest(),
                },
                "layers": [],
            }
            ecr.put_image(repositoryName=ECR_REPO, imageManifest=json.dumps(manifest), imageTag=tag)

        github = FakeGitHub(public_key=key.public_key(), on_dispatch=push_image)
        lightsail = FakeLightsail()
        async with http_server(github.app()) as gh_url, http_server(lightsail.app()) as ls_url:
            settings = {
                "providers": "github,lightsail,dns",
                "site_domain": "sites.example",
                "github_api_url": gh_url,
                "github_app_id": github.app_id,
                "github_installation_id": github.installation_id,
                "github_private_key": Secret(pem),
                "github_owner": "acme-sites",
                "github_template": "conveyor/site-template",
                "lightsail_endpoint_url": ls_url,
                "route53_zone_id": zone_id,
                "ecr_repository": ECR_REPO,
                "poll_interval_s": 0.02,
            }
            yield Cloud(github, lightsail, route53, ecr, zone_id, settings)


def cname(cloud: Cloud, name: str) -> str | None:
    records = cloud.route53.list_resource_record_sets(HostedZoneId=cloud.zone_id)["ResourceRecordSets"]
    for rec in records:
        if rec["Name"].rstrip(".") == name and rec["Type"] == "CNAME":
            return str(rec["ResourceRecords"][0]["Value"])
    return None


# --- tests ----------------------------------------------------------------------------------------


async def test_publish_republish_and_rollback_on_github_lightsail_route53(
    cloud: Cloud, start_deployer: Any, site_config: Any
) -> None:
    gh, ls = cloud.github, cloud.lightsail
    gh.throttle_next = {"dispatch": 1}  # GitHub rate-limits the first dispatch (429 + Retry-After)
    ls.throttle_next = {"CreateContainerService": 1}  # and Lightsail throttles once
    async with start_deployer(**cloud.settings) as d:
        await d.store.save_draft(site_config("acme", "Version one"))
        first = (await d.store.request("acme", "publish")).deployment
        one = await d.finished(first.deployment_id, timeout=40)
        assert one.status == "success", one.error
        ext = one.external
        assert ext["repo"] == "acme-sites/site-acme"
        repo = gh.repos["acme-sites/site-acme"]
        assert ext["commit_sha"] == repo.branches["main"]
        data, _ = repo.files[("main", "site-config.json")]
        assert json.loads(data)["sections"]["hero"]["headline"] == "Version one"
        assert gh.dispatches[0] == {
            "ref": "main",
            "inputs": {"deployment_id": first.deployment_id, "commit_sha": ext["commit_sha"]},
        }
        assert ext["run_id"] in {str(r) for r in gh.runs}
        assert ext["image"] == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{ECR_REPO}:{ext['commit_sha']}"
        assert ext["artifact"] == ext["image"] and ext["image_digest"].startswith("sha256:")
        created = [b for op, b in ls.calls if op == "CreateContainerService"]
        assert (
            created[-1]["power"] == "nano"
            and created[-1]["scale"] == 1
            and created[-1]["serviceName"] == "acme"
        )
        assert ls.services["acme"]["currentDeployment"]["containers"]["site"]["image"] == ext["image"]
        assert ext["service_version"] == "1"
        assert cname(cloud, "acme.sites.example") == "acme.a1b2c3.us-east-1.cs.amazonlightsail.com"
        assert one.url == "https://acme.sites.example/"
        assert cloud.route53.get_change(Id=ext["dns_change"])["ChangeInfo"]["Status"] == "INSYNC"

        # Second publish: the repo exists (422 on generate), the file has a sha, and someone
        # commits in between once (409 stale sha) before ours lands.
        gh.stale_next_put = 1
        await d.store.save_draft(site_config("acme", "Version two"))
        second = (await d.store.request("acme", "publish")).deployment
        two = await d.finished(second.deployment_id, timeout=40)
        assert two.status == "success", two.error
        assert ("POST", "generate") in gh.calls and len(gh.repos) == 1
        assert (
            json.loads(repo.files[("main", "site-config.json")][0])["sections"]["hero"]["headline"]
            == "Version two"
        )
        assert two.external["service_version"] == "2" and two.external["image"] != ext["image"]

        # Rollback: no workflow run, Lightsail runs the first image again.
        dispatched = len(gh.dispatches)
        rb = (await d.store.request("acme", "rollback", rollback_of=first.deployment_id)).deployment
        back = await d.finished(rb.deployment_id, timeout=40)
        assert back.status == "success", back.error
        assert len(gh.dispatches) == dispatched
        assert back.step("building").status == "skipped"
        assert ls.services["acme"]["currentDeployment"]["containers"]["site"]["image"] == ext["image"]
        assert back.external["service_version"] == "3"

        metrics = await d.metrics()
        assert 'deployments_total{status="success"} 3.0' in metrics


async def test_preview_uses_its_own_branch_and_service(
    cloud: Cloud, start_deployer: Any, site_config: Any
) -> None:
    async with start_deployer(**cloud.settings) as d:
        await d.store.save_draft(site_config("acme", "Live"))
        live = (await d.store.request("acme", "publish")).deployment
        assert (await d.finished(live.deployment_id, timeout=40)).status == "success"
        pv = (await d.store.request("acme", "preview", config=site_config("acme", "Maybe"))).deployment
        done = await d.finished(pv.deployment_id, timeout=40)
        assert done.status == "success", done.error
        repo = cloud.github.repos["acme-sites/site-acme"]
        branch = f"preview/{pv.deployment_id}"
        assert (
            json.loads(repo.files[(branch, "site-config.json")][0])["sections"]["hero"]["headline"] == "Maybe"
        )
        assert (
            json.loads(repo.files[("main", "site-config.json")][0])["sections"]["hero"]["headline"] == "Live"
        )
        assert "acme-preview" in cloud.lightsail.services
        assert cloud.lightsail.services["acme"]["currentDeployment"]["version"] == 1  # live untouched
        assert done.url == "https://acme-preview.a1b2c3.us-east-1.cs.amazonlightsail.com/"
        assert cname(cloud, "acme.sites.example") == "acme.a1b2c3.us-east-1.cs.amazonlightsail.com"


async def test_failed_workflow_run_fails_the_deployment(
    cloud: Cloud, start_deployer: Any, site_config: Any
) -> None:
    cloud.github.conclusion = "failure"
    async with start_deployer(**cloud.settings) as d:
        await d.store.save_draft(site_config("acme"))
        dep = (await d.store.request("acme", "publish")).deployment
        done = await d.finished(dep.deployment_id, timeout=40)
        assert done.status == "failed"
        assert "concluded failure" in (done.error or "") and done.step("building").status == "failed"
        assert "acme" not in cloud.lightsail.deployments or not cloud.lightsail.deployments["acme"]
        assert cname(cloud, "acme.sites.example") is None


async def test_app_jwt_is_rs256_with_short_expiry(cloud: Cloud) -> None:
    import httpx

    from conveyor.deployer.providers.github import GitHubApp

    pem = cloud.settings["github_private_key"].reveal()
    async with httpx.AsyncClient(base_url=cloud.settings["github_api_url"]) as http:
        app = GitHubApp(http, "4242", "77", pem)
        claims = jwt.decode(
            app.app_jwt(now=1_700_000_000),
            cloud.github.public_key,
            algorithms=["RS256"],
            options={"verify_exp": False},
        )
        assert claims == {"iat": 1_699_999_940, "exp": 1_700_000_540, "iss": "4242"}
        token = await app.token()
        assert token in cloud.github.tokens and await app.token() == token  # cached
