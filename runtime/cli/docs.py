"""``agentrt docs``: the documents a ``documents`` source searches - add, list, remove (SQL
only; no Redis). A document belongs to one tenant and one source; adding the same
``--id`` again replaces its text and bumps its version (evidence names the version a
model was shown). Access labels (``--labels a,b``) limit who sees it: a run whose actor
(``actors:`` in the config) holds one of them."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from runtime.cli.common import EXIT_REFUSED, JsonOpt, emit_json, fail, out, reader
from runtime.cli.params import parse_past

app = typer.Typer(
    help=(
        "Documents the built-in 'documents' retriever searches (README \"Retrieval and "
        'evidence"): per tenant and source, versioned, with access labels.'
    ),
    no_args_is_help=True,
)

#: the largest document ``add`` stores (the model is shown a bounded part of it)
MAX_CONTENT_BYTES = 1024 * 1024
TenantOpt = Annotated[str, typer.Option("--tenant", help="The document's tenant.")]


def _documents(reads: Any) -> Any:
    from runtime.store.documents import DocumentStore

    return DocumentStore(reads.store.engine)


def _content(file: Path | None, text: str | None) -> str:
    if file is not None and text is not None:
        fail("give the content with one of --file, --text or stdin", EXIT_REFUSED)
    if text is not None:
        content = text
    elif file is not None:
        try:
            content = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--file: cannot read {file}: {exc}", EXIT_REFUSED)
    else:
        content = sys.stdin.read()
    if not content.strip():
        fail("the document is empty (--file, --text or stdin)", EXIT_REFUSED)
    if len(content.encode()) > MAX_CONTENT_BYTES:
        fail(f"the document is over {MAX_CONTENT_BYTES} bytes", EXIT_REFUSED)
    return content


def _labels(raw: str | None) -> list[str]:
    labels = [part.strip() for part in (raw or "").split(",") if part.strip()]
    bad = [label for label in labels if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,100}", label)]
    if bad:
        fail(f"--labels: {bad[0]!r} is not a label (letters, digits, _ . : -)", EXIT_REFUSED)
    return labels


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    from runtime.store.documents import decode_labels

    shown = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
    shown.pop("id", None)
    shown.pop("content", None)
    shown["labels"] = decode_labels(row.get("labels"))
    return shown


@app.command("add")
def add(
    tenant: TenantOpt,
    source: Annotated[str, typer.Option("--source", help="The source it belongs to.")],
    title: Annotated[str, typer.Option("--title", help="Its title (searched too).")],
    file: Annotated[
        Path | None, typer.Option("--file", help="Read the content from this file.")
    ] = None,
    text: Annotated[str | None, typer.Option("--text", help="The content itself.")] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Access labels, comma-separated.")
    ] = None,
    doc_id: Annotated[
        str | None,
        typer.Option("--id", help="The document's id: the same id again makes a new version."),
    ] = None,
    updated_at: Annotated[
        datetime | None,
        typer.Option(
            "--updated-at",
            parser=parse_past,
            metavar="TIME",
            help="When it last changed in its own system (ISO-8601, or a duration back "
            "from now like 90d); sources' freshness rules measure from it. Default: now.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a document (content from --file, --text or stdin); print its id and version."""
    for name, value, limit in (
        ("--tenant", tenant, 100),
        ("--source", source, 100),
        ("--title", title, 500),
        ("--id", doc_id, 100),
    ):
        if value is not None and not (0 < len(value) <= limit):
            fail(f"{name}: 1 to {limit} characters", EXIT_REFUSED)
    content = _content(file, text)
    with reader() as reads:
        row = _documents(reads).add(
            tenant_id=tenant,
            source=source,
            title=title,
            content=content,
            labels=_labels(labels),
            doc_id=doc_id,
            updated_at=updated_at,
        )
    if json_out:
        emit_json(_shown(row))
        return
    out.print(f"{row['doc_id']} version {row['version']}", markup=False, highlight=False)


@app.command("list")
def list_(
    tenant: TenantOpt,
    source: Annotated[str | None, typer.Option("--source", help="Only this source.")] = None,
    limit: Annotated[
        int, typer.Option(help="At most this many, newest first.", min=1, max=1000)
    ] = 100,
    json_out: JsonOpt = False,
) -> None:
    """List a tenant's documents (without their content), newest first."""
    with reader() as reads:
        rows = [_shown(r) for r in _documents(reads).listed(tenant, source, limit)]
    if json_out:
        emit_json(rows)
        return
    if not rows:
        out.print("[dim]no documents[/]")
        return
    for r in rows:
        labels = ",".join(r["labels"]) or "-"
        out.print(
            f"{r['doc_id']}  v{r['version']}  {r['source']}  {r['updated_at']}  "
            f"labels {labels}  {r['title']}",
            markup=False,
            highlight=False,
        )


@app.command("remove")
def remove(
    doc_id: Annotated[str, typer.Argument(help="The document's id.")],
    tenant: TenantOpt,
) -> None:
    """Remove a tenant's document; later searches never find it."""
    from runtime.errors import DocumentNotFound

    with reader() as reads:
        try:
            _documents(reads).remove(doc_id, tenant)
        except DocumentNotFound as exc:
            fail(str(exc), EXIT_REFUSED)
    out.print(f"removed {doc_id}", markup=False, highlight=False)
