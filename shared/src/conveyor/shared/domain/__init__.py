"""Domain rules shared by more than one service (each module says who uses it).

Dead letters (receiver API, CLI), deployments' store (receiver, deployer), integration
status (receiver, deliverer), rate limits (receiver, executor), tenancy: organisations,
projects and their access (every service), sealing of secrets, webhook and callback signing.
They use the bus and the contracts, never a service.
"""
