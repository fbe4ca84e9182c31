"""plan/preflight.py: JobSpec -> every input a task will read, checked before anything is submitted or written, so that
bad input costs seconds on the login node, not a queued job.

Reads files only (no GPU, no Slurm, no writes). Each error points at the spec line that set the field, names the
file it found wrong and says what to change: a task must never fail an hour into the queue for something that
could be seen on the login node. Bad *rows* are not errors (tasks quarantine them); a dataset with no usable row is.
The model's checks (checkpoint, quantization, layout, context, adapters, nodes) are in model_checks.py; the data,
prompts, output folder and container are here, and check_all runs them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from launcher.errors import SpecError
from launcher.inputs.model import model_chat_template
from launcher.plan.first_rows import check_first_rows
from launcher.plan.model_checks import check_adapters, check_context, check_layout, check_model, check_nodes
from launcher.spec import JobSpec

SAMPLE_ROWS = 200
NAME_MAX = 255  # bytes in one path component (ext4, xfs, GPFS, Lustre)
PATH_MAX = 3500  # leaves room under Linux's 4096 for runs/<run id>/tasks/<task id>/chunks/<file>


def _moved(spec: JobSpec, key: tuple[str | int, ...], exc: SpecError, path: Path) -> SpecError:
    """A helper's error (it only knew the data file) re-pointed at the spec line, the file named in the message."""
    p = exc.problems[0]
    return spec.error(key, f"{path}: {p.message}", p.allowed, p.fix)


# ---- data ------------------------------------------------------------------------------------------------------
def check_datasets(spec: JobSpec) -> dict[str, int]:
    """Rows per dataset; refuses files that are missing, unreadable, empty or without a single usable record."""
    from launcher.inputs.records import count_rows, detect_format, sample_records

    rows: dict[str, int] = {}
    for i, ds in enumerate(spec.data.datasets):
        key = ("data", "datasets", i, "path")
        path = ds.file
        if not path.exists():
            raise spec.error(
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
            raise spec.error(
                key,
                f"cannot read {path}: permission denied",
                "",
                "tasks run as you: give yourself read access (chmod u+r)",
            ) from None
        except Exception as exc:  # pyarrow, csv and datasets raise their own kinds
            raise spec.error(
                key,
                f"cannot read {path} as {fmt}: {type(exc).__name__}: {str(exc)[:200]}",
                f"a valid {fmt} file",
                "check that the file is complete and really is "
                f"{fmt} (a half-copied file? a different format under this extension?)",
            ) from None
        if spec.data.limit is not None:
            n = min(n, spec.data.limit)
        if n == 0:
            raise spec.error(
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
    elif first.reason.startswith(("not UTF-8 text", "text UTF-8 cannot encode")):
        fix = f"save {path.name} as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`)"
    elif "all empty" in first.reason:
        fix = (
            f"set data.fields.profile/history/context (now {fields.profile!r}, {fields.history!r}, "
            f"{fields.context!r}) to columns of the file: {', '.join(sample.columns)}"
        )
    else:
        fix = "check the file against data.fields"
    return spec.error(
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
    """The chat template prompts go through (the spec's own, else the model's): readable, jinja2 that compiles, and
    a dry render of a one-message conversation within bounds (inputs/bounded.py): a template that loops without end
    or writes gigabytes is refused here, exit 2, not after the queue."""
    from jinja2 import TemplateSyntaxError

    from launcher.inputs.bounded import BoundedChatSandbox, BoundExceeded, render
    from launcher.inputs.prompts import read_chat_template

    key = ("data", "chat_template")
    try:
        text = read_chat_template(spec.data)
    except SpecError as exc:
        raise _moved(spec, key, exc, Path(str(spec.data.chat_template))) from None
    source = "data.chat_template"
    if text is None and spec.data.chat_template is True:
        text, source = model_chat_template(Path(spec.model.path)), "the model's chat template"
    if text is None:
        return
    env = BoundedChatSandbox()
    try:
        template = env.from_string(text)
    except TemplateSyntaxError as exc:
        raise SpecError.one(
            spec.where(*key),
            "data.chat_template",
            f"{source}: jinja2 syntax error at template line {exc.lineno}: {exc.message}",
            fix="check {{ }} and {% %} pairs; transformers renders chat templates with jinja2",
        ) from None
    probe = {"messages": [{"role": "user", "content": "Hello"}], "add_generation_prompt": True}
    try:
        render(template, probe)
    except BoundExceeded as exc:
        raise SpecError.one(
            spec.where(*key),
            "data.chat_template",
            f"{source} is unbounded: {exc}",
            allowed="a chat template that renders a conversation in well under a second",
            fix="fix the template's loops; or set data.chat_template to a template of your own (or false)",
        ) from None
    except Exception:  # raise_exception for roles this probe lacks, variables it does not pass: not ours to judge
        return


def _dotted_key(key: tuple[str | int, ...]) -> str:
    from launcher.spec.validate import _dotted

    return _dotted(key)


# ---- where outputs go, and the container ---------------------------------------------------------------------
def check_output_dir(spec: JobSpec) -> None:
    key = ("output", "dir")
    out = Path(spec.output.dir)
    too_long = [p for p in out.parts if len(os.fsencode(p)) > NAME_MAX]
    if too_long or len(os.fsencode(str(out))) > PATH_MAX:
        raise spec.error(
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
        raise spec.error(
            key,
            f"{existing} is a file, so {out} cannot be created",
            "a folder (made if missing)",
            "choose another output.dir",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise spec.error(
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
            raise spec.error(
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
        raise spec.error(
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
    check_first_rows(first)  # settings that would quarantine every record, columns no row has
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
