"""The service runtime: what every service runs on.

The runner (start and stop order, ``Runtime`` with ``rt.bus``, ``rt.consume``), HTTP
(errors as JSON, health, metrics), logs, telemetry (traces, ``traceparent``), settings
(config), and URL checks and redaction (urls).
"""
