"""telediag.models."""
