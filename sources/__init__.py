"""telediag.sources."""
