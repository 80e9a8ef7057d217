"""A small web app that enqueues agentrt runs, shows them live, and lets a person decide
the actions that wait for approval. Serve it with
``uvicorn examples.webapp.app:from_env --factory`` beside an ``agentrt worker`` (README)."""
