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

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer, field_validator, model_validator

from .errors import SpecError
from .spec_loader import load_layers

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Slug = Annotated[str, Field(pattern=SLUG)]
SLUG_RE = re.compile(SLUG)
# Control characters (newline above all) end an #SBATCH line and start a script line: never allowed in a value
# that reaches the batch script, a path or an argv.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Slurm partition/account/QOS names (partition may be a comma list) and the feature expression of --constraint.
SLURM_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,+-]{0,127}")
CONSTRAINT_RE = re.compile(r"[A-Za-z0-9_.,:&|!*()\[\]=-]{1,512}")
SBATCH_VALUE_MAX = 1024
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_VALUE_MAX = 32 * 1024  # one argv item must stay far below Linux's 128 KiB MAX_ARG_STRLEN
# Keys whose values are credentials: never written in plain text to spec.json, run.json, logs or scripts.
SECRET_KEY_RE = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL", re.IGNORECASE)
# engine_args keys that hold a credential (hf_token, api_key, ...), but not max_num_batched_tokens and friends.
SECRET_ARG_RE = re.compile(r"(?:^|_)(?:token|secret|password|passwd|key|credential)$", re.IGNORECASE)
REDACTED = "<redacted>"
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


def _plain_path(value: str, what: str) -> str:
    if CONTROL_RE.search(value):
        raise ValueError(f"{what} contains a control character (newline, tab, NUL, ...): {value!r}; rename the folder")
    return value


class ModelSpec(_Section):
    path: str = Field(min_length=1)
    """Folder of an HF-format checkpoint (config.json, weights, tokenizer). Relative: from the spec's folder."""
    backend: Literal["auto", "vllm", "hf"] = "auto"
    """auto: vLLM when it imports and supports the architecture, else HF transformers. The summary says which, why."""
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

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _plain_path(value, "the model path")

    @field_validator("quantization")
    @classmethod
    def _quantization(cls, value: str | None) -> str | None:
        from .engine_values import QUANTIZATION, did_you_mean

        if value is not None and value not in QUANTIZATION:
            raise _FieldError((), f"unknown quantization {value!r}", f"one of vLLM's: {', '.join(QUANTIZATION)}",
                              did_you_mean(value, QUANTIZATION) or "remove it for an unquantized checkpoint; an AWQ "
                              "checkpoint says awq in its config.json")
        return value

    @field_validator("engine_args")
    @classmethod
    def _enumerated(cls, value: dict[str, Any]) -> dict[str, Any]:
        from .engine_values import ENUMERATED_ENGINE_ARGS, did_you_mean

        for key, allowed in ENUMERATED_ENGINE_ARGS.items():
            if key in value and str(value[key]) not in allowed:
                raise _FieldError((key,), f"{key} {value[key]!r} is not a value vLLM accepts", ", ".join(allowed),
                                  did_you_mean(str(value[key]), allowed) or f"use one of the allowed values, or "
                                  f"remove {key} (auto)")
        return value

    @field_validator("engine_args")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        secret = [k for k in value if SECRET_ARG_RE.search(k)]
        if secret:
            raise _FieldError((secret[0],), f"{secret[0]!r} looks like a credential; engine_args are "
                              "stored in plain text in the run directory (spec.json)", "vLLM engine arguments",
                              "remove it and pass the secret as container.env (e.g. HF_TOKEN), which is redacted")
        return value


class DatasetSpec(_Section):
    name: Slug
    """Short name; used in task ids and as the output folder <output.dir>/<name>/<ablation>/."""
    path: str | None = Field(default=None, min_length=1)
    """JSONL, Parquet, CSV file, or a folder saved by HF datasets' save_to_disk. Unset: found by `name` in the
    dataset catalog (the top-level `datasets:` map of this spec, its profile or launcher.yaml), else under
    `data_root`."""
    split: str | None = None
    """For a saved HF DatasetDict with several splits: which one (train, test, ...). Unset: its only split."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _plain_path(value, "the dataset path")

    @property
    def file(self) -> Path:
        """The records' path (set by the spec, or found in the catalog when the spec was loaded)."""
        if self.path is None:
            raise SpecError.one("<spec>", f"data.datasets.{self.name}.path", f"dataset {self.name!r} has no path",
                                fix="give its path, or add it to the catalog (`datasets:` in launcher.yaml)")
        return Path(self.path)


class FieldNames(_Section):
    user_id: str = "user_id"
    """Column holding the user id (one output JSON per user)."""
    record_id: str | None = None
    """Column holding a unique record id. Unset: the user id, so one record per user: a second row of the same user
    is quarantined as a duplicate (`launcher plan` counts them). Set it when a user has several records. A record's
    samples depend on (sampling.seed, this id); ids are compared as text (1 and "1" are the same record)."""
    profile: str = "profile"
    """Column with the user's profile (text or a mapping)."""
    history: str = "history"
    """Column with the user's history (text or a list of items)."""
    context: str = "context"
    """Column with the current context / query the generation answers."""


class TemplateSpec(_Section):
    text: str | None = None
    """A jinja2 template. Variables: profile, history, context, preamble, record (the whole row), user_id, record_id."""
    file: str | None = None
    """A file holding the jinja2 template (relative to the spec's folder)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> TemplateSpec:
        if (self.text is None) == (self.file is None):
            both = self.text is not None
            raise _FieldError((), f"{'both' if both else 'neither of'} `text` and `file` given",
                              "exactly one of text: (the jinja2 template) or file: (a path to one)",
                              "remove one of them" if both else "add text: or file:")
        return self


class DataSpec(_Section):
    datasets: list[DatasetSpec] = Field(min_length=1)
    """Inputs. Each dataset x ablation config x shard is one unit of work."""
    ablation_configs: list[str] = Field(default_factory=lambda: ["full"], min_length=1)
    """Which parts of a record the prompt shows: built-in names (see BUILTIN_ABLATIONS) or keys of `templates`."""
    templates: dict[str, TemplateSpec] = Field(default_factory=dict)
    """Custom ablation configs as jinja2 templates, by name."""
    num_samples: int = Field(default=5, ge=1, le=1024)
    """Samples generated per record (vLLM's n)."""
    records_per_shard: int | None = Field(default=None, ge=1)
    """Records per unit of work (a shard of one dataset x ablation config). Workers claim units one after another,
    so this only sets how work is cut, not how many engines start. Unset: at least 4 units per worker, at most
    2000 records each. Fixed for a run at its first submit."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N records of each dataset (quick tests)."""
    fields: FieldNames = Field(default_factory=FieldNames)
    """Names of the record's columns."""
    preamble: str | None = None
    """Optional text file every prompt starts with (a task description); templates see it as {{ preamble }}.
    Not the old --scenario_path, which named the records (`launcher run --scenario_path` still does)."""
    system_prompt: str | None = None
    """System message put before the prompt when the tokenizer has a chat template."""
    chat_template: bool = True
    """Wrap each prompt in the tokenizer's chat template when it has one."""

    @field_validator("templates")
    @classmethod
    def _template_names(cls, value: dict[str, TemplateSpec]) -> dict[str, TemplateSpec]:
        for name in value:  # the name becomes a folder (<output.dir>/<dataset>/<name>/) and part of task ids
            if not SLUG_RE.fullmatch(name):
                raise _FieldError((name,), f"template name {name!r} cannot be a folder name",
                                  "1-64 of letters, digits, '_', '.', '-', starting with a letter or digit",
                                  f"rename it, e.g. {_slugify(name)!r}")
        return value

    @field_validator("ablation_configs")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            raise _FieldError((), f"listed twice: {', '.join(dupes)}", "each name once",
                              "remove the repeated name (each config already runs once per dataset)")
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
    match = TIME_RE.fullmatch(text)
    if not match:
        raise ValueError(f"not a Slurm time: {text!r}")
    days, first, second, third = match.groups()
    nums = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        h, m, s = [*nums, 0, 0][:3]
        return int(days) * 1440 + h * 60 + m + (1 if s else 0)
    if len(nums) == 1:
        return nums[0]
    if len(nums) == 2:  # M:S
        return nums[0] + (1 if nums[1] else 0)
    h, m, s = nums
    return h * 60 + m + (1 if s else 0)
MEM_RE = re.compile(r"^\d+(?:[KMGT])?$")
# sbatch options with a field of their own, and those the launcher/submitit write themselves.
SBATCH_FIELDS = {"partition": "partition", "p": "partition", "account": "account", "qos": "qos", "mem": "mem",
                 "time": "time", "t": "time", "constraint": "constraint", "nodes": "nodes",
                 "gpus-per-node": "gpus_per_node", "cpus-per-task": "cpus_per_gpu", "cpus-per-gpu": "cpus_per_gpu",
                 "signal": "signal_delay_s"}
SBATCH_OWNED = {"array": "one array element per task", "output": "log files the launcher reads",
                "error": "log files the launcher reads", "open-mode": "logs are appended across requeues",
                "job-name": "the spec's name", "wrap": "the batch script is the launcher's",
                "ntasks-per-node": "one task per node", "ntasks": "one task per node", "parsable": "job ids are parsed"}


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
    """At most this many worker jobs run at once (%N). Unset: as many as the cluster allows."""
    max_gpus: int | None = Field(default=None, ge=1, le=100_000)
    """GPUs the whole run may hold at once: it gets max_gpus / gpus_per_node worker jobs (array elements), each
    running one engine per GPU group and claiming units of work until none is left. Unset: see `jobs`."""
    jobs: int | None = Field(default=None, ge=1, le=100_000)
    """Worker jobs (array elements), when you would rather count jobs than GPUs (also on CPU). Unset, with max_gpus
    unset too: enough for 4 units per worker, at most 8 jobs. Never more than there are units."""
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
        if not TIME_RE.fullmatch(value):
            raise ValueError("use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS (e.g. 04:00:00)")
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not MEM_RE.fullmatch(value):
            raise ValueError("use a number with an optional K/M/G/T suffix, e.g. 64G")
        return value

    @field_validator("partition", "account", "qos")
    @classmethod
    def _slurm_name(cls, value: str | None) -> str | None:
        # These land in #SBATCH lines: a newline would start a script line, and no Slurm name has a space,
        # quote or '$' in it, so anything else is refused here rather than by sbatch after the run dir exists.
        if value is not None and not SLURM_NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Slurm name: use 1-128 letters, digits, '_', '.', ',', '+', '-' "
                             "(`sinfo -s` lists partitions, `sacctmgr show assoc user=$USER` accounts and QOS)")
        return value

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        if value is not None and not CONSTRAINT_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Slurm feature expression: use feature names joined by & | , "
                             "with [ ] ( ) * (e.g. h100|a100); no spaces, quotes, '$', ';' or newlines")
        return value

    @field_validator("extra_args")
    @classmethod
    def _extra(cls, value: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, v in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,63}", key):
                raise _FieldError((key,), f"{key!r} is not an sbatch long option name",
                                  "lowercase letters, digits, '-'",
                                  "write the long option without its dashes, e.g. reservation, mail-user")
            if key in SBATCH_FIELDS:
                raise _FieldError((key,), f"--{key} has its own field", f"slurm.{SBATCH_FIELDS[key]}",
                                  f"set slurm.{SBATCH_FIELDS[key]} instead (one place for each setting)")
            if key in SBATCH_OWNED:
                raise _FieldError((key,), f"--{key} is set by the launcher ({SBATCH_OWNED[key]})",
                                  "any other sbatch long option", "remove it")
            if isinstance(v, str) and (CONTROL_RE.search(v) or "\\" in v or len(v) > SBATCH_VALUE_MAX):
                raise _FieldError((key,), "an #SBATCH value must be one line without backslashes (a newline would "
                                  "start a script line; sbatch's own parser drops backslashes); got "
                                  f"{v[:80]!r}{'...' if len(v) > 80 else ''}",
                                  f"one line of at most {SBATCH_VALUE_MAX} characters, no '\\'",
                                  "remove the control characters and backslashes")
            if v is False:  # `exclusive: false` means "leave it off"; submitit would write --exclusive=False
                continue
            out[key] = v
        return out

    @model_validator(mode="after")
    def _one_job_count(self) -> SlurmSpec:
        if self.jobs is not None and self.max_gpus is not None:
            raise _FieldError(("jobs",), f"both jobs ({self.jobs}) and max_gpus ({self.max_gpus}) are set",
                              "one of slurm.jobs or slurm.max_gpus", "remove one: max_gpus counts GPUs, jobs counts "
                              "array elements (each with gpus_per_node GPUs)")
        return self

    @model_validator(mode="after")
    def _signal_before_limit(self) -> SlurmSpec:
        if self.signal_delay_s >= self.time_min * 60:
            raise _FieldError(("signal_delay_s",), f"signal_delay_s {self.signal_delay_s} s is not shorter than the "
                              f"time limit {self.time!r} ({self.time_min} min): USR2 would come at once and every "
                              "attempt would requeue without doing anything", f"less than {self.time_min * 60}",
                              "raise slurm.time or lower slurm.signal_delay_s (e.g. a tenth of the time limit)")
        return self

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
    """Variables set inside the container. Secrets (names with TOKEN, SECRET, PASSWORD, KEY, CREDENTIAL) reach the
    container through run_dir/container.json only; spec.json, run.json and logs show them as <redacted>."""

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and (not value or value.startswith("-") or CONTROL_RE.search(value) or len(value) > 4096):
            raise ValueError(f"{value[:80]!r} is not an image: it must not be empty, start with '-' (the runtime would "
                             "read it as an option) or hold control characters")
        return value

    @field_validator("binds")
    @classmethod
    def _binds(cls, value: list[str]) -> list[str]:
        from .container import Bind
        from .errors import ContainerError

        for i, text in enumerate(value):
            try:
                Bind.parse(text)
            except ContainerError as exc:
                raise _FieldError((i,), exc.first.message, "host[:container[:ro|rw]] with absolute paths, no ':' "
                                  "inside a path", exc.first.fix or "fix the bind") from None
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, v in value.items():
            if not ENV_NAME_RE.fullmatch(name):
                raise _FieldError((name,), f"{name!r} is not an environment variable name",
                                  "letters, digits and '_', not starting with a digit", "rename the variable")
            if "\0" in v or len(v) > ENV_VALUE_MAX:
                raise _FieldError((name,), "the value holds a NUL byte or is too long to pass on a command line",
                                  f"at most {ENV_VALUE_MAX} characters, no NUL", "put long values in a bound file")
        return value

    @field_serializer("env", when_used="json")
    def _redact_env(self, value: dict[str, str]) -> dict[str, str]:
        # spec.json and run.json are readable by whoever can read the run dir; the value itself reaches the
        # container through run_dir/container.json only.
        return {k: REDACTED if SECRET_KEY_RE.search(k) else v for k, v in value.items()}

    @model_validator(mode="after")
    def _image_needed(self) -> ContainerSpec:
        if self.runtime != "none" and not self.image:
            raise _FieldError(("image",), f"runtime {self.runtime} needs an image", "a .sif path or image name",
                              "set container.image, or container.runtime: none to run without one")
        return self


class OutputSpec(_Section):
    dir: str = Field(min_length=1)
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

    @field_validator("dir", "scratch_dir")
    @classmethod
    def _dir(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _plain_path(value, "the folder")
        # The folder ends up in #SBATCH --output: Slurm expands %j, %A... there, and its parser drops backslashes,
        # so the logs would land in another folder than the one submitit reads.
        if "%" in value or "\\" in value:
            raise ValueError(f"{value!r} holds '%' or a backslash, which Slurm reads as a file name pattern (%j = "
                             "job id) or an escape in the log paths; use a folder without them")
        return value


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
    def _conflicts(self) -> JobSpec:
        tp = self.model.tensor_parallel_size
        if self.model.backend == "hf" and isinstance(tp, int) and tp > 1:
            raise _FieldError(("model", "tensor_parallel_size"), f"tensor_parallel_size {tp} with backend hf: the HF "
                              "backend runs one engine per GPU (data-parallel), never tensor-parallel",
                              "auto or 1 with backend hf", "use model.backend: vllm, or tensor_parallel_size: auto")
        if self.model.max_model_len is not None and self.sampling.max_tokens >= self.model.max_model_len:
            raise _FieldError(("sampling", "max_tokens"), f"max_tokens {self.sampling.max_tokens} leaves no room for "
                              f"the prompt in max_model_len {self.model.max_model_len}: every record would be "
                              "quarantined", f"less than model.max_model_len ({self.model.max_model_len})",
                              "lower sampling.max_tokens or raise model.max_model_len")
        return self

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # dict fields: not hashable, as before

    def where(self, *key: str | int) -> str:
        """file:line (or the flag, or --set) that set `key`, else its closest parent's; "<spec>" when unknown."""
        for n in range(len(key), -1, -1):
            if key[:n] in self._origin:
                return self._origin[key[:n]]
        return self._root

    def fingerprint(self) -> str:
        """Hash of the spec's own fields that change the samples. Partition, time limit or output dir never change
        it, nor do file dates: what the input files hold is checked at submit (inputs.py), not hashed here, so a
        touched dataset keeps its run."""
        affects: dict[str, Any] = {
            "model": self.model.model_dump(exclude={"engine_args", "gpu_memory_utilization", "tensor_parallel_size",
                                                    "hf_batch_size", "max_model_len"}),
            "data": self.data.model_dump(exclude={"records_per_shard"}),
            "sampling": self.sampling.model_dump(),
        }
        blob = json.dumps(affects, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def run_id(self) -> str:
        """The base run id. A submit may pick another (`<base>-<inputs>` after --new-run): the run's own directory
        name is the run id from then on (run_state.resolve_run)."""
        return f"{self.name}-{self.fingerprint()[:10]}"


class _FieldError(ValueError):
    """Raised inside validators when the location is deeper than the validator's own field."""

    def __init__(self, loc: tuple[str | int, ...], message: str, allowed: str, fix: str) -> None:
        super().__init__(message)
        self.loc, self.message, self.allowed, self.fix = loc, message, allowed, fix


def _slugify(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("._-")[:64]
    return clean or "custom"


def _did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""




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
    schema["properties"]["extends"] = {"type": "string",
                                       "description": "Another spec (a cluster profile) to start from."}
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
