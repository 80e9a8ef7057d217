"""Alembic revision scripts (loaded by Alembic by path; the package marker is for tools)."""
