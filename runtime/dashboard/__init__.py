"""The operating dashboard: server-rendered pages (Jinja2, plain forms) over the runtime,
served by ``agentrt api`` under ``/dashboard``."""
