"""spec/scheduling.py: the scheduling section: in what order a worker feeds the units it runs. Never changes the
samples (every record keeps its seed, every cell its files), so it is no part of the fingerprint or the run id."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from launcher.spec.common import _Section


def _on_off(value: Any) -> Any:
    # YAML 1.1 reads a bare `on` / `off` as true / false: both spellings mean the same here.
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


PrefixOrder = Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)]


class SchedulingSpec(_Section):
    prefix_order: PrefixOrder = "auto"
    """Feed together the prompts that share a prefix, so vLLM's prefix cache serves it once: a worker claims a
    shard of users under every ablation config that shares a prefix with another (the same rows of the same dataset)
    and sends one user's prompts of those configs one after another, the configs that share the longest prefix next
    to each other. Which configs share how much is measured on the first rows of each dataset with the model's
    tokenizer (template order decides it: `profile_and_history` and `full` share profile + history).
    auto: on when two or more configs share at least 256 tokens on average (`launcher plan` shows what it sees and
    the prefill tokens the order saves), and the engine keeps a prefix cache (vLLM; not HF, not
    enable_prefix_caching: false). on: always (configs sharing less than one 16-token KV block stay apart).
    off: plan order, one unit after another."""
