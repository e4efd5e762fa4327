"""Test support: a real nats-server per test, service processes, polling helpers."""
