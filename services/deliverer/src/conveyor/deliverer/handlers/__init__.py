"""Message handlers: results to callbacks, and test sends."""
