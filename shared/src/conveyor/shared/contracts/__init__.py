"""Contracts: what the services agree on and nothing else.

Messages and records (events, deploys, schedules), subjects, streams' names and headers
(subjects), ids, the errors a handler raises to steer settlement (errors), and a job
record's lifecycle (lifecycle). No I/O here, and no import of another layer.
"""
