"""The HTTP entry point (FastAPI). Routers here take the façade and are mounted by the app."""
