"""Which secrets sign a callback: the endpoint's own, else the defaults."""

from __future__ import annotations

from yarl import URL


class SigningKeys:
    def __init__(self, default: list[str], per_endpoint: dict[str, list[str]]) -> None:
        self.default = default
        self.per_endpoint = per_endpoint

    def for_url(self, url: str) -> list[str]:
        """Exact URL, then scheme://host[:port], then host; else the default secrets."""
        if not self.per_endpoint:
            return self.default
        if (found := self.per_endpoint.get(url.rstrip("/"))) is not None:
            return found
        try:
            u = URL(url)
        except (ValueError, TypeError):
            return self.default
        port = f":{u.explicit_port}" if u.explicit_port else ""
        for key in (f"{u.scheme}://{u.host}{port}", f"{u.scheme}://{u.host}", u.host or ""):
            if (found := self.per_endpoint.get(key)) is not None:
                return found
        return self.default
