"""Releases: named version sets routes run under, canaries, promote and rollback
(``runtime.release_sets`` holds the pure decisions, ``live`` the state every process
reads, ``api`` the operator's changes)."""

from __future__ import annotations

from runtime.release_sets import config_for

__all__ = ["config_for"]
