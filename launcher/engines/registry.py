"""engines/registry.py: backend name -> Backend (what it can do, its hooks, its engine). The one place that knows
which backends exist, so that spec, plan, job, cli and bench ask it instead of testing a backend's name.

Each backend is a package `launcher/engines/<name>/` whose `__init__.py` calls `register(Backend(...))`. Those
packages are imported here on first use (BUILTIN lists them: adding a backend adds its name there and nothing else
outside its folder; docs/adding-a-backend.md). Registering must stay cheap: a backend imports its library (torch,
vLLM) in its engine's load() or in its `usable` hook, never at import, so a login node without a GPU can plan.

This module imports nothing of the launcher but errors.py: spec/ (the floor below everything) asks it for the
allowed values of model.backend at validation time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from launcher.errors import SpecError

if TYPE_CHECKING:
    from launcher.engines.base import Engine
    from launcher.plan.layout import ParallelLayout
    from launcher.spec import JobSpec, ModelSpec

# The backends shipped with the launcher, in the order `backend: auto` tries them (the first usable one wins).
BUILTIN: tuple[str, ...] = ("vllm", "hf")
AUTO = "auto"  # the spec's value that lets the registry choose


@dataclass(frozen=True)
class Capabilities:
    """What a backend can serve. plan and spec refuse a spec that asks for more (before anything is submitted);
    job asks these instead of a backend's name."""

    tensor_parallel: bool = False
    """One engine over several GPUs (TP/PP). False: one engine per GPU, the job's other GPUs data-parallel."""
    multinode: bool = False
    """One engine over several nodes (slurm.nodes > 1)."""
    structured_output: bool = False
    """Constrained decoding (sampling.structured, an OpenAI batch line's response_format)."""
    adapters: bool = False
    """LoRA adapters served by one engine (model.adapters)."""
    prefix_cache: bool = False
    """Keeps a prefix cache: scheduling.prefix_order can help it."""
    context_within_positions: bool = False
    """Refuses a max_model_len past the model's max_position_embeddings (unless rope scaling): plan checks it."""


def _no_checks(spec: JobSpec) -> None:
    return None


def _always_importable() -> bool:
    return True


def _no_warnings(spec: JobSpec, layout: ParallelLayout, why: str) -> list[str]:
    return []


def _base_limit(spec: JobSpec, layout: ParallelLayout, base: int | None) -> tuple[int | None, str | None]:
    return base, None


@dataclass(frozen=True)
class Backend:
    """One backend, as its package registers it. Hooks are plain functions; each imports what it needs itself."""

    name: str
    """The value of model.backend that selects it."""
    title: str
    """How messages name it ("vLLM", "HF transformers")."""
    engine: str
    """"module:Class" of its Engine (engines/base.py), imported only when an engine is made."""
    capabilities: Capabilities
    auto: bool = True
    """`backend: auto` may choose it (in BUILTIN order; registered ones after)."""
    install_fix: str = ""
    """What to do when it is asked for but `usable` says no (the fix of the SpecError)."""
    importable: Callable[[], bool] = _always_importable
    """Cheap (no import of the library): would `usable` likely say yes? The job's guess before its workers start."""
    usable: Callable[[str | None], tuple[bool, str]] | None = None
    """(ok, why) for this machine and, when given, this checkpoint's folder; may import the library. None: always
    usable (its library is checked when the engine loads)."""
    check_spec: Callable[[JobSpec], None] = _no_checks
    """Spec checks of its own, run when the spec names this backend: raise spec.common._FieldError (-> SpecError,
    exit 2, naming the field)."""
    record_limit: Callable[[JobSpec, ParallelLayout, int | None], tuple[int | None, str | None]] = _base_limit
    """The most tokens a record may have on this layout (the spec's or the model's limit, maybe lowered), and why
    when lowered."""
    swap_decision: Callable[[ModelSpec, ModelSpec, int], tuple[bool, str]] | None = None
    """(ok, why): can an engine running the first checkpoint (over that many nodes) take the second's weights in
    place? None: this backend never swaps, each checkpoint gets a new engine."""
    worker_warnings: Callable[[JobSpec, ParallelLayout, str], list[str]] = _no_warnings
    """Warnings a worker reports once this backend is chosen on its layout (a slow backend on a GPU, idle GPUs)."""

    def check_here(self, model_path: str | None) -> tuple[bool, str]:
        """`usable`, or (yes, "using <title>") for a backend that is always usable."""
        return (True, f"using {self.title}") if self.usable is None else self.usable(model_path)

    def engine_class(self) -> type[Engine]:
        module, _, attr = self.engine.partition(":")
        cls: type[Engine] = getattr(importlib.import_module(module), attr)
        return cls


_REGISTERED: dict[str, Backend] = {}
_loaded = False


def register(backend: Backend) -> Backend:
    """Add a backend (its package calls this at import). Registering a name twice replaces the first."""
    if backend.name == AUTO or not backend.name.isidentifier():
        raise ValueError(f"a backend cannot be named {backend.name!r}: use a Python identifier other than {AUTO!r}")
    _REGISTERED[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    """Drop a backend (tests that register one of their own)."""
    _REGISTERED.pop(name, None)


def backends() -> dict[str, Backend]:
    """Every registered backend by name: the built-in ones first, in BUILTIN order."""
    global _loaded
    if not _loaded:
        for name in BUILTIN:  # each package registers itself on import (a second import is a no-op)
            importlib.import_module(f"launcher.engines.{name}")
        _loaded = True
    ordered = {name: _REGISTERED[name] for name in BUILTIN if name in _REGISTERED}
    return {**ordered, **{name: b for name, b in _REGISTERED.items() if name not in ordered}}


def names() -> list[str]:
    return list(backends())


def spec_choices() -> list[str]:
    """The values model.backend (and `launcher run --backend`) accepts."""
    return [AUTO, *names()]


def get(name: str) -> Backend:
    """The backend of that name; a SpecError listing the registered ones when there is none."""
    found = backends().get(name)
    if found is None:
        raise SpecError.one(
            "<spec>",
            "model.backend",
            f"unknown backend {name!r}",
            allowed=", ".join(spec_choices()),
            fix=f"set model.backend to one of: {', '.join(spec_choices())}",
        )
    return found


def named(spec_backend: str) -> Backend | None:
    """The backend a spec's model.backend names; None for auto (any backend may run it: checks assume the most
    capable)."""
    return None if spec_backend == AUTO else get(spec_backend)


def _auto_order() -> list[Backend]:
    return [b for b in backends().values() if b.auto]


def select(model: ModelSpec) -> tuple[str, str]:
    """(backend name, why), on the node that runs the engine. A named backend must be usable here; auto takes the
    first usable one, and says why the ones before it were not."""
    if model.backend != AUTO:
        chosen = get(model.backend)
        # a named backend skips the model scan (seconds of each start): an unsupported checkpoint then fails in the
        # library's own start with its own message
        ok, reason = chosen.check_here(None)
        if not ok:
            raise SpecError.one(
                "<spec>",
                "model.backend",
                f"backend {chosen.name} asked for, but {reason}",
                fix=chosen.install_fix or f"install what the {chosen.title} backend needs, or set backend: auto",
            )
        return chosen.name, f"backend: {chosen.name} set in the spec"
    refused: list[str] = []
    for candidate in _auto_order():
        ok, reason = candidate.check_here(model.path)
        if ok:
            return candidate.name, f"auto: {'; '.join([*refused, reason])}"
        refused.append(reason)
    raise SpecError.one(
        "<spec>", "model.backend", f"no backend can run here: {'; '.join(refused)}", allowed=", ".join(names())
    )


def check_spec(spec: JobSpec) -> None:
    """The checks of the backend the spec names (none for auto): its own first, then what its capabilities rule
    out. Raises spec.common._FieldError (the spec's validation turns it into a SpecError naming the field: exit 2)."""
    backend = named(spec.model.backend)
    if backend is None:
        return
    backend.check_spec(spec)
    check_capabilities(spec, backend)


def check_capabilities(spec: JobSpec, backend: Backend) -> None:
    """A spec asking `backend` for what it cannot do, in words any backend fits (a backend's own checks, run first,
    may say more)."""
    from launcher.spec.common import _FieldError

    caps, name = backend.capabilities, backend.name
    others = ", ".join(b.name for b in backends().values() if b.name != name) or "none registered"

    def refuse(loc: tuple[str, ...], what: str, cap: str) -> _FieldError:
        return _FieldError(
            loc,
            f"{what} with backend {name}: the {backend.title} backend does not serve it",
            f"a backend with {cap} (registered: {others}), or auto",
            f"set model.backend to one that serves it, or drop {'.'.join(loc)}",
        )

    tp = spec.model.tensor_parallel_size
    if spec.model.adapters and not caps.adapters:
        raise refuse(("model", "adapters"), "LoRA adapters", "adapters")
    if isinstance(tp, int) and tp > 1 and not caps.tensor_parallel:
        raise refuse(("model", "tensor_parallel_size"), f"tensor_parallel_size {tp}", "tensor_parallel")
    if spec.slurm.nodes != 1 and not caps.multinode:
        raise refuse(("slurm", "nodes"), f"slurm.nodes {spec.slurm.nodes}", "multinode")
    if spec.sampling.structured is not None and not caps.structured_output:
        raise refuse(("sampling", "structured"), "structured outputs", "structured_output")


def guess(spec_backend: str) -> Backend:
    """The backend the workers will likely choose, without importing any library (the job's layout depends on it:
    vLLM's import alone costs ~15 s). Each worker makes the real choice (select) and reports it."""
    if spec_backend != AUTO:
        asked = get(spec_backend)
        if asked.importable():
            return asked
    for candidate in _auto_order():
        if candidate.importable():
            return candidate
    return get(spec_backend) if spec_backend != AUTO else _auto_order()[-1]


def create_engine(name: str, model: ModelSpec, sampling: object, n: int) -> Engine:
    """An unloaded engine of the named backend (load() starts it)."""
    return get(name).engine_class()(model, sampling, n)  # type: ignore[arg-type]


__all__ = [
    "AUTO",
    "BUILTIN",
    "Backend",
    "Capabilities",
    "backends",
    "check_capabilities",
    "check_spec",
    "create_engine",
    "get",
    "guess",
    "named",
    "names",
    "register",
    "select",
    "spec_choices",
    "unregister",
]
