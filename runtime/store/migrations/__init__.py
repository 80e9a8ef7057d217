"""Schema migrations (Alembic), shipped with the package and configured in code.

``HEAD`` is the revision this code needs. It is a plain constant so that start-up and the
CLI's plain reads can compare it with a database's ``alembic_version`` without importing
Alembic (a test holds it to the scripts' head). Revisions live in ``versions/``: the
baseline is the schema of commit 98a37a2; each later revision is one schema change.

Revisions after the baseline are written to be re-run safely (each looks before it
creates, adds or alters): a database an older agentrt made with ``create_all`` has no
version, is recognised by what it holds (``runtime.store.migrations.known``), stamped with
the newest revision it fully matches, and upgraded from there - whatever of a later
revision it already has is skipped, never dropped.
"""

from __future__ import annotations

#: the schema revision this code reads and writes
HEAD = "0017_delegation"
#: the schema of commit 98a37a2, the first one under migrations
BASELINE = "0001_baseline"
#: the command that brings a database to ``HEAD`` (named by every refusal)
UPGRADE_COMMAND = "agentrt db upgrade"
