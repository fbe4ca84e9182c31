"""spec.py: YAML job spec -> JobSpec (typed, validated). Errors name the file, line, field and the fix.

Every field carries its default and a docstring under it: `launcher schema` turns them into the JSON Schema
that editors use to complete and check the YAML, so the docs and the code cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import SpecError
from .spec_loader import load_layers

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Slug = Annotated[str, Field(pattern=SLUG)]
BUILTIN_ABLATIONS = (
    "context_only",
    "profile_only",
    "history_only",
    "profile_and_history",
    "profile_and_context",
    "history_and_context",
    "full",
)


class _Section(BaseModel):
    # Unknown keys are errors: a misspelled `temprature:` must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True, validate_default=True)


class ModelSpec(_Section):
    path: str
    """Folder of an HF-format checkpoint (config.json, weights, tokenizer). Relative paths are read from the spec's folder."""
    backend: Literal["auto", "vllm", "hf"] = "auto"
    """auto: vLLM when it imports and supports the architecture, else HF transformers. The summary says which and why."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights and activations. auto: the checkpoint's torch_dtype (bf16 on GPU, fp32 on CPU)."""
    quantization: str | None = None
    """Passed to vLLM as is (awq, gptq, fp8, ...). fp8 quantizes a bf16 checkpoint online."""
    max_model_len: int | None = Field(default=None, ge=16, le=1_048_576)
    """Context length for vLLM. Unset: the longest prompt + max_tokens, rounded up, at most 8192 (the old default)."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    """Fraction of each GPU's memory vLLM may take (weights + KV cache)."""
    tensor_parallel_size: Literal["auto", "all"] | Annotated[int, Field(ge=1, le=64)] = "auto"
    """auto: smallest TP that fits the weights and divides the heads; the other GPUs run data-parallel replicas.
    all: every GPU of the task in one TP group (the old behaviour). An int is obeyed or refused with a reason."""
    trust_remote_code: bool = False
    """Let transformers/vLLM run Python code shipped with the checkpoint."""
    load_format: Literal["auto", "safetensors", "pt", "dummy"] = "auto"
    """dummy: random weights from config.json only (benchmarks of an architecture without its weights)."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Extra vLLM `LLM(...)` arguments (max_num_seqs, enable_prefix_caching, ...). They always win over auto sizing."""
    hf_batch_size: int | None = Field(default=None, ge=1, le=4096)
    """Records per HF generate() call. Unset: 8 on CPU, 32 on GPU."""


class DatasetSpec(_Section):
    name: Slug
    """Short name; used in task ids and as the output folder <output.dir>/<name>/<ablation>/."""
    path: str
    """JSONL, Parquet, CSV file, or a folder saved by HF datasets' save_to_disk."""


class FieldNames(_Section):
    user_id: str = "user_id"
    """Column holding the user id (one output JSON per user)."""
    record_id: str | None = None
    """Column holding a unique record id. Unset: the user id (one record per user)."""
    profile: str = "profile"
    """Column with the user's profile (text or a mapping)."""
    history: str = "history"
    """Column with the user's history (text or a list of items)."""
    context: str = "context"
    """Column with the current context / query the generation answers."""


class TemplateSpec(_Section):
    text: str | None = None
    """A jinja2 template. Variables: profile, history, context, scenario, record (the whole row)."""
    file: str | None = None
    """A file holding the jinja2 template (relative to the spec's folder)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> TemplateSpec:
        if (self.text is None) == (self.file is None):
            raise ValueError("give exactly one of `text` or `file`")
        return self


class DataSpec(_Section):
    datasets: list[DatasetSpec] = Field(min_length=1)
    """Inputs. Each dataset x ablation config x shard becomes one Slurm array task."""
    ablation_configs: list[str] = Field(default_factory=lambda: ["full"], min_length=1)
    """Which parts of a record the prompt shows: built-in names (see BUILTIN_ABLATIONS) or keys of `templates`."""
    templates: dict[str, TemplateSpec] = Field(default_factory=dict)
    """Custom ablation configs as jinja2 templates, by name."""
    num_samples: int = Field(default=5, ge=1, le=1024)
    """Samples generated per record (vLLM's n)."""
    records_per_shard: int | None = Field(default=None, ge=1)
    """Records per array task. Unset: one task per dataset x ablation config."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N records of each dataset (quick tests)."""
    fields: FieldNames = Field(default_factory=FieldNames)
    """Names of the record's columns."""
    scenario: str | None = None
    """Optional file whose text describes the task; templates see it as {{ scenario }} (the old --scenario_path)."""
    system_prompt: str | None = None
    """System message put before the prompt when the tokenizer has a chat template."""
    chat_template: bool = True
    """Wrap each prompt in the tokenizer's chat template when it has one."""

    @field_validator("ablation_configs")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _known_ablations(self) -> DataSpec:
        for i, name in enumerate(self.ablation_configs):
            if name not in BUILTIN_ABLATIONS and name not in self.templates:
                raise _FieldError(
                    ("ablation_configs", i),
                    f"unknown ablation config {name!r}",
                    allowed=f"one of {', '.join(BUILTIN_ABLATIONS)} or a key of data.templates",
                    fix=_did_you_mean(name, [*BUILTIN_ABLATIONS, *self.templates])
                    or "add it under data.templates with a jinja2 `text:` or `file:`",
                )
        names = [d.name for d in self.datasets]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise _FieldError(("datasets", i, "name"), f"dataset name {name!r} used twice", "unique names",
                                  "give each dataset its own name")
        return self


class SamplingSpec(_Section):
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    """0 means greedy. 1.0 is the old inference_vllm.py default, kept so migrated runs match."""
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability adds up to top_p."""
    top_k: int = Field(default=50, ge=-1)
    """Keep the k most likely tokens; -1 or 0 keeps all."""
    max_tokens: int = Field(default=512, ge=1, le=131_072)
    """New tokens per sample (vLLM's name)."""
    seed: int = Field(default=42, ge=0, le=2**63 - 1)
    """Run seed. A record's samples depend only on (seed, record id), never on sharding, batching or retries."""
    ignore_eos: bool = False
    """Generate exactly max_tokens (benchmarks)."""
    stop: list[str] = Field(default_factory=list)
    """Stop strings."""


TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time_min(text: str) -> int:
    """Slurm's time formats -> whole minutes (seconds round up): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = TIME_RE.match(text)
    if not match:
        raise ValueError(f"not a Slurm time: {text!r}")
    days, first, second, third = match.groups()
    nums = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        h, m, s = (nums + [0, 0])[:3]
        return int(days) * 1440 + h * 60 + m + (1 if s else 0)
    if len(nums) == 1:
        return nums[0]
    if len(nums) == 2:  # M:S
        return nums[0] + (1 if nums[1] else 0)
    h, m, s = nums
    return h * 60 + m + (1 if s else 0)
MEM_RE = re.compile(r"^\d+(?:[KMGT])?$")


class SlurmSpec(_Section):
    partition: str | None = None
    """Partition (-p). Unset: the cluster's default."""
    account: str | None = None
    """Account to charge (-A)."""
    qos: str | None = None
    """Quality of service (--qos)."""
    nodes: int = Field(default=1, ge=1, le=1)
    """Nodes per task. One: TP and DP replicas live on one node."""
    gpus_per_node: int = Field(default=1, ge=0, le=16)
    """GPUs per task; the task counts what it got and picks TP x DP itself."""
    cpus_per_gpu: int = Field(default=8, ge=1, le=256)
    """CPU cores per GPU (cpus per task = this x max(gpus, 1))."""
    mem: str | None = None
    """Memory per node, Slurm syntax (64G, 500000M). Unset: the cluster's default."""
    time: str = "04:00:00"
    """Time limit per task ([D-]HH:MM:SS or minutes). On timeout a task requeues and resumes."""
    constraint: str | None = None
    """Node features (-C), e.g. h100|a100."""
    array_parallelism: int | None = Field(default=None, ge=1)
    """At most this many tasks run at once (%N). Unset: as many as the cluster allows."""
    max_retries: int = Field(default=2, ge=0, le=20)
    """A failing task (crash, OOM) is retried this many times, then reported with its log tail."""
    max_requeues: int = Field(default=6, ge=0, le=100)
    """Preemptions/timeouts a task may requeue after before giving up."""
    signal_delay_s: int = Field(default=120, ge=5, le=3600)
    """USR2 this long before the time limit, so the task flushes and requeues."""
    extra_args: dict[str, str | int | bool] = Field(default_factory=dict)
    """More #SBATCH options, by long name without dashes (e.g. {reservation: abc, exclusive: true})."""
    gather: bool = True
    """Submit `launcher gather` as a job that runs after the array."""

    @field_validator("time", mode="before")
    @classmethod
    def _time_minutes(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # `time: 90` = minutes

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        if not TIME_RE.match(value):
            raise ValueError("use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS (e.g. 04:00:00)")
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not MEM_RE.match(value):
            raise ValueError("use a number with an optional K/M/G/T suffix, e.g. 64G")
        return value

    @field_validator("extra_args")
    @classmethod
    def _extra(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not re.match(r"^[a-z][a-z0-9-]*$", key):
                raise ValueError(f"{key!r} is not an sbatch long option name (lowercase letters, digits, '-')")
        return value

    @property
    def time_min(self) -> int:
        return parse_time_min(self.time)


class ContainerSpec(_Section):
    runtime: Literal["apptainer", "singularity", "docker", "podman", "none"] = "none"
    """How each task runs: inside an image (apptainer/singularity .sif, docker/podman image) or directly (none)."""
    image: str | None = None
    """A .sif path for apptainer/singularity, an image reference for docker/podman."""
    binds: list[str] = Field(default_factory=list)
    """Extra host folders, "host[:container[:ro]]". The model, data, output and scratch folders are bound already."""
    env: dict[str, str] = Field(default_factory=dict)
    """Variables set inside the container."""

    @model_validator(mode="after")
    def _image_needed(self) -> ContainerSpec:
        if self.runtime != "none" and not self.image:
            raise _FieldError(("image",), f"runtime {self.runtime} needs an image", "a .sif path or image name",
                              "set container.image, or container.runtime: none to run without one")
        return self


class OutputSpec(_Section):
    dir: str
    """Shared storage for this job: run state, logs and the gathered <dataset>/<ablation>/ outputs."""
    scratch_dir: str | None = None
    """Node-local scratch for caches (compile cache, HF cache). Unset: <dir>/cache."""
    format: Literal["jsonl", "parquet"] = "jsonl"
    """Format of the gathered samples file."""
    per_user_json: bool = False
    """Also write users/<user_id>.json with generated_samples (the old script's layout)."""
    chunk_records: int = Field(default=64, ge=1, le=100_000)
    """Records per chunk file: the most a killed task can lose and redo."""
    token_ids: bool = False
    """Also store each sample's token ids (`launcher compare` then checks agreement token by token)."""


class JobSpec(_Section):
    name: Slug
    """Job name: Slurm job name and part of the run id."""
    model: ModelSpec
    data: DataSpec
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    container: ContainerSpec = Field(default_factory=ContainerSpec)
    output: OutputSpec
    executor: Literal["slurm", "local"] = "slurm"
    """slurm: submit an array with submitit. local: run the tasks as local processes (no cluster; the demo)."""

    def fingerprint(self) -> str:
        """Hash of what changes the samples. Partition, time limit or output dir never change it."""
        affects = {
            "model": self.model.model_dump(exclude={"engine_args", "gpu_memory_utilization", "tensor_parallel_size",
                                                    "hf_batch_size", "max_model_len"}),
            "data": self.data.model_dump(exclude={"records_per_shard"}),
            "sampling": self.sampling.model_dump(),
        }
        for ds in self.data.datasets:  # a changed input file is a new run
            p = Path(ds.path)
            st = p.stat() if p.exists() else None
            affects[f"file:{ds.name}"] = [st.st_size, st.st_mtime_ns] if st else None
        blob = json.dumps(affects, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def run_id(self) -> str:
        return f"{self.name}-{self.fingerprint()[:10]}"


class _FieldError(ValueError):
    """Raised inside validators when the location is deeper than the validator's own field."""

    def __init__(self, loc: tuple[str | int, ...], message: str, allowed: str, fix: str) -> None:
        super().__init__(message)
        self.loc, self.message, self.allowed, self.fix = loc, message, allowed, fix


def _did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


PATH_FIELDS = (("model", "path"), ("data", "scenario"), ("output", "dir"), ("output", "scratch_dir"))


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, merge (extends), override (--set) and validate a job spec. Raises SpecError on any problem."""
    from .spec_validate import validate

    layers = load_layers(Path(path), overrides or [])
    return validate(layers, JobSpec)


def spec_from_dict(data: dict[str, Any], where: str = "<dict>") -> JobSpec:
    """Validate an already-parsed spec (e.g. built from the old script's flags)."""
    from .spec_loader import Layers
    from .spec_validate import validate

    return validate(Layers.from_dict(data, where), JobSpec)


def json_schema() -> dict[str, Any]:
    schema = JobSpec.model_json_schema()
    schema["properties"]["extends"] = {"type": "string", "description": "Another spec (a cluster profile) to start from."}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "launcher job spec"
    return schema


__all__ = [
    "BUILTIN_ABLATIONS",
    "ContainerSpec",
    "DataSpec",
    "DatasetSpec",
    "JobSpec",
    "ModelSpec",
    "OutputSpec",
    "SamplingSpec",
    "SlurmSpec",
    "SpecError",
    "json_schema",
    "load_spec",
    "spec_from_dict",
]
