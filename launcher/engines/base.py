"""engines/base.py: the one interface every backend implements (Engine), and the values that cross it.

Token ids, not text, cross the interface: the runner tokenizes once (with the chat template applied), so both
backends see the same prompt tokens and count them the same way.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from launcher.spec import ModelSpec, SamplingSpec

if TYPE_CHECKING:  # types only: the interface needs no code of the layout or of a multi-node launch
    from launcher.engines.multinode import Rendezvous
    from launcher.plan.layout import ParallelLayout


@dataclass(frozen=True)
class Workload:
    """What the engine will be asked to do, in summary: auto sizing reads it. For a worker, every unit of the run
    it may take (the engine starts once and is sized for the longest of them)."""

    prompts: int  # records still to generate
    prompt_tokens_mean: float
    prompt_tokens_max: int
    max_tokens: int
    n: int
    prompts_known: bool = True  # False: a bound made before any prompt was tokenized (see `bound`)
    token_limit: int | None = None  # the longest prompt + max_tokens a record may have (records past it: quarantined)

    @classmethod
    def of(cls, lengths: Sequence[int], max_tokens: int, n: int) -> Workload:
        return cls(
            len(lengths), sum(lengths) / len(lengths) if lengths else 0.0, max(lengths, default=0), max_tokens, n
        )

    @classmethod
    def bound(cls, prompts: int, max_tokens: int, n: int, token_limit: int | None) -> Workload:
        """What is known before the tokenizer has run: how many records, and the most tokens one may have. The
        engine starts from this (the same for every worker and every run of the spec: one compile-cache key);
        admission is refined once the prompts are measured (engines' refine())."""
        longest = max(0, (token_limit or 0) - max_tokens)
        return cls(prompts, 0.0, longest, max_tokens, n, prompts_known=False, token_limit=token_limit)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    key: int  # unique among the requests of one generate() call (the worker maps it to a unit and a row)
    prompt_token_ids: list[int]
    seed: int  # the record's seed; sample j uses seed + j
    sampling: SamplingSpec | None = None  # this request's own settings (an OpenAI batch body); None: the engine's
    n: int | None = None  # this request's own number of samples; None: the engine's
    adapter: str | None = None  # the LoRA adapter (model.adapters name) that serves it; None: the base model


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
    error: str | None = None  # this request alone could not be generated (why): the worker quarantines its record


def refused(req: GenerationRequest, why: str) -> Completion:
    """The answer to a request the engine cannot serve: an error for this request only, never its batch's."""
    return Completion(req.key, len(req.prompt_token_ids), (), why[:500])


class FailureBreaker:
    """Tells a request that fails alone from an engine that fails everything. A request that raises on its own gets
    an error completion (its record is quarantined), but only once the engine has shown it works: the error is held
    back until a later request of the same generate() call succeeds (or, at the call's end, one did before it).
    MAX_IN_A_ROW failures in a row, or a call in which nothing succeeded, mean the engine is broken: raise, so the
    worker fails and its units are retried, instead of quarantining records that are fine."""

    MAX_IN_A_ROW = 8

    def __init__(self) -> None:
        self.in_a_row = 0
        self.succeeded = False
        self.held: list[Completion] = []
        self.last: BaseException | None = None

    def ok(self) -> list[Completion]:
        """A request succeeded: the errors held back are its neighbours' own. Returns them, to be yielded."""
        self.in_a_row, self.succeeded = 0, True
        released, self.held = self.held, []
        return released

    def failed(self, exc: BaseException, answer: Completion) -> None:
        self.in_a_row += 1
        self.held.append(answer)
        self.last = exc
        if self.in_a_row >= self.MAX_IN_A_ROW:
            raise RuntimeError(
                f"{self.in_a_row} requests in a row failed on their own, none between them succeeded: the engine "
                f"is broken, not the records (last: {type(exc).__name__}: {exc})"
            ) from exc

    def finish(self) -> list[Completion]:
        """The call's end: the errors still held, if the engine worked at all in this call; else raise."""
        if self.held and not self.succeeded:
            exc = self.last
            raise RuntimeError(
                f"all {len(self.held)} request(s) of this engine failed, none succeeded: the engine is broken, or "
                f"every record is (last: {type(exc).__name__}: {exc})"
            ) from exc
        released, self.held = self.held, []
        return released


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
    rendezvous: Rendezvous | None = None  # set by the worker of a multi-node step (rank 0; vLLM only)
    # The worker's host-side start-up (tokenizer, prompt statistics) runs on a thread beside load(). An engine that
    # forks processes during load() holds it back until the fork is done (job/host_prep.py says why) and sets
    # `host_ok` itself; for any other engine the worker sets it at once.
    holds_host_work: ClassVar[bool] = False
    host_ok: threading.Event | None = None
    own_request_settings: bool = True  # records may carry their own sampling (OpenAI batch lines); set by the worker

    def __init__(self, model: ModelSpec, sampling: SamplingSpec, n: int) -> None:
        self.model, self.sampling, self.n = model, sampling, n

    @abstractmethod
    def load(self, workload: Workload, tokenizer: Any, layout: ParallelLayout) -> EngineReport:
        """Start the engine on the GPUs of `layout` (one TP group: CUDA_VISIBLE_DEVICES already names them)."""

    @abstractmethod
    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[Completion]:
        """Yields completions as they finish (any order); every request is answered exactly once: with its samples,
        or with `error` when this request alone cannot be generated (a feature this backend cannot serve, a prompt
        the engine refuses). `requests` is pulled lazily, only when the engine has room: a worker feeds unit after
        unit through one call, so the batch never drains between units."""

    def refine(self, workload: Workload) -> None:  # noqa: B027 - optional hook
        """The prompts are measured now (load() started from a bound): adjust what depends on them (admission)."""

    def swap_check(self, model: ModelSpec) -> tuple[bool, str]:
        """Can this running engine serve `model` by loading its weights in place? (yes/no, why)."""
        return False, f"the {self.name} backend starts a new engine for each checkpoint"

    def swap(self, model: ModelSpec) -> EngineReport:
        """Load `model`'s weights into this running engine (only after swap_check said yes)."""
        raise NotImplementedError(f"{self.name} cannot swap weights")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the GPU before the process exits (vLLM's worker processes)."""
