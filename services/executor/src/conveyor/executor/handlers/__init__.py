"""Message handlers: the router (events -> jobs), the workers (jobs -> results), fan-out
aggregation, cancellation, and the job store they share."""
