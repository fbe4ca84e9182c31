"""engines/base.py: the one interface both backends implement, and the values that cross it.

Token ids, not text, cross the interface: the runner tokenizes once (with the chat template applied), so both
backends see the same prompt tokens and count them the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..spec import ModelSpec, SamplingSpec


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    key: int  # the record's row: unique within a task
    prompt_token_ids: list[int]
    seed: int  # the record's seed; sample j uses seed + j


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    token_ids: tuple[int, ...] = ()  # kept when output.token_ids is on (for `launcher compare`)


@dataclass(frozen=True, slots=True)
class Completion:
    key: int
    prompt_tokens: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class Workload:
    """What the engine will be asked to do: auto sizing reads it."""

    prompt_lengths: tuple[int, ...]  # tokens per prompt, for the records still to do
    max_tokens: int
    n: int


@dataclass
class EngineReport:
    """Filled in by load(): goes into the summary, so a run says what it chose and why."""

    backend: str
    version: str
    device: str
    gpu_name: str | None = None
    load_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    startup: dict[str, float] = field(default_factory=dict)  # load / compile / graph capture seconds where known


class Engine(ABC):
    """A loaded model that turns requests into n samples each. Heavy imports happen in load(), never at import."""

    name: ClassVar[str]

    def __init__(self, model: ModelSpec, sampling: SamplingSpec, n: int) -> None:
        self.model, self.sampling, self.n = model, sampling, n

    @abstractmethod
    def load(self, workload: Workload, tokenizer: Any) -> EngineReport: ...

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Completion]:
        """Yields completions as they finish (any order); every request is answered exactly once."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the GPU before the process exits (vLLM's worker processes)."""
