"""How a tool call fails."""

from __future__ import annotations


class ToolError(Exception):
    """The call failed; the model is told why (an error result) and the run goes on."""
