"""telediag.engine."""
