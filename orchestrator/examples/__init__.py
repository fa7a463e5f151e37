"""Example job specs and datasets (used by `tunectl demo` and the docs)."""
