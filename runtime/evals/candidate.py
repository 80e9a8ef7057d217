"""A candidate policy file: a YAML file with the shape of the deployment file's ``policy:``
section, or a whole deployment file (its ``policy:`` is taken). It is checked as the
deployment file is (every rule's references against the current config), so a candidate
that would not start is refused here, naming the bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.config import PolicyConfig, RuntimeConfig, config_document, parse_config
from runtime.config_loader import read_yaml
from runtime.errors import ConfigError


def candidate_policy(path: Path) -> dict[str, Any]:
    """The raw policy section of ``path`` (``ConfigError`` naming the file otherwise)."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the candidate must be a YAML mapping"])
    if "policy" in data:
        policy = data["policy"]
        if not isinstance(policy, dict):
            raise ConfigError(str(path), ["policy: must be a mapping"])
        return policy
    if "version" not in data:
        raise ConfigError(
            str(path), ["neither a policy section (version, default, rules) nor a deployment file"]
        )
    return data


def with_policy(config: RuntimeConfig, path: Path) -> RuntimeConfig:
    """``config`` with the candidate policy of ``path``, validated as a whole file."""
    document = config_document(config)
    document["policy"] = candidate_policy(path)
    try:
        return parse_config(document, str(path))
    except ConfigError as exc:
        raise ConfigError(str(path), exc.problems) from None


def candidate_of(config: RuntimeConfig, path: Path) -> PolicyConfig:
    return with_policy(config, path).policy
