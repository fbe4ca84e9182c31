"""inputs/chat.py: the chat and OpenAI-batch shapes of a record.

A record may carry `messages` (OpenAI chat: role + content) instead of profile/history/context, and a JSONL line
of an OpenAI Batch API file ({"custom_id", "method", "url", "body"}) is read as a record too: its custom_id is the
record id, its body's messages (chat) or prompt (completions) the prompt, and its body's sampling fields override
the spec's for that request. Anything malformed is a reason to quarantine the one record, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool")
CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
# body field -> SamplingSpec field (OpenAI's names, and vLLM's extensions the OpenAI server also takes)
BODY_SAMPLING = {
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "ignore_eos": "ignore_eos",
}
# accepted and ignored: they change nothing in the samples we return
BODY_IGNORED = {"model", "user", "stream", "logprobs", "top_logprobs", "metadata", "store", "chat_template_kwargs"}


class NotUsable(ValueError):
    """Why this record cannot be used (the quarantine reason)."""


Message = dict[str, str]


@dataclass(frozen=True)
class BatchRequest:
    """What an OpenAI batch line asks for, beyond its prompt."""

    custom_id: str
    url: str
    model: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # SamplingSpec fields, plus structured / n


def parse_messages(value: Any) -> tuple[Message, ...]:
    """OpenAI chat messages -> ((role, text) dicts); text parts of a content list are joined."""
    if not isinstance(value, list) or not value:
        raise NotUsable("messages must be a non-empty list of {role, content}")
    out: list[Message] = []
    for i, msg in enumerate(value):
        if not isinstance(msg, Mapping):
            raise NotUsable(f"messages[{i}] is not an object with role and content")
        role = msg.get("role")
        if role not in ROLES:
            raise NotUsable(f"messages[{i}].role is {role!r}; allowed: {', '.join(ROLES)}")
        content = msg.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                    raise NotUsable(f"messages[{i}].content has a {kind!r} part; only text parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise NotUsable(f"messages[{i}].content must be text")
        out.append({"role": str(role), "content": content})
    return tuple(out)


def is_batch_line(obj: Mapping[str, Any]) -> bool:
    return "custom_id" in obj and isinstance(obj.get("body"), Mapping)


def parse_batch_line(obj: Mapping[str, Any]) -> tuple[BatchRequest, tuple[Message, ...] | None, str | None]:
    """(request, messages or None, raw prompt or None) of one OpenAI batch line."""
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, (str, int)) or isinstance(custom_id, bool) or not str(custom_id).strip():
        raise NotUsable("custom_id must be a non-empty string")
    method = obj.get("method", "POST")
    if method != "POST":
        raise NotUsable(f"method {method!r}: only POST requests are batch requests")
    url = obj.get("url", CHAT_URL)
    body = obj["body"]
    if url == CHAT_URL:
        messages, prompt = parse_messages(body.get("messages")), None
    elif url == COMPLETIONS_URL:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise NotUsable("body.prompt must be one non-empty string (one prompt per line)")
        messages = None
    else:
        raise NotUsable(f"url {url!r}: allowed {CHAT_URL} or {COMPLETIONS_URL}")
    overrides: dict[str, Any] = {}
    for key, value in body.items():
        if key in BODY_SAMPLING:
            overrides[BODY_SAMPLING[key]] = [value] if key == "stop" and isinstance(value, str) else value
        elif key == "n":
            overrides["n"] = value
        elif key == "response_format":
            structured = _response_format(value)
            if structured is not None:
                overrides["structured"] = structured
        elif key not in BODY_IGNORED and key not in ("messages", "prompt"):
            raise NotUsable(
                f"body.{key} is not supported (supported: {', '.join(sorted({*BODY_SAMPLING, 'n'}))}, response_format)"
            )
    model = body.get("model")
    return (
        BatchRequest(str(custom_id), str(url), model if isinstance(model, str) else None, overrides),
        messages,
        prompt,
    )


def _response_format(value: Any) -> dict[str, Any] | None:
    """OpenAI's response_format -> a sampling.structured mapping (None for plain text)."""
    if not isinstance(value, Mapping):
        raise NotUsable("body.response_format must be an object")
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"json_schema": {"type": "object"}}
    if kind == "json_schema":
        inner = value.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, Mapping) else None
        if not isinstance(schema, Mapping):
            raise NotUsable("body.response_format.json_schema.schema must be a JSON Schema object")
        return {"json_schema": dict(schema)}
    raise NotUsable(f"body.response_format.type {kind!r}: allowed text, json_object, json_schema")
