"""Does a model's endpoint answer? ``GET {base_url}/models`` for each model of kind openai.

Used by ``agentrt config check --probe``. The request goes through the same ``openai``
client the proposer builds (same base URL, ``OPENAI_BASE_URL`` fallback and API key), with
a short timeout and no retries; nothing is generated and nothing is spent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from runtime.config import ModelConfig, RuntimeConfig

#: seconds a probe waits for an answer
DEFAULT_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ProbeResult:
    model: str
    #: the URL asked, credentials removed
    url: str
    ok: bool
    #: "ok", "HTTP 404 Not Found", "connection error: [Errno 111] Connection refused", ...
    detail: str


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def probe_model(name: str, model: ModelConfig, timeout_s: float) -> ProbeResult:
    """Ask one model's endpoint for its model list; never raises for a network problem."""
    import openai  # only here: every agentrt command imports this module, few probe

    api_key = os.environ.get(model.api_key_env or "", "") or "not-needed"
    client = openai.OpenAI(
        base_url=model.base_url, api_key=api_key, timeout=timeout_s, max_retries=0
    )
    url = _without_credentials(str(client.base_url).rstrip("/") + "/models")
    missing_key = (
        f" ({model.api_key_env} is not set)"
        if model.api_key_env and not os.environ.get(model.api_key_env)
        else ""
    )
    try:
        with client:
            response = client.models.with_raw_response.list()
        status = response.http_response.status_code
        return ProbeResult(name, url, True, "ok" if status == 200 else f"ok (HTTP {status})")
    except openai.APIStatusError as exc:
        reason = exc.response.reason_phrase
        detail = f"HTTP {exc.status_code}{' ' + reason if reason else ''}{missing_key}"
        return ProbeResult(name, url, False, detail)
    except openai.APITimeoutError:
        return ProbeResult(name, url, False, f"no answer within {timeout_s:g}s")
    except openai.APIConnectionError as exc:
        cause = exc.__cause__ or exc.__context__
        return ProbeResult(name, url, False, _one_line(f"connection error: {cause or exc}"))
    except openai.OpenAIError as exc:
        return ProbeResult(name, url, False, _one_line(f"{type(exc).__name__}: {exc}"))


def probe_models(
    config: RuntimeConfig, timeout_s: float = DEFAULT_PROBE_TIMEOUT_S
) -> list[ProbeResult]:
    """One result per model of kind ``openai``, in the file's order."""
    return [
        probe_model(name, model, timeout_s)
        for name, model in config.models.items()
        if model.kind == "openai"
    ]
