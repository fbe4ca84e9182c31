"""Bad input corpus: every broken spec is refused by `launcher plan` AND `launcher submit` with exit code 2, a message
naming the spec file, the line, the field and a fix, and nothing written (the output dir never appears).

Most cases run the CLI's `main()` in this process (the console script calls exactly that); a sample of them also
runs as real subprocesses. Plan-time checks only read files, so the model here is a fake folder: a config.json
with 6 heads / 2 KV heads, a tokenizer file, a weights file. One real run (tiny model, HF on the CPU) shows the
one "bad input" that is deliberately *not* an error: malformed rows are quarantined and the run goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from launcher.cli import main
from launcher.store import read_jsonl

from .conftest import ROOT, USERS, make_spec

# ---- the world the specs point at -------------------------------------------------------------------------------
SIX_HEADS = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "hidden_size": 384,
    "num_hidden_layers": 2,
    "intermediate_size": 768,
    "vocab_size": 100,
    "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16",
}


def fake_model(folder: Path, config: object = SIX_HEADS, weights: bool = True, tokenizer: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights:
        (folder / "model.safetensors").write_bytes(b"\0" * 64)
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("world")
    fake_model(w / "model")
    fake_model(w / "model-noweights", weights=False)
    fake_model(w / "model-notok", tokenizer=False)
    fake_model(w / "model-badjson", config="{not json")
    fake_model(w / "model-list", config="[1, 2]")
    (w / "model-noconfig").mkdir()
    fake_model(w / "model-configdir", weights=True).joinpath("config.json").unlink()
    (w / "model-configdir" / "config.json").mkdir()  # EISDIR: what root sees of an unreadable file, near enough
    fake_model(w / "model-weightsdir", weights=False).joinpath("model.safetensors").mkdir()
    (w / "model-file").write_text("not a folder")
    d = w / "data"
    d.mkdir()
    (d / "good.jsonl").write_text("".join(json.dumps(u) + "\n" for u in USERS))
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n\n   \n")
    (d / "allbad.jsonl").write_text('{not json\n[1, 2]\n"text"\n')
    (d / "uid.jsonl").write_text(
        "".join(json.dumps({"uid": u["user_id"], "context": u["context"]}) + "\n" for u in USERS)
    )
    (d / "array.json").write_text(json.dumps(USERS, indent=2))
    (d / "latin1.csv").write_bytes("user_id,context\nu1,caf\xe9 cr\xe8me\n".encode("latin-1"))
    (d / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (d / "notes.txt").write_text("hello\n")
    (d / "folder").mkdir()
    (w / "scenario.txt").write_text("You write reviews.")
    (w / "file.txt").write_text("a file where a folder is expected")
    return w


# ---- the corpus -----------------------------------------------------------------------------------------------
BASE = """\
name: bad
model:
  path: @W@/model
data:
  datasets:
    - name: users
      path: @W@/data/good.jsonl
  num_samples: 2
sampling:
  max_tokens: 8
  temperature: 1.0
output:
  dir: @OUT@
executor: local
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def add(text: str, after: str = "executor: local\n", base: str = BASE) -> str:
    """Insert lines after the line `after` (the end of the file by default)."""
    assert after in base, after
    return base.replace(after, after + text, 1)


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    yaml: str
    line_of: str | None  # the line the error must point at: the first line holding this text
    field: str = ""  # the dotted field the error must name ("" for YAML syntax errors)
    fix: str = ""  # a word the fix must contain
    submit_args: tuple[str, ...] = ()


SLURM = "executor: slurm\nslurm:\n  partition: debug\n  gpus_per_node: @GPUS@\n"
TP = "  tensor_parallel_size: @TP@\n"


def tp_case(tp: str, gpus: int, backend: str = "auto") -> str:
    text = edit("executor: local\n", SLURM.replace("@GPUS@", str(gpus)))
    text = edit("  path: @W@/model\n", f"  path: @W@/model\n  backend: {backend}\n" + TP.replace("@TP@", tp), text)
    return text


CASES = [
    # -- wrong types
    Case("type-name-int", "type", edit("name: bad", "name: 123"), "name: 123", "name", "text"),
    Case(
        "type-num-samples-str",
        "type",
        edit("num_samples: 2", "num_samples: five"),
        "num_samples",
        "data.num_samples",
        "whole number",
    ),
    Case(
        "type-temperature-str",
        "type",
        edit("temperature: 1.0", "temperature: hot"),
        "temperature",
        "sampling.temperature",
        "[0.0, 2.0]",
    ),
    Case(
        "type-datasets-str",
        "type",
        edit("  datasets:\n    - name: users\n      path: @W@/data/good.jsonl\n", "  datasets: @W@/data/good.jsonl\n"),
        "datasets:",
        "data.datasets",
        "list",
    ),
    Case(
        "type-model-str",
        "type",
        edit("model:\n  path: @W@/model\n", "model: @W@/model\n"),
        "model:",
        "model",
        "section",
    ),
    Case("type-stop-int", "type", add("  stop: 3\n", after="  temperature: 1.0\n"), "stop: 3", "sampling.stop", "list"),
    Case(
        "type-gpus-float",
        "type",
        add("slurm:\n  gpus_per_node: 1.5\n"),
        "gpus_per_node",
        "slurm.gpus_per_node",
        "[0, 16]",
    ),
    Case(
        "type-per-user-json",
        "type",
        add("  per_user_json: maybe\n", after="  dir: @OUT@\n"),
        "per_user_json",
        "output.per_user_json",
        "true or false",
    ),
    Case("type-env-list", "type", add("container:\n  env:\n    A: [1]\n"), "A: [1]", "container.env.A", "text"),
    # -- out of range
    Case(
        "range-temperature",
        "range",
        edit("temperature: 1.0", "temperature: -0.2"),
        "temperature",
        "sampling.temperature",
        "[0.0, 2.0]",
    ),
    Case(
        "range-top-p",
        "range",
        add("  top_p: 1.5\n", after="  temperature: 1.0\n"),
        "top_p",
        "sampling.top_p",
        "(0.0, 1.0]",
    ),
    Case("range-top-k", "range", add("  top_k: -2\n", after="  temperature: 1.0\n"), "top_k", "sampling.top_k", "-1"),
    Case(
        "range-gpu-mem",
        "range",
        add("  gpu_memory_utilization: 0\n", after="  path: @W@/model\n"),
        "gpu_memory_utilization",
        "model.gpu_memory_utilization",
        "(0.0, 1.0]",
    ),
    Case(
        "range-num-samples",
        "range",
        edit("num_samples: 2", "num_samples: 5000"),
        "num_samples",
        "data.num_samples",
        "1024",
    ),
    Case(
        "range-max-tokens",
        "range",
        edit("max_tokens: 8", "max_tokens: 0"),
        "max_tokens",
        "sampling.max_tokens",
        "131072",
    ),
    Case("range-seed", "range", add("  seed: -1\n", after="  temperature: 1.0\n"), "seed", "sampling.seed", "[0,"),
    Case(
        "range-max-model-len",
        "range",
        add("  max_model_len: 8\n", after="  path: @W@/model\n"),
        "max_model_len",
        "model.max_model_len",
        "[16,",
    ),
    Case(
        "range-tp-zero",
        "range",
        add("  tensor_parallel_size: 0\n", after="  path: @W@/model\n"),
        "tensor_parallel_size",
        "model.tensor_parallel_size",
        "auto",
    ),
    Case("range-nodes", "range", add("slurm:\n  nodes: 65\n"), "nodes: 65", "slurm.nodes", "from 1 to 64, or auto"),
    Case(
        "range-chunk-records",
        "range",
        add("  chunk_records: 0\n", after="  dir: @OUT@\n"),
        "chunk_records",
        "output.chunk_records",
        "[1,",
    ),
    Case("range-time", "range", add("slurm:\n  time: 4h\n"), "time: 4h", "slurm.time", "HH:MM:SS"),
    Case("range-mem", "range", add("slurm:\n  mem: lots\n"), "mem: lots", "slurm.mem", "64G"),
    # -- unknown keys
    Case("unknown-top", "unknown", add("modle:\n  dtype: auto\n"), "modle:", "modle", "model"),
    Case(
        "unknown-temprature",
        "unknown",
        edit("temperature: 1.0", "temprature: 1.0"),
        "temprature",
        "sampling.temprature",
        "temperature",
    ),
    Case("unknown-partion", "unknown", add("slurm:\n  partion: gpu\n"), "  partion:", "slurm.partion", "partition"),
    Case(
        "unknown-dataset-singular",
        "unknown",
        add("  dataset: x.jsonl\n", after="  num_samples: 2\n"),
        "dataset: x",
        "data.dataset",
        "datasets",
    ),
    Case(
        "unknown-output-directory",
        "unknown",
        add("  directory: /tmp/x\n", after="  dir: @OUT@\n"),
        "  directory:",
        "output.directory",
        "dir",
    ),
    # -- missing
    Case("missing-name", "missing", edit("name: bad\n", ""), None, "name", "name:"),
    Case("missing-output", "missing", edit("output:\n  dir: @OUT@\n", ""), None, "output", "output:"),
    Case(
        "missing-model-path", "missing", edit("  path: @W@/model\n", "  backend: hf\n"), "model:", "model.path", "path:"
    ),
    # -- YAML syntax
    Case("yaml-tab", "yaml", edit("  num_samples: 2", "\tnum_samples: 2"), "num_samples", "", "tabs"),
    Case("yaml-unclosed-quote", "yaml", edit("name: bad", 'name: "bad'), None, "", "quote"),
    Case("yaml-unclosed-bracket", "yaml", add("  stop: [a, b\n", after="  temperature: 1.0\n"), None, "", "quote"),
    Case(
        "yaml-duplicate-key",
        "yaml",
        add("  temperature: 0.7\n", after="  temperature: 1.0\n"),
        "temperature: 0.7",
        "sampling.temperature",
        "remove one",
    ),
    Case(
        "yaml-python-tag",
        "yaml",
        add("extra: !!python/object/apply:os.system ['touch @W@/pwned']\n"),
        "extra:",
        "",
        "tag",
    ),
    Case("yaml-not-mapping", "yaml", "- name: bad\n- model: x\n", "- name", "", "demo.yaml"),
    Case("yaml-two-documents", "yaml", BASE + "---\nname: other\n", "---", "", "indentation"),
    Case(
        "yaml-alias-bomb",
        "yaml",
        add("x0: &x0 [lol]\n" + "".join(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]\n" for i in range(1, 8))),
        None,
        "",
        "aliases",
    ),
    # -- missing files
    Case(
        "file-model-missing", "files", edit("@W@/model\n", "@W@/nope-model\n"), "nope-model", "model.path", "demo-model"
    ),
    Case(
        "file-dataset-missing",
        "files",
        edit("good.jsonl", "missing.jsonl"),
        "missing.jsonl",
        "data.datasets[0].path",
        "relative",
    ),
    Case(
        "file-preamble-missing",
        "files",
        add("  preamble: @W@/nope.txt\n", after="  num_samples: 2\n"),
        "preamble",
        "data.preamble",
        "path",
    ),
    Case(
        "renamed-scenario",
        "fields",
        add("  scenario: @W@/nope.txt\n", after="  num_samples: 2\n"),
        "scenario",
        "data.scenario",
        "rename",
    ),
    Case(
        "file-template-missing",
        "files",
        add(
            "  ablation_configs: [mine]\n  templates:\n    mine:\n      file: @W@/nope.j2\n", after="  num_samples: 2\n"
        ),
        "file: @W@/nope.j2",
        "data.templates.mine.file",
        "relative",
    ),
    Case("file-extends-missing", "files", "extends: profiles/nope.yaml\n" + BASE, "extends", "extends", "relative"),
    # -- datasets
    Case("data-empty", "data", edit("good.jsonl", "empty.jsonl"), "empty.jsonl", "data.datasets[0].path", "remove"),
    Case(
        "data-blank-lines", "data", edit("good.jsonl", "blank.jsonl"), "blank.jsonl", "data.datasets[0].path", "remove"
    ),
    Case(
        "data-all-rows-bad", "data", edit("good.jsonl", "allbad.jsonl"), "allbad.jsonl", "data.datasets[0].path", "jq"
    ),
    Case("data-json-array", "data", edit("good.jsonl", "array.json"), "array.json", "data.datasets[0].path", "jq"),
    Case(
        "data-user-id-column",
        "data",
        edit("good.jsonl", "uid.jsonl"),
        "uid.jsonl",
        "data.datasets[0].path",
        "data.fields.user_id",
    ),
    Case("data-csv-not-utf8", "data", edit("good.jsonl", "latin1.csv"), "latin1.csv", "data.datasets[0].path", "csv"),
    Case(
        "data-corrupt-parquet",
        "data",
        edit("good.jsonl", "broken.parquet"),
        "broken.parquet",
        "data.datasets[0].path",
        "parquet",
    ),
    Case(
        "data-unknown-extension", "data", edit("good.jsonl", "notes.txt"), "notes.txt", "data.datasets[0].path", "JSONL"
    ),
    Case("data-plain-folder", "data", edit("good.jsonl", "folder"), "data/folder", "data.datasets[0].path", "file"),
    # -- the model folder
    Case("model-is-file", "model", edit("@W@/model\n", "@W@/model-file\n"), "model-file", "model.path", "folder"),
    Case(
        "model-no-config",
        "model",
        edit("@W@/model\n", "@W@/model-noconfig\n"),
        "model-noconfig",
        "model.path",
        "config.json",
    ),
    Case(
        "model-config-not-json",
        "model",
        edit("@W@/model\n", "@W@/model-badjson\n"),
        "model-badjson",
        "model.path",
        "save_pretrained",
    ),
    Case(
        "model-config-a-list",
        "model",
        edit("@W@/model\n", "@W@/model-list\n"),
        "model-list",
        "model.path",
        "save_pretrained",
    ),
    Case(
        "model-no-weights",
        "model",
        edit("@W@/model\n", "@W@/model-noweights\n"),
        "model-noweights",
        "model.path",
        "load_format: dummy",
    ),
    Case(
        "model-config-unreadable",
        "model",
        edit("@W@/model\n", "@W@/model-configdir\n"),
        "model-configdir",
        "model.path",
        "cannot read",
    ),
    Case(
        "model-weights-unreadable",
        "model",
        edit("@W@/model\n", "@W@/model-weightsdir\n"),
        "model-weightsdir",
        "model.path",
        "cannot read",
    ),
    Case(
        "model-no-tokenizer",
        "model",
        edit("@W@/model\n", "@W@/model-notok\n"),
        "model-notok",
        "model.path",
        "tokenizer",
    ),
    # -- heads that cannot be split over the GPUs asked (6 heads, 2 KV heads)
    Case(
        "heads-tp4",
        "heads",
        add(TP.replace("@TP@", "4"), after="  path: @W@/model\n"),
        "tensor_parallel_size",
        "model.tensor_parallel_size",
        "1, 2, 6",
    ),
    Case(
        "heads-all-over-4",
        "heads",
        tp_case("all", 4),
        "tensor_parallel_size",
        "model.tensor_parallel_size",
        "gpus_per_node",
        ("--executor", "local"),
    ),
    Case(
        "heads-tp-more-than-gpus",
        "heads",
        tp_case("6", 2),
        "tensor_parallel_size",
        "model.tensor_parallel_size",
        "gpus_per_node: 6",
        ("--executor", "local"),
    ),
    Case(
        "heads-tp-no-gpu",
        "heads",
        tp_case("2", 0),
        "tensor_parallel_size",
        "model.tensor_parallel_size",
        "gpus_per_node: 2",
        ("--executor", "local"),
    ),
    # -- options that contradict each other
    Case(
        "conflict-hf-tp",
        "conflict",
        tp_case("2", 2, backend="hf"),
        "tensor_parallel_size",
        "model.tensor_parallel_size",
        "backend: vllm",
        ("--executor", "local"),
    ),
    Case(
        "conflict-max-tokens-vs-len",
        "conflict",
        add("  max_model_len: 64\n", after="  path: @W@/model\n", base=edit("max_tokens: 8", "max_tokens: 64")),
        "max_tokens",
        "sampling.max_tokens",
        "max_model_len",
    ),
    Case(
        "conflict-max-tokens-vs-model",
        "conflict",
        edit("max_tokens: 8", "max_tokens: 5000"),
        "max_tokens",
        "sampling.max_tokens",
        "lower",
    ),
    Case(
        "conflict-len-vs-model",
        "conflict",
        add("  backend: vllm\n  max_model_len: 8192\n", after="  path: @W@/model\n"),
        "max_model_len",
        "model.max_model_len",
        "4096",
    ),
    Case(
        "conflict-signal-vs-time",
        "conflict",
        add("slurm:\n  time: 1\n  signal_delay_s: 120\n"),
        "signal_delay_s",
        "slurm.signal_delay_s",
        "signal_delay_s",
    ),
    Case(
        "conflict-extra-partition",
        "conflict",
        add("slurm:\n  partition: debug\n  extra_args:\n    partition: high\n"),
        "    partition: high",
        "slurm.extra_args.partition",
        "slurm.partition",
    ),
    Case(
        "conflict-extra-array",
        "conflict",
        add("slurm:\n  extra_args:\n    array: 0-99\n"),
        "array:",
        "slurm.extra_args.array",
        "remove",
    ),
    Case(
        "conflict-template-text-and-file",
        "conflict",
        add(
            "  ablation_configs: [mine]\n  templates:\n    mine:\n      text: hi\n      file: @W@/scenario.txt\n",
            after="  num_samples: 2\n",
        ),
        "    mine:",
        "data.templates.mine",
        "exactly one",
    ),
    Case(
        "conflict-dataset-names",
        "conflict",
        add("    - name: users\n      path: @W@/data/uid.jsonl\n", after="      path: @W@/data/good.jsonl\n"),
        "good.jsonl\n    - name: users",
        "data.datasets[1].name",
        "own name",
    ),
    Case(
        "conflict-ablation-twice",
        "conflict",
        add("  ablation_configs: [full, full]\n", after="  num_samples: 2\n"),
        "ablation_configs",
        "data.ablation_configs",
        "remove the repeated",
    ),
    Case(
        "conflict-docker-no-image",
        "conflict",
        add("container:\n  runtime: docker\n"),
        "container:",
        "container.image",
        "container.image",
    ),
    Case(
        "conflict-unknown-ablation",
        "conflict",
        add("  ablation_configs: [profile_and_contxt]\n", after="  num_samples: 2\n"),
        "ablation_configs",
        "data.ablation_configs[0]",
        "profile_and_context",
    ),
    Case(
        "conflict-output-under-file",
        "conflict",
        edit("dir: @OUT@", "dir: @W@/file.txt/out"),
        "dir:",
        "output.dir",
        "another",
    ),
    # -- templates
    Case(
        "template-syntax",
        "template",
        add(
            "  ablation_configs: [mine]\n  templates:\n    mine:\n      text: 'Hi {{ context }'\n",
            after="  num_samples: 2\n",
        ),
        "text: 'Hi",
        "data.templates.mine.text",
        "pairs",
    ),
    Case(
        "template-unknown-variable",
        "template",
        add(
            "  ablation_configs: [mine]\n  templates:\n    mine:\n      text: 'Hi {{ contxt }}'\n",
            after="  num_samples: 2\n",
        ),
        "text: 'Hi",
        "data.templates.mine.text",
        "record['column']",
    ),
]
# Issue 26: refused at plan what can only waste GPUs, and anything unbounded (templates, schemas, regexes)
LOOP = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
CASES += [
    Case(
        "waste-stop-empty",
        "waste",
        add('  stop: [".", ""]\n', after="  temperature: 1.0\n"),
        "stop:",
        "sampling.stop",
        "remove the empty string",
    ),
    Case(
        "waste-field-no-row-has",
        "waste",
        add("  fields:\n    profile: bio\n", after="  num_samples: 2\n"),
        "profile: bio",
        "data.fields.profile",
        "data.fields.profile",
    ),
    Case(
        "waste-template-fails-every-row",
        "waste",
        add(
            "  ablation_configs: [mine]\n  templates:\n    mine:\n      text: \"{{ record['nope'] }}\"\n",
            after="  num_samples: 2\n",
        ),
        'text: "{{ record',
        "data.templates.mine",
        "record['column']",
    ),
    Case(
        "unbounded-template-loop",
        "unbounded",
        add(
            f"  ablation_configs: [mine]\n  templates:\n    mine:\n      text: '{LOOP}'\n",
            after="  num_samples: 2\n",
        ),
        "text: '{%",
        "data.templates.mine.text",
        "loops",
    ),
    Case(
        "unbounded-template-repeat",
        "unbounded",
        add(
            "  ablation_configs: [mine]\n  templates:\n    mine:\n      text: \"{{ 'x' * 10**10 }}\"\n",
            after="  num_samples: 2\n",
        ),
        'text: "{{',
        "data.templates.mine.text",
        "repetitions",
    ),
    Case(
        "unbounded-template-reads-env",
        "unbounded",
        add(
            "  ablation_configs: [mine]\n  templates:\n    mine:\n"
            "      text: '{{ cycler.__init__.__globals__.os.environ }}'\n",
            after="  num_samples: 2\n",
        ),
        "text: '{{",
        "data.templates.mine.text",
        "record['column']",
    ),
    Case(
        "unbounded-template-reads-file",
        "unbounded",
        add(
            "  ablation_configs: [mine]\n  templates:\n    mine:\n      text: \"{% include '/etc/passwd' %}\"\n",
            after="  num_samples: 2\n",
        ),
        'text: "{%',
        "data.templates.mine.text",
        "cannot read files",
    ),
    Case(
        "unbounded-chat-template",
        "unbounded",
        add(f"  chat_template: '{LOOP}'\n", after="  num_samples: 2\n"),
        "chat_template:",
        "data.chat_template",
        "loops",
    ),
    Case(
        "unbounded-schema-remote-ref",
        "unbounded",
        add("  structured:\n    json_schema: {$ref: 'https://example.com/s.json'}\n", after="  temperature: 1.0\n"),
        "json_schema:",
        "sampling.structured.json_schema",
        "$defs",
    ),
    Case(
        "unbounded-schema-file-ref",
        "unbounded",
        add("  structured:\n    json_schema: {$ref: 'file:///etc/passwd'}\n", after="  temperature: 1.0\n"),
        "json_schema:",
        "sampling.structured.json_schema",
        "$defs",
    ),
    Case(
        "unbounded-schema-ref-cycle",
        "unbounded",
        add("  structured:\n    json_schema: {anyOf: [{$ref: '#'}]}\n", after="  temperature: 1.0\n"),
        "json_schema:",
        "sampling.structured.json_schema",
        "$defs",
    ),
    Case(
        "unbounded-regex-backreference",
        "unbounded",
        add("  structured:\n    regex: '(a+)\\1'\n", after="  temperature: 1.0\n"),
        "regex:",
        "sampling.structured.regex",
        "without backreferences",
    ),
]
ABSENT_LINE = {
    "missing-name": 1,
    "missing-output": 1,
    "yaml-unclosed-quote": 1,
    "yaml-unclosed-bracket": None,
    "yaml-alias-bomb": None,
}


def materialize(case: Case, world: Path, root: Path) -> tuple[Path, Path, int | None]:
    """Write the case's spec; returns (spec, output dir, expected line)."""
    out = root / f"out-{case.id}"
    text = case.yaml.replace("@W@", str(world)).replace("@OUT@", str(out))
    spec = root / f"{case.id}.yaml"
    spec.write_text(text)
    line: int | None
    if case.id in ABSENT_LINE:
        line = ABSENT_LINE[case.id]
    else:
        assert case.line_of is not None
        marker = case.line_of.replace("@W@", str(world)).replace("@OUT@", str(out))
        head = text[: text.index(marker)]
        line = head.count("\n") + 1 + marker.count("\n")  # a marker spanning lines points at its last line
    return spec, out, line


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_refused(rc: int, err: str, spec: Path, line: int | None, case: Case) -> None:
    assert rc == 2, f"{case.id}: exit {rc}\n{err}"
    assert "nothing was submitted or written" in err, err
    where = f"{spec.name}:{line}" if line is not None else spec.name
    assert where in err, f"{case.id}: expected {where!r} in\n{err}"
    if case.field:
        assert case.field in err, f"{case.id}: expected field {case.field!r} in\n{err}"
    fixes = [ln for ln in err.splitlines() if ln.strip().startswith("fix:") and len(ln.split("fix:", 1)[1].strip()) > 3]
    assert fixes, f"{case.id}: no fix in\n{err}"
    assert case.fix in err, f"{case.id}: expected {case.fix!r} in the message\n{err}"


@pytest.fixture
def in_tmp_cwd(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)  # file names in messages are shown relative to the working directory when below it
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_corpus_size() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert {c.category for c in CASES} >= {
        "type",
        "range",
        "unknown",
        "missing",
        "yaml",
        "files",
        "data",
        "model",
        "heads",
        "conflict",
    }


def test_base_spec_is_valid(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The corpus's starting point plans fine (so each case fails for its own reason) and plan writes nothing."""
    spec, out, _ = materialize(Case("base", "ok", BASE, "name:"), world, tmp_path)
    assert main(["plan", str(spec)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["plan", str(spec), "--set", "executor=slurm", "--json"]) == 0  # renders the sbatch script too
    assert "#SBATCH --array" in json.loads(capsys.readouterr().out)["sbatch"]
    assert not out.exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_spec_refused(case: Case, world: Path, in_tmp_cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, out, line = materialize(case, world, in_tmp_cwd)
    before_world, before_tmp = tree(world), tree(in_tmp_cwd)
    for argv in (["plan", str(spec)], ["submit", str(spec), *case.submit_args]):
        rc = main(argv)
        assert_refused(rc, capsys.readouterr().err, spec, line, case)
    assert not out.exists(), "a refused spec must leave no output dir"
    assert tree(world) == before_world and tree(in_tmp_cwd) == before_tmp, "a refused spec must write nothing"
    assert not (world / "pwned").exists()


SUBPROCESS_SAMPLE = {
    "yaml-duplicate-key": "plan",
    "data-empty": "submit",
    "heads-all-over-4": "submit",
    "unknown-temprature": "plan",
}


def test_bad_specs_through_the_console_script(world: Path, tmp_path: Path) -> None:
    """The same refusals through `python -m launcher` in real processes (exit status as a shell sees it)."""
    procs = []
    for case in (c for c in CASES if c.id in SUBPROCESS_SAMPLE):
        spec, out, line = materialize(case, world, tmp_path)
        cmd = SUBPROCESS_SAMPLE[case.id]
        for argv in ([cmd, str(spec), *(case.submit_args if cmd == "submit" else ())],):
            procs.append(
                (
                    case,
                    spec,
                    out,
                    line,
                    subprocess.Popen(
                        [sys.executable, "-m", "launcher", *argv],
                        cwd=tmp_path,
                        text=True,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    ),
                )
            )
    for case, spec, out, line, proc in procs:
        _, err = proc.communicate(timeout=120)
        assert_refused(proc.returncode, err, spec, line, case)
        assert not out.exists()


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["plan", str(tmp_path / "nope.yaml")],
        ["submit", str(tmp_path / "nope.yaml")],
        ["plan", str(tmp_path)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "nope.yaml" in err or str(tmp_path) in err
        assert "fix:" in err


def test_spec_not_utf8_names_the_line(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "latin.yaml"
    spec.write_bytes(
        BASE.replace("@W@", str(world))
        .replace("@OUT@", str(tmp_path / "o"))
        .replace("name: bad", "name: caf\xe9")
        .encode("latin-1")
    )
    assert main(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "latin.yaml:1" in err and "UTF-8" in err


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to act as another user")
def test_unreadable_model_dir(world: Path) -> None:
    """Permission denied on the model (as a user who cannot read it; root reads everything, so run as slurmtest)."""
    user = "slurmtest"
    probe = subprocess.run(
        ["runuser", "-u", user, "--", sys.executable, "-c", "import launcher"],
        capture_output=True,
        cwd="/tmp",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if probe.returncode != 0:
        pytest.skip(f"user {user} cannot run this Python ({probe.stderr.decode().strip()[:120]})")
    root = Path(tempfile.mkdtemp(prefix="launcher-perm-", dir="/tmp"))
    try:
        root.chmod(0o755)
        model = fake_model(root / "model")
        model.chmod(0o700)  # root's: slurmtest cannot enter
        data = root / "users.jsonl"
        data.write_text(json.dumps(USERS[0]) + "\n")
        data.chmod(0o644)
        out = root / "out"
        spec = root / "spec.yaml"
        spec.write_text(
            BASE.replace("@W@/model", str(model)).replace("@W@/data/good.jsonl", str(data)).replace("@OUT@", str(out))
        )
        spec.chmod(0o644)
        for cmd in ("plan", "submit"):
            proc = subprocess.run(
                ["runuser", "-u", user, "--", sys.executable, "-m", "launcher", cmd, str(spec)],
                cwd="/tmp",
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/tmp"},
            )
            assert proc.returncode == 2, proc.stderr
            assert "spec.yaml:3" in proc.stderr and "model.path" in proc.stderr
            assert "permission denied" in proc.stderr and "fix:" in proc.stderr
        assert not out.exists()
    finally:
        shutil.rmtree(root)


# ---- `launcher run` with the old inference_vllm.py flags --------------------------------------------------------
def legacy_args(world: Path, out: Path, **flags: str | None) -> list[str]:
    args = {
        "checkpoint_dir": str(world / "model"),
        "dataset": str(world / "data" / "good.jsonl"),
        "output_dir": str(out),
        **flags,
    }
    return ["run", *[x for k, v in args.items() if v is not None for x in (f"--{k}", v)]]


BAD_FLAGS: list[tuple[dict[str, str | None], str]] = [
    ({"temperature": "abc"}, "--temperature"),
    ({"temperature": "5"}, "--temperature"),
    ({"top_p": "0"}, "--top_p"),
    ({"top_k": "-3"}, "--top_k"),
    ({"num_samples": "0"}, "--num_samples"),
    ({"max_tokens": "0"}, "--max_tokens"),
    ({"seed": "-1"}, "--seed"),
    ({"max_model_len": "4"}, "--max_model_len"),
    ({"gpu_memory_utilization": "1.5"}, "--gpu_memory_utilization"),
    ({"tensor_parallel_size": "x"}, "--tensor_parallel_size"),
    ({"tensor_parallel_size": "0"}, "--tensor_parallel_size"),
    ({"tensor_parallel_size": "4"}, "--tensor_parallel_size"),  # 6 heads
    ({"ablation_config": "profile_and_contxt"}, "--ablation_config"),
    ({"checkpoint_dir": "/nonexistent/model"}, "--checkpoint_dir"),
    ({"dataset": "/nonexistent/d.jsonl"}, "--dataset"),
    ({"scenario_path": "/nonexistent/s.txt"}, "--scenario_path"),
    ({"output_dir": None}, "--output_dir"),
    ({"dataset": None}, "--dataset"),
    ({"max_tokens": "5000"}, "--max_tokens"),  # the model has 4096 positions
    ({"no_such_flag": "1"}, "--no_such_flag"),
]


@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS, ids=[f"{k}={v}" for f, _ in BAD_FLAGS for k, v in f.items()])
def test_bad_legacy_flags(
    flags: dict[str, str | None], named: str, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "legacy-out"
    rc = run_main(legacy_args(world, out, **flags))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert named in err, err
    assert "fix" in err, err
    assert not out.exists()


def run_main(argv: list[str]) -> int:
    """main()'s exit status; argparse's errors leave through SystemExit, as in the console script."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_spec_and_legacy_flags_conflict(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, out, _ = materialize(Case("both", "ok", BASE, "name:"), world, tmp_path)
    assert main(["run", "--spec", str(spec), "--temperature", "0.5"]) == 2
    assert "--temperature" in capsys.readouterr().err
    assert not out.exists()


# ---- malformed rows are NOT an error: they are quarantined and the run goes on ------------------------------------
BAD_ROWS = [
    "{this is not json",  # a truncated or hand-edited line
    '["a", "list"]',  # JSON, but not an object
    json.dumps({"profile": "no user id here", "context": "x"}),
    json.dumps({"user_id": "u-empty", "profile": "", "history": [], "context": None}),
    json.dumps({**USERS[0]}),  # u00 again: a duplicate record id
    json.dumps({"user_id": {"nested": 1}, "context": "x"}),  # a user id that is not text
]
ODD_USERS = ["../../escape", "$(touch PWNED)", "a/b\\c", "semi;colon `id`", "x" * 300, "CON", ".hidden", "é ü"]


def mixed_rows() -> list[str]:
    good = [json.dumps(u) for u in USERS[:3]]
    odd = [json.dumps({"user_id": u, "context": f"odd user {i}"}) for i, u in enumerate(ODD_USERS)]
    return [good[0], BAD_ROWS[0], good[1], *BAD_ROWS[1:], good[2], *odd]


SECRETS = {
    "HF_TOKEN": "hf_Secret0Token0Value",
    "MY_API_KEY": "sk-Secret1Key1Value",
    "DB_PASSWORD": "Secret2Pass",
    "AWS_SECRET_ACCESS_KEY": "Secret3Aws3Key",
}


class BackgroundRun:
    """A `launcher` process started early (it mostly waits for torch to import), finished when first looked at."""

    def __init__(self, argv: list[str], out: Path, **popen: Any) -> None:
        self.argv, self._out = argv, out
        self._popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
        self._done: subprocess.CompletedProcess[str] | None = None

    @property
    def proc(self) -> subprocess.CompletedProcess[str]:
        if self._done is None:
            stdout, stderr = self._popen.communicate(timeout=600)
            self._done = subprocess.CompletedProcess(self.argv, self._popen.returncode, stdout, stderr)
        return self._done

    @property
    def out(self) -> Path:
        self.proc  # noqa: B018 - the files are only complete once the process ended
        return self._out

    def stop(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.communicate()


class MixedRun(BackgroundRun):
    canary_dir: Path

    @property
    def group(self) -> Path:
        return self.out / "users" / "shellish"


def start_early(request: pytest.FixtureRequest, fixture: str) -> None:
    """Start a session fixture's real run at the first test of the module if any selected test needs it, so the
    in-process tests run while it imports torch."""
    if any(fixture in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue(fixture)


@pytest.fixture(autouse=True, scope="module")
def _mixed_run_in_background(request: pytest.FixtureRequest) -> None:
    start_early(request, "mixed_run")


# Real runs by name: test_injection uses these fixtures too, and pytest would give each module its own instance.
RUNS: dict[str, Any] = {}


@pytest.fixture(scope="session")
def mixed_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[MixedRun]:
    """One real run (umask 022, executor local, HF on the CPU) over a dataset with malformed rows and odd user ids,
    a template whose text is full of shell syntax, and secrets in the environment and in container.env."""
    if "mixed" in RUNS:
        yield RUNS["mixed"]
        return
    root = tmp_path_factory.mktemp("mixed")
    data = root / "users.jsonl"
    data.write_text("\n".join(mixed_rows()) + "\n")
    template = "Reply $(touch PWNED) `touch PWNED` ; rm -rf / && echo $HF_TOKEN > leak | {{ context }}"
    spec = make_spec(
        root,
        tiny_model,
        data,
        name="mixed",
        data={"ablation_configs": ["shellish"], "templates": {"shellish": {"text": template}}},
        output={"dir": str(root / "out"), "per_user_json": True, "chunk_records": 4},
        container={"env": {"HF_TOKEN": SECRETS["HF_TOKEN"], "VISIBLE_SETTING": "plain-value"}},
    )
    run = MixedRun(
        [sys.executable, "-m", "launcher", "submit", str(spec), "--wait"],
        root / "out",
        cwd=root,
        umask=0o022,
        env={**os.environ, **SECRETS},
    )
    run.canary_dir = root
    RUNS["mixed"] = run
    yield run
    run.stop()


def test_malformed_rows_are_quarantined_and_the_run_goes_on(mixed_run: MixedRun) -> None:
    assert mixed_run.proc.returncode == 0, mixed_run.proc.stdout + mixed_run.proc.stderr
    samples = list(read_jsonl(mixed_run.group / "samples.jsonl"))
    quarantine = list(read_jsonl(mixed_run.group / "quarantine.jsonl"))
    total = len(mixed_rows())
    assert len(samples) + len(quarantine) == total  # every row accounted for, exactly once
    assert {s["user_id"] for s in samples} == {u["user_id"] for u in USERS[:3]} | set(ODD_USERS)
    assert all(len(s["generated_samples"]) == 2 for s in samples)
    reasons = " | ".join(q["reason"] for q in quarantine)
    for expected in (
        "invalid JSON",
        "not a JSON object",
        "missing user id",
        "all empty",
        "duplicate record id",
        "must be text or an integer",
    ):
        assert expected in reasons, reasons
    assert all(isinstance(q["row"], int) and q["raw"] for q in quarantine)  # which line, and what it looked like
    summary = json.loads((mixed_run.group / "inference_summary.json").read_text())
    assert summary["quarantined"] == len(BAD_ROWS) and summary["records"] == len(samples)
    assert "quarantined" in mixed_run.proc.stdout  # the user is told, not only the files
