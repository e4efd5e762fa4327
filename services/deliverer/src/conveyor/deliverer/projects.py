"""Whose callback this is: where it goes, what signs it, what credential it carries.

A result belongs to a project (``JobResult.project``). The default project's callbacks go
where the deployment's settings say (LOVABLE_CALLBACK_URL, CALLBACK_DEFAULT_URLS) and are
signed with CALLBACK_SIGNING_SECRETS (or a per-endpoint secret). Every other project's are
signed with its own callback secrets, never a shared one, and carry its outbound credential
as ``Authorization: Bearer``. Secrets are opened once per version of the project
(conveyor.shared.domain.tenancy.ProjectSecrets) and kept in memory only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conveyor.deliverer.config import Settings
from conveyor.deliverer.signing_keys import SigningKeys
from conveyor.shared.contracts.errors import PermanentError
from conveyor.shared.contracts.events import DEFAULT_PROJECT, JobResult
from conveyor.shared.domain.sealing import Sealer, SealingError
from conveyor.shared.domain.tenancy import Directory, ProjectSecrets


@dataclass(frozen=True, slots=True)
class Signing:
    secrets: list[str]
    credential: str | None = None


@dataclass
class ProjectCallbacks:
    settings: Settings
    directory: Directory
    sealer: Sealer
    keys: SigningKeys
    secrets: ProjectSecrets = field(init=False)

    def __post_init__(self) -> None:
        self.secrets = ProjectSecrets(self.sealer)

    def target(self, job: JobResult) -> str | None:
        return self.target_of(job.project, job.source, job.callback_url)

    def target_of(self, project_id: str, source: str, callback_url: str | None) -> str | None:
        """The job's own URL, else its project's for the source, else (the default project) the
        source's default from the settings."""
        if callback_url:
            return callback_url
        if project_id != DEFAULT_PROJECT:
            project = self.directory.get(project_id)
            return project.callback_for(source) if project is not None else None
        if source == "lovable" and self.settings.lovable_callback_url:
            return self.settings.lovable_callback_url
        return self.settings.callback_default_urls.get(source) or None

    def signing(self, job: JobResult, url: str) -> Signing:
        """The secrets that sign ``job``'s callback; PermanentError when its project is gone or
        has none that open (dead-lettered: a replay after the fix sends it)."""
        return self.signing_for(job.project, url)

    def signing_for(self, project_id: str, url: str) -> Signing:
        """The secrets (and credential) that sign what goes to ``url`` for ``project_id``."""
        if project_id == DEFAULT_PROJECT:
            return Signing(self.keys.for_url(url))
        project = self.directory.get(project_id)
        if project is None:
            raise PermanentError(f"project {project_id!r} does not exist: its callback cannot be signed")
        try:
            secrets = list(self.secrets.open(project, "callback", project.callback_secrets))
            outbound = project.outbound_credential
            credential = self.secrets.open(project, "outbound", [outbound])[0] if outbound else None
        except SealingError as exc:
            raise PermanentError(f"project {project_id!r}: its secrets do not open ({exc})") from None
        if not secrets:
            raise PermanentError(f"project {project_id!r} has no callback signing secret")
        return Signing(secrets, credential)
