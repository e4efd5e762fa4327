"""Tools an LLM agent may call, each granted by name in the agent's ``tools``:

- ``http_fetch``: GET a URL whose host is in the agent's ``allowed_hosts`` (SSRF guard applied);
- ``github``: read a pull request's files and diff, post a comment on it;
- ``slack``: post a message (chat.postMessage);
- ``delegate``: run another agent of the job's project on a task and wait for its result.

The toolbox (``box.Toolbox``) runs them and writes every call to the job's log. This module
imports nothing so the registry can check names against it.
"""

from __future__ import annotations

TOOL_NAMES = ("http_fetch", "github", "slack", "delegate")
