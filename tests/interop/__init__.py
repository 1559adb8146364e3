"""Interoperability tests: enlace against programs written independently of it."""
