"""Worked examples built on the runtime (not part of the installed package)."""
