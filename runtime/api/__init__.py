"""The HTTP API (FastAPI): an entry point like ``runtime.cli``, built from the composition
root (``Runtime.from_settings``) and started by ``agentrt api``. The domain never imports
it. ``app.create_app`` builds the application; one module per concern:

* ``problems``: RFC 9457 problem documents and the one table of error class -> status;
* ``guards``: request body limit and the last-resort 500 (ASGI middleware);
* ``auth``: ``Authorization: Bearer <key>`` -> the key's principal, scope checks;
* ``runs``, ``operations``, ``events``, ``health``: the routes.
"""
