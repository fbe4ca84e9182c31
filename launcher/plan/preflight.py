"""preflight.py: JobSpec -> every input a task will read, checked before anything is submitted or written.

Reads files only (no GPU, no Slurm, no writes). Each error points at the spec line that set the field, names the
file it found wrong and says what to change: a task must never fail an hour into the queue for something that
could be seen on the login node. Bad *rows* are not errors (tasks quarantine them); a dataset with no usable row is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from launcher.errors import SpecError
from launcher.inputs.model import ModelShape, model_shape
from launcher.spec import JobSpec

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
SAMPLE_ROWS = 200
NAME_MAX = 255  # bytes in one path component (ext4, xfs, GPFS, Lustre)
PATH_MAX = 3500  # leaves room under Linux's 4096 for runs/<run id>/tasks/<task id>/chunks/<file>


def _fail(spec: JobSpec, key: tuple[str | int, ...], message: str, allowed: str = "", fix: str = "") -> SpecError:
    from launcher.spec.validate import _dotted

    return SpecError.one(spec.where(*key), _dotted(key), message, allowed, fix)


def _moved(spec: JobSpec, key: tuple[str | int, ...], exc: SpecError, path: Path) -> SpecError:
    """A helper's error (it only knew the data file) re-pointed at the spec line, the file named in the message."""
    p = exc.problems[0]
    return _fail(spec, key, f"{path}: {p.message}", p.allowed, p.fix)


# ---- model -----------------------------------------------------------------------------------------------------
def check_model(spec: JobSpec, key: tuple[str | int, ...] = ("model", "path")) -> ModelShape:
    folder = Path(spec.model.path)
    hf = "a folder with an HF checkpoint: config.json, weights (*.safetensors), tokenizer files"
    if not folder.exists():
        raise _fail(
            spec,
            key,
            f"not a folder: {folder} does not exist",
            hf,
            "check the path (relative paths are read from the spec's folder); `launcher demo-model DIR` "
            "makes a tiny model to try things with",
        )
    if not folder.is_dir():
        raise _fail(spec, key, f"{folder} is a file, not a folder", hf, "point at the checkpoint's folder")
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        names = os.listdir(folder)
    except FileNotFoundError:
        raise _fail(
            spec,
            key,
            f"no config.json in {folder}: not an HF-format checkpoint",
            hf,
            "point at the folder holding config.json; convert other formats with transformers first",
        ) from None
    except PermissionError as exc:
        raise _fail(
            spec,
            key,
            f"cannot read {exc.filename or folder}: permission denied",
            hf,
            "tasks run as you: give yourself read access (chmod -R u+rX, or ask the folder's owner)",
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _fail(
            spec,
            key,
            f"cannot read {config_path}: {exc}",
            hf,
            "config.json must be the JSON file transformers wrote (save_pretrained)",
        ) from None
    if not isinstance(config, dict):
        raise _fail(
            spec,
            key,
            f"{config_path} holds a {type(config).__name__}, not a JSON object",
            hf,
            "config.json must be the JSON object transformers wrote (save_pretrained)",
        )
    weights = sorted(p for g in WEIGHT_GLOBS for p in folder.glob(g))
    if spec.model.load_format != "dummy":
        if not weights:
            raise _fail(
                spec,
                key,
                f"no weight files ({', '.join(WEIGHT_GLOBS)}) in {folder}",
                hf,
                "copy the weights next to config.json, or set model.load_format: dummy to benchmark the "
                "architecture with random weights",
            )
        try:
            with weights[0].open("rb") as f:
                f.read(1)
        except OSError as exc:
            raise _fail(
                spec,
                key,
                f"cannot read {weights[0]}: {exc.strerror}",
                hf,
                "tasks run as you: give yourself read access to the weight files",
            ) from None
    if not any(n in names for n in TOKENIZER_FILES):
        raise _fail(
            spec,
            key,
            f"no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)})",
            hf,
            "save the tokenizer into the checkpoint folder (tokenizer.save_pretrained(folder))",
        )
    check_quantization(spec, config, config_path)
    try:
        return model_shape(folder)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise _fail(
            spec,
            key,
            f"{config_path}: unusable model shape ({exc})",
            hf,
            "num_attention_heads, num_key_value_heads, hidden_size must be positive integers",
        ) from None


QUANT_FAMILIES = {
    "awq": "awq",
    "auto_awq": "awq",
    "awq_marlin": "awq",
    "gptq": "gptq",
    "auto_gptq": "gptq",
    "gptq_marlin": "gptq",
    "marlin": "gptq",
    "compressed-tensors": "compressed-tensors",
    "bitsandbytes": "bitsandbytes",
    "gguf": "gguf",
    "modelopt": "modelopt",
    "quark": "quark",
}
ONLINE = (
    "fp8",
    "fp8_per_tensor",
    "fp8_per_block",
    "fp8_per_channel",
    "online",
    "int8_per_channel_weight_only",
    "nvfp4_per_token",
    "mxfp8",
    "torchao",
    "experts_int8",
)  # quantize an unquantized checkpoint as it loads


def check_quantization(spec: JobSpec, config: dict[str, Any], config_path: Path) -> None:
    """model.quantization (--quantization) against what the checkpoint is: the guide's AWQ path made 4-bit weights
    with AutoAWQ and ran them with --quantization awq; asking awq of an unquantized checkpoint, or fp8 of an AWQ one,
    fails inside vLLM on the node, an hour later."""
    asked = spec.model.quantization
    qc = config.get("quantization_config")
    method = str(qc.get("quant_method") or "").lower() if isinstance(qc, dict) else ""
    if not asked:
        return
    key = ("model", "quantization")
    fam_asked, fam_ckpt = QUANT_FAMILIES.get(asked, asked), QUANT_FAMILIES.get(method, method)
    if not method and asked not in ONLINE:
        raise _fail(
            spec,
            key,
            f"quantization {asked} asks for a checkpoint quantized with {fam_asked}, but "
            f"{config_path} has no quantization_config: the weights are not quantized",
            f"{', '.join(ONLINE[:3])}... (quantized while loading), or nothing",
            "quantize the checkpoint first (README: Quantized checkpoints, AutoAWQ), point at the quantized "
            "folder, or drop --quantization / model.quantization",
        )
    if method and asked in ONLINE:
        raise _fail(
            spec,
            key,
            f"quantization {asked} quantizes while loading, but {config_path} is already quantized ({method})",
            f"{method} or nothing (vLLM reads the checkpoint's own method)",
            "drop --quantization, or set it to the checkpoint's method",
        )
    if method and fam_asked != fam_ckpt:
        raise _fail(
            spec,
            key,
            f"quantization {asked}, but {config_path} says the checkpoint is quantized with {method}",
            f"{method} (or nothing: vLLM reads it from config.json)",
            f"set quantization: {method}, or leave it unset",
        )


def check_layout(spec: JobSpec, shape: ModelShape, nodes: int = 1) -> None:
    """The TP size asked for must split the heads, and fit the GPUs the task asks Slurm for."""
    from launcher.plan.layout import tp_splits_heads

    tp = spec.model.tensor_parallel_size
    if spec.model.backend == "hf" or tp == "auto" or nodes > 1:
        # hf runs TP=1 replicas; auto only ever picks a TP that splits the heads; over several nodes TP may span
        # them (check_nodes checks that layout)
        return
    key = ("model", "tensor_parallel_size")
    gpus = spec.slurm.gpus_per_node if spec.executor == "slurm" else None  # local: whatever the machine has
    valid = [t for t in range(1, 17) if tp_splits_heads(shape, t)]
    heads = f"{shape.heads} attention heads / {shape.kv_heads} KV heads"
    gpus_at = spec.where("slurm", "gpus_per_node")
    if isinstance(tp, int):
        if not tp_splits_heads(shape, tp):
            raise _fail(
                spec,
                key,
                f"tensor_parallel_size {tp} does not split the model's {heads} evenly",
                f"a TP size that divides them: {', '.join(map(str, valid))}",
                "use one of those, or tensor_parallel_size: auto",
            )
        if gpus is not None and tp > gpus:
            raise _fail(
                spec,
                key,
                f"tensor_parallel_size {tp} needs {tp} GPUs, but each task asks Slurm for "
                f"{gpus} (slurm.gpus_per_node, {gpus_at})",
                f"at most slurm.gpus_per_node ({gpus})",
                f"set slurm.gpus_per_node: {tp} (or more), or tensor_parallel_size: auto",
            )
    elif tp == "all" and gpus and not tp_splits_heads(shape, gpus):
        raise _fail(
            spec,
            key,
            f"tensor_parallel_size: all means TP={gpus} (slurm.gpus_per_node, {gpus_at}), "
            f"which does not split the model's {heads}",
            f"gpus_per_node in {valid}",
            f"set slurm.gpus_per_node to one of {valid}, or tensor_parallel_size: auto (TP that splits "
            "the heads, the other GPUs as data-parallel replicas)",
        )


def check_context(spec: JobSpec, model_dir: Path) -> None:
    """max_model_len and max_tokens against the model's own context length (what the runner also enforces)."""
    try:
        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    config = config.get("text_config", config) if "max_position_embeddings" not in config else config
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or positions <= 0:
        return
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    scaled = isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) not in (None, "default")
    asked = spec.model.max_model_len
    if asked is not None and asked > positions and not scaled and spec.model.backend != "hf":
        raise _fail(
            spec,
            ("model", "max_model_len"),
            f"max_model_len {asked} is longer than the model's context "
            f"({positions} positions, config.json max_position_embeddings); vLLM refuses to start",
            f"at most {positions}",
            f"set model.max_model_len: {positions} or less, or leave it unset",
        )
    limit = min(asked or positions, positions)
    if spec.sampling.max_tokens >= limit:
        raise _fail(
            spec,
            ("sampling", "max_tokens"),
            f"max_tokens {spec.sampling.max_tokens} leaves no room for a "
            f"prompt in the model's context of {limit} tokens: every record would be quarantined",
            f"less than {limit}",
            "lower sampling.max_tokens",
        )


# ---- data ------------------------------------------------------------------------------------------------------
def check_datasets(spec: JobSpec) -> dict[str, int]:
    """Rows per dataset; refuses files that are missing, unreadable, empty or without a single usable record."""
    from launcher.inputs.records import count_rows, detect_format, sample_records

    rows: dict[str, int] = {}
    for i, ds in enumerate(spec.data.datasets):
        key = ("data", "datasets", i, "path")
        path = ds.file
        if not path.exists():
            raise _fail(
                spec,
                key,
                f"file not found: {path}",
                "a JSONL, Parquet or CSV file, or a saved HF dataset",
                "check the path (relative paths are read from the spec's folder)",
            )
        fmt = path.suffix.lstrip(".") or "data"
        try:
            fmt = detect_format(path)
            n = count_rows(path, ds.split)
            sample = sample_records(
                path, spec.data.fields, min(SAMPLE_ROWS, spec.data.limit or SAMPLE_ROWS), ds.split, ds.format
            )
        except SpecError as exc:
            raise _moved(spec, key, exc, path) from None
        except PermissionError:
            raise _fail(
                spec,
                key,
                f"cannot read {path}: permission denied",
                "",
                "tasks run as you: give yourself read access (chmod u+r)",
            ) from None
        except Exception as exc:  # pyarrow, csv and datasets raise their own kinds
            raise _fail(
                spec,
                key,
                f"cannot read {path} as {fmt}: {type(exc).__name__}: {str(exc)[:200]}",
                f"a valid {fmt} file",
                "check that the file is complete and really is "
                f"{fmt} (a half-copied file? a different format under this extension?)",
            ) from None
        if spec.data.limit is not None:
            n = min(n, spec.data.limit)
        if n == 0:
            raise _fail(
                spec,
                key,
                f"{path} has no rows" + (" (only blank lines)" if path.stat().st_size else ""),
                "at least one record",
                "check the file, or remove this dataset from data.datasets",
            )
        if sample.usable == 0:
            raise _no_usable_rows(spec, key, path, sample)
        rows[ds.name] = n
    return rows


def _no_usable_rows(spec: JobSpec, key: tuple[str | int, ...], path: Path, sample: Any) -> SpecError:
    first = sample.bad[0]
    fields = spec.data.fields
    if first.reason.startswith("missing user id"):
        seen = ", ".join(sample.columns[:15]) or "none"
        fix = (
            f"set data.fields.user_id to the column that holds the user id (columns in the file: {seen}); "
            f"{spec.where('data', 'fields')}"
        )
    elif first.reason.startswith("missing record id"):
        fix = f"set data.fields.record_id to a column of the file, or remove it (columns: {', '.join(sample.columns)})"
    elif first.reason.startswith(("invalid JSON", "not a JSON object")):
        fix = "JSONL holds one JSON object per line; a JSON array converts with `jq -c '.[]' in.json > out.jsonl`"
    elif "all empty" in first.reason:
        fix = (
            f"set data.fields.profile/history/context (now {fields.profile!r}, {fields.history!r}, "
            f"{fields.context!r}) to columns of the file: {', '.join(sample.columns)}"
        )
    else:
        fix = "check the file against data.fields"
    return _fail(
        spec,
        key,
        f"none of the first {sample.rows} rows of {path} is a usable record; row {first.row}: {first.reason}",
        "rows with a user id and a profile, history or context",
        fix,
    )


# ---- prompts ---------------------------------------------------------------------------------------------------
def check_prompts(spec: JobSpec) -> None:
    from launcher.inputs.prompts import check_template, read_preamble, template_for

    try:
        read_preamble(spec.data)
    except SpecError as exc:
        raise _moved(spec, ("data", "preamble"), exc, Path(spec.data.preamble or "")) from None
    for ablation in spec.data.ablation_configs:
        tpl = spec.data.templates.get(ablation)
        part = "file" if tpl is not None and tpl.file is not None else "text"
        key = ("data", "templates", ablation, part)
        where = spec.where(*key) if tpl is not None else spec.where("data", "ablation_configs")
        if tpl is not None and tpl.file is not None:
            where = f"{where} ({tpl.file})"
        try:
            text = template_for(spec.data, ablation)
        except SpecError as exc:  # the template file cannot be read
            raise _moved(spec, key, exc, Path(tpl.file if tpl is not None and tpl.file else "")) from None
        check_template(text, _dotted_key(key), where)
    check_chat_template(spec)


def check_chat_template(spec: JobSpec) -> None:
    """The spec's own chat template: readable, and jinja2 that compiles (transformers renders it the same way)."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from launcher.inputs.prompts import read_chat_template

    key = ("data", "chat_template")
    try:
        text = read_chat_template(spec.data)
    except SpecError as exc:
        raise _moved(spec, key, exc, Path(str(spec.data.chat_template))) from None
    if text is None:
        return
    try:
        ImmutableSandboxedEnvironment().parse(text)
    except TemplateSyntaxError as exc:
        raise SpecError.one(
            spec.where(*key),
            "data.chat_template",
            f"jinja2 syntax error at template line {exc.lineno}: {exc.message}",
            fix="check {{ }} and {% %} pairs; transformers renders chat templates with jinja2",
        ) from None


def _dotted_key(key: tuple[str | int, ...]) -> str:
    from launcher.spec.validate import _dotted

    return _dotted(key)


# ---- where outputs go, and the container ---------------------------------------------------------------------
def check_output_dir(spec: JobSpec) -> None:
    key = ("output", "dir")
    out = Path(spec.output.dir)
    too_long = [p for p in out.parts if len(os.fsencode(p)) > NAME_MAX]
    if too_long or len(os.fsencode(str(out))) > PATH_MAX:
        raise _fail(
            spec,
            key,
            "the path is too long for the file system"
            + (f" (a part has {len(os.fsencode(too_long[0]))} bytes)" if too_long else ""),
            f"parts of at most {NAME_MAX} bytes, {PATH_MAX} in all",
            "use a shorter folder name",
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _fail(
            spec,
            key,
            f"{existing} is a file, so {out} cannot be created",
            "a folder (made if missing)",
            "choose another output.dir",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _fail(
            spec,
            key,
            f"no permission to write in {existing}",
            "a folder you can write to",
            "choose a folder on shared storage that you own (tasks write there from the compute nodes)",
        )
    # Outputs inside an input would change that input (the model's and a dataset folder's identity are their files:
    # inputs.py), and a cleanup of one would delete the other.
    inputs = [(f"model {n!r}" if n else "the model folder", Path(p)) for n, p in spec.model_paths().items()]
    inputs += [(f"adapter {n!r}", Path(p)) for n, p in spec.model.adapters.items() if p]
    inputs += [(f"dataset {ds.name!r}", ds.file) for ds in spec.data.datasets if ds.file.is_dir()]
    resolved = out.resolve()
    for what, folder in inputs:
        inside = folder.resolve()
        if resolved == inside or inside in resolved.parents:
            raise _fail(
                spec,
                key,
                f"{out} is inside {what} ({folder})",
                "a folder outside the model and the data",
                f"write outputs elsewhere, e.g. {inside.parent / (inside.name + '-outputs')}",
            )


def check_container(spec: JobSpec) -> None:
    """The argv a task will exec must be buildable: binds without ':' (or ',' for apptainer), valid env names."""
    if spec.container.runtime == "none":
        return
    from launcher.containers.shim import preview_argv
    from launcher.errors import ContainerError
    from launcher.store import RunDir

    try:
        preview_argv(spec, RunDir.of(spec.output.dir, spec.run_id).root, gpu_count=spec.slurm.gpus_per_node)
    except ContainerError as exc:
        raise _fail(
            spec,
            ("container", "runtime"),
            f"{spec.container.runtime} cannot run this job: {exc.first.message}",
            exc.first.allowed,
            exc.first.fix or "change the path or value named above",
        ) from None


def duplicate_report(spec: JobSpec) -> list[str]:
    """Per dataset, how many rows repeat a record id (all but the first of each are quarantined): what `plan` says
    up front, rather than leaving it to the quarantine file."""
    from launcher.inputs.records import duplicate_ids

    lines = []
    for ds in spec.data.datasets:
        try:
            dupes = duplicate_ids(ds.file, spec.data.fields, spec.data.limit, ds.split, ds.format)
        except (SpecError, OSError, ValueError):
            continue  # check_datasets reports what cannot be read
        if dupes:
            extra = sum(dupes.values()) - len(dupes)
            worst = sorted(dupes.items(), key=lambda kv: -kv[1])[:3]
            field = spec.data.fields.record_id or spec.data.fields.user_id
            lines.append(
                f"dataset {ds.name!r}: {len(dupes)} record id(s) repeat ({extra} row(s) will be quarantined "
                f"as duplicates), e.g. "
                + ", ".join(f"{k!r} x{v}" for k, v in worst)
                + f"; ids come from column {field!r}"
                + ("" if spec.data.fields.record_id else " (set data.fields.record_id when a user has several records)")
            )
    return lines


def check_adapters(spec: JobSpec) -> None:
    """Each LoRA adapter is a peft LoRA folder with weights; vLLM itself checks its modules against the model."""
    from launcher.inputs.adapters import AdapterError, read_adapter

    for name, folder in spec.model.adapters.items():
        if folder is None:
            continue
        try:
            read_adapter(folder)
        except AdapterError as exc:
            raise _fail(
                spec, ("model", "adapters", name), exc.message, "a folder peft's save_pretrained wrote", exc.fix
            ) from None


def check_nodes(spec: JobSpec, shape: ModelShape, nodes: int) -> None:
    """Over several nodes: the layout the job will pick (TP per node x one stage per node) must split the model."""
    from launcher.plan.layout import GpuSet, choose_multinode_layout

    if nodes == 1:
        return
    gpus = GpuSet(tuple(str(i) for i in range(spec.slurm.gpus_per_node)), "slurm.gpus_per_node")
    try:
        choose_multinode_layout(shape, gpus, nodes, spec.model.tensor_parallel_size)
    except SpecError as exc:
        p = exc.problems[0]
        raise _fail(spec, ("slurm", "nodes"), p.message, f"a layout over {nodes} nodes", p.fix) from None


def check_all(spec: JobSpec) -> dict[str, int]:
    from launcher.plan.nodes import choose_nodes

    # Each checkpoint of a models: sweep, as its own engine will load it; then the nodes a task gets, which every
    # model's engine spans (auto sizes them for the largest).
    models = {name: spec.for_model(name) for name in spec.model_names()}
    shapes = {name: check_model(one, ("models", name) if name else ("model", "path")) for name, one in models.items()}
    nodes = choose_nodes(spec).nodes
    for name, one in models.items():
        check_nodes(one, shapes[name], nodes)
        check_layout(one, shapes[name], nodes)
        check_context(one, Path(one.model.path))
    check_adapters(spec)
    first = spec.for_model(spec.model_names()[0])  # prompts are checked with the first model's tokenizer
    rows = check_datasets(first)
    check_prompts(first)
    check_output_dir(spec)
    check_container(spec)
    return rows


__all__ = [
    "check_adapters",
    "check_all",
    "check_container",
    "check_datasets",
    "check_layout",
    "check_model",
    "check_nodes",
    "check_output_dir",
    "check_prompts",
    "duplicate_report",
]
