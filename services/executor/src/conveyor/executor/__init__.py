"""Conveyor executor: routes events to agents and runs them (timeouts, retries, cancellation, fan-out)."""
