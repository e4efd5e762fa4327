"""What a model's tokens cost: the PRICES setting over the defaults below.

Prices are US dollars per million tokens, input and output apart. A model is looked up by
its exact name, else by the longest configured name it starts with, so the dated names the
APIs answer with (``gpt-4o-mini-2024-07-18``, ``claude-sonnet-4-5-20250929``) find their
family. A model with no price is counted at 0 USD (its tokens are still counted) and logged
once, so a missing price shows in the log rather than as a silent zero forever; unless the
backend reported the cost itself (``TokenUsage.cost_usd``: some gateways answer it), which is
then kept. A priced model's cost is always the table's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgspec

from conveyor.shared.contracts.events import TokenUsage

log = logging.getLogger(__name__)


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    input_per_mtok_usd: float
    output_per_mtok_usd: float


# The providers' published list prices when this table was written; set PRICES for your own
# (negotiated prices, other models). Documented in services/executor/README.md.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input_per_mtok_usd=2.50, output_per_mtok_usd=10.00),
    "gpt-4o-mini": ModelPrice(input_per_mtok_usd=0.15, output_per_mtok_usd=0.60),
    "gpt-4.1": ModelPrice(input_per_mtok_usd=2.00, output_per_mtok_usd=8.00),
    "gpt-4.1-mini": ModelPrice(input_per_mtok_usd=0.40, output_per_mtok_usd=1.60),
    "claude-sonnet-4-5": ModelPrice(input_per_mtok_usd=3.00, output_per_mtok_usd=15.00),
    "claude-opus-4-1": ModelPrice(input_per_mtok_usd=15.00, output_per_mtok_usd=75.00),
    "claude-haiku-4-5": ModelPrice(input_per_mtok_usd=1.00, output_per_mtok_usd=5.00),
}


class Prices:
    def __init__(self, configured: Mapping[str, ModelPrice]) -> None:
        self.table = {**DEFAULT_PRICES, **configured}
        # Longest names first: "gpt-4o-mini-2024-07-18" is gpt-4o-mini, not gpt-4o.
        self._prefixes = sorted(self.table, key=len, reverse=True)
        self._unpriced: set[str] = set()

    def price(self, model: str) -> ModelPrice | None:
        found = self.table.get(model)
        if found is not None:
            return found
        for name in self._prefixes:
            if model.startswith(name):
                return self.table[name]
        return None

    def priced(self, usage: TokenUsage) -> TokenUsage:
        """``usage`` with its cost from the table (0 for a model without a price)."""
        price = self.price(usage.model)
        if price is None and usage.cost_usd > 0:
            return usage  # no price here, but the API said what it cost (some gateways do)
        if price is None:
            if usage.model not in self._unpriced and len(self._unpriced) < 1000:
                self._unpriced.add(usage.model)
                log.warning(
                    "no price for model %r: its tokens are counted at 0 USD (set PRICES)", usage.model
                )
            return msgspec.structs.replace(usage, cost_usd=0.0)
        cost = (
            usage.input_tokens * price.input_per_mtok_usd + usage.output_tokens * price.output_per_mtok_usd
        ) / 1_000_000
        return msgspec.structs.replace(usage, cost_usd=cost)


def add(total: TokenUsage | None, more: TokenUsage) -> TokenUsage:
    """The sum of a job's usage; ``model`` lists the models it used, in first-use order."""
    if total is None:
        return more
    models = total.model.split(",") if total.model else []
    if more.model and more.model not in models:
        models.append(more.model)
    return TokenUsage(
        model=",".join(models),
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        cost_usd=total.cost_usd + more.cost_usd,
    )
