"""spec/job.py: JobSpec, the whole job spec (one section each from spec/*.py), its fingerprint and run id."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from launcher.errors import SpecError
from launcher.spec.common import Slug, _FieldError, _plain_path, _Section
from launcher.spec.container import ContainerSpec
from launcher.spec.cost import CostSpec
from launcher.spec.data import DataSpec
from launcher.spec.model import ModelSpec
from launcher.spec.output import OutputSpec
from launcher.spec.sampling import SamplingSpec
from launcher.spec.scheduling import SchedulingSpec
from launcher.spec.slurm import SlurmSpec

# (path, its default): fields that change the samples, added after runs were made with this launcher
ADDED_LATER: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("sampling", "structured"), None),
    (("data", "fields", "messages"), "messages"),
    (("data", "chat_template_kwargs"), {}),
    (("data", "datasets", "*", "format"), "auto"),
    (("model", "adapters"), {}),
    (("models",), {}),
)


def _drop_default(tree: Any, path: tuple[str, ...], default: Any) -> None:
    """Remove path from the dumped spec when it holds its default ("*": every item of a list)."""
    head, rest = path[0], path[1:]
    items = tree if head == "*" else [tree.get(head)] if isinstance(tree, dict) and rest else None
    if items is None:
        if isinstance(tree, dict) and tree.get(head) == default:
            tree.pop(head, None)
        return
    for item in items if isinstance(items, list) else []:
        _drop_default(item, rest, default)


class JobSpec(_Section):
    name: Slug
    """Job name: Slurm job name and part of the run id."""
    model: ModelSpec
    data: DataSpec
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    container: ContainerSpec = Field(default_factory=ContainerSpec)
    output: OutputSpec
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    """scheduling.prefix_order: run the prompts that share a prefix together (auto | on | off). Never changes the
    samples, so never the run id."""
    cost: CostSpec = Field(default_factory=CostSpec)
    """cost.gpu_hour: what a GPU-hour costs, for cost per 1,000 samples in the summary (cluster profile)."""
    models: dict[Slug, str] = Field(default_factory=dict)
    """Several full checkpoints, name -> folder: a sweep axis beside datasets and ablation configs. Each model gets
    its own engine (sized for it), a job runs its units model after model, and outputs go to <name>/<dataset>/...
    The model: section's other settings (backend, dtype, engine_args, ...) apply to each; leave model.path out."""
    executor: Literal["slurm", "local"] = "slurm"
    """slurm: submit an array with submitit. local: run the jobs as local processes (no cluster; the demo)."""
    datasets: dict[Slug, str] = Field(default_factory=dict)
    """The dataset catalog: name -> path (e.g. Chameleons: /shared/data/chameleons/scenarios.jsonl), usually kept
    in a cluster profile or in a project file `launcher.yaml`. A data.datasets entry without a path, and
    `launcher run --dataset NAME`, are found here."""
    data_root: str | None = None
    """Where datasets without a path or catalog entry are looked for: <data_root>/<name>.jsonl (or .parquet, .csv),
    or <data_root>/<name>/scenarios.jsonl (or test.jsonl, data.jsonl); the name as given, then in lower case.
    Also $LAUNCHER_DATA_ROOT."""
    # Where each field was set ("spec.yaml:14", "--set ...", "--top_p"), for errors found after validation
    # (plan.check_inputs). Not part of the spec: not serialized, not compared.
    _origin: dict[tuple[str | int, ...], str] = PrivateAttr(default_factory=dict)
    _root: str = PrivateAttr(default="<spec>")

    @model_validator(mode="after")
    def _models(self) -> JobSpec:
        if not self.models and not self.model.path:
            raise _FieldError(
                ("model", "path"),
                "no model given",
                "model.path: a checkpoint folder, or models: name -> folder for several",
                "set model.path (or --model on `launcher run` / `launcher batch`)",
            )
        if self.models and self.model.path:
            raise _FieldError(
                ("models",),
                f"both model.path ({self.model.path}) and models ({', '.join(self.models)}) are set",
                "one of them: model.path for one checkpoint, models: for several",
                f"move {self.model.path} into models: under a name, and remove model.path",
            )
        if self.models and self.model.adapters:
            raise _FieldError(
                ("model", "adapters"),
                "model.adapters with several models: adapters belong to one base checkpoint",
                "model.adapters with model.path, or models: without adapters",
                "run one spec per base model with its adapters",
            )
        for name, folder in self.models.items():
            _plain_path(folder, f"model {name}'s path")
        return self

    @model_validator(mode="after")
    def _conflicts(self) -> JobSpec:
        from launcher.engines.registry import check_spec

        check_spec(self)  # what the backend named in model.backend cannot serve (engines/<name>/)
        if self.slurm.nodes != 1 and self.executor == "local":
            raise _FieldError(
                ("slurm", "nodes"),
                f"slurm.nodes {self.slurm.nodes} with executor local: one engine over several nodes is vLLM's "
                "multi-node launch, in a Slurm step",
                "nodes: 1, or nodes > 1 / auto with backend vllm (or auto) and executor slurm",
                "use model.backend: vllm and executor: slurm, or slurm.nodes: 1",
            )
        if self.model.max_model_len is not None and self.sampling.max_tokens >= self.model.max_model_len:
            raise _FieldError(
                ("sampling", "max_tokens"),
                f"max_tokens {self.sampling.max_tokens} leaves no room for "
                f"the prompt in max_model_len {self.model.max_model_len}: every record would be "
                "quarantined",
                f"less than model.max_model_len ({self.model.max_model_len})",
                "lower sampling.max_tokens or raise model.max_model_len",
            )
        return self

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # dict fields: not hashable, as before

    # -- the model axis: one checkpoint, several (models:), or one with LoRA adapters (model.adapters) ------------

    def model_names(self) -> list[str]:
        """The models of the sweep, in spec order; [""] for the one model.path."""
        return list(self.models) or [""]

    def adapter_names(self) -> list[str]:
        """The adapters of the sweep, in spec order; [""] without adapters."""
        return list(self.model.adapters) or [""]

    def for_model(self, name: str) -> JobSpec:
        """This spec as one engine of the sweep sees it: model.path is that model's checkpoint ("": the spec)."""
        if not name:
            return self
        model = self.model.model_copy(update={"path": self.models[name]})
        copy = self.model_copy(update={"model": model, "models": {}})
        copy._origin, copy._root = self._origin, self._root
        return copy

    def model_paths(self) -> dict[str, str]:
        """name -> checkpoint folder of every model the sweep loads ("" for the one model.path)."""
        return dict(self.models) or {"": self.model.path}

    def where(self, *key: str | int) -> str:
        """file:line (or the flag, or --set) that set `key`, else its closest parent's; "<spec>" when unknown."""
        for n in range(len(key), -1, -1):
            if key[:n] in self._origin:
                return self._origin[key[:n]]
        return self._root

    def error(self, key: tuple[str | int, ...], message: str, allowed: str = "", fix: str = "") -> SpecError:
        """A SpecError pointed at the line that set `key` (file:line, flag or --set): for the checks made after
        loading, against the files the spec names (plan/preflight.py, plan/model_checks.py)."""
        from launcher.spec.validate import _dotted

        return SpecError.one(self.where(*key), _dotted(key), message, allowed, fix)

    def fingerprint(self) -> str:
        """Hash of the spec's own fields that change the samples. Partition, time limit or output dir never change
        it, nor do file dates: what the input files hold is checked at submit (inputs.py), not hashed here, so a
        touched dataset keeps its run."""
        affects: dict[str, Any] = {
            "model": self.model.model_dump(
                exclude={
                    "engine_args",
                    "gpu_memory_utilization",
                    "tensor_parallel_size",
                    "hf_batch_size",
                    "max_model_len",
                }
            ),
            "data": self.data.model_dump(exclude={"records_per_shard"}),
            "sampling": self.sampling.model_dump(),
            "models": dict(self.models),
        }
        # Fields added after runs existed are hashed only when set, so those runs keep their ids.
        for path, default in ADDED_LATER:
            _drop_default(affects, path, default)
        blob = json.dumps(affects, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def run_id(self) -> str:
        """The base run id. A submit may pick another (`<base>-<inputs>` after --new-run): the run's own directory
        name is the run id from then on (run_state.resolve_run)."""
        return f"{self.name}-{self.fingerprint()[:10]}"
