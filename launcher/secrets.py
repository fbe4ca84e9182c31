"""secrets.py: the one rule for what is a secret. Values under such names never reach spec.json, run.json,
logs, argv or scripts in plain text (container.env values travel in the runtime's environment, runs/<id>/container.json
is 0600)."""

from __future__ import annotations

import re

# Keys whose values are credentials: never written in plain text to spec.json, run.json, logs or scripts.
SECRET_KEY_RE = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL", re.IGNORECASE)
# engine_args keys that hold a credential (hf_token, api_key, ...), but not max_num_batched_tokens and friends.
SECRET_ARG_RE = re.compile(r"(?:^|_)(?:token|secret|password|passwd|key|credential)$", re.IGNORECASE)
REDACTED = "<redacted>"


def is_secret_name(name: str) -> bool:
    """An environment variable or mapping key whose value is a credential (HF_TOKEN, API_KEY, DB_PASSWORD...)."""
    return bool(SECRET_KEY_RE.search(name))


def is_secret_arg(name: str) -> bool:
    """An engine argument that holds a credential (hf_token, api_key), not max_num_batched_tokens and friends."""
    return bool(SECRET_ARG_RE.search(name))
