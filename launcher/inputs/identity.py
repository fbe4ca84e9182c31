"""inputs/identity.py: what a run's inputs *are* (not their paths or file dates) -> a digest recorded at submit.

The run id is the spec's name plus a hash of the spec's own fields that change samples (spec.fingerprint); it no
longer hashes file dates, so touching a dataset changes nothing. What the files hold is checked here instead:
- a dataset file: its size and sha256 (files over FULL_HASH_BYTES: size + sampled blocks, see `_sampled_sha`);
  a saved HF dataset folder: the same for each of its files;
- the model: config.json, every file that shapes prompts (the tokenizer's files, its chat templates -- the
  chat_template.jinja transformers writes, additional_chat_templates/*.jinja --, generation_config.json), the
  safetensors index, and every weight file's name, size, header (tensor names, dtypes, shapes) and sampled blocks of
  its data: a checkpoint retrained into the same shapes and copied over the same path changes the sampled blocks;
- the spec's own prompt files: data.chat_template as a file, data.templates files (`prompts`).
A later submit of the same spec compares; when something changed it stops (exit 2) and says what, and the user
chooses `--new-run` (a run of its own) or `--resume` (the same run, the change recorded in run.json). A changed
model is never resumed: its old samples would be presented as the new model's. While a run runs, every unit checks
the files it reads against this record again (guard.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.store.atomic import sha256_file

FULL_HASH_BYTES = 1 << 30  # hash a file whole up to 1 GiB; beyond, size + sampled blocks
SAMPLE_BLOCKS = 32
SAMPLE_BYTES = 1 << 16
MODEL_SMALL_FILES = (
    "config.json",
    "adapter_config.json",  # a LoRA adapter folder (model.adapters)
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "quantize_config.json",
    "preprocessor_config.json",
    # what shapes prompts besides tokenizer.json: transformers' own chat template file(s), slow tokenizers' files
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
# Recorded since identity version 2: a run recorded before is compared without them (see `_as_recorded`).
V2_MODEL_FILES = ("chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json")
IDENTITY_VERSION = 2


def _sampled_sha(path: Path, start: int = 0) -> str:
    """sha256 over SAMPLE_BLOCKS blocks spread evenly over [start, size) plus the last block: every region of a
    rewritten file is looked at, at the cost of 2 MiB of reads."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    span = max(0, size - start)
    with path.open("rb") as f:
        for k in range(SAMPLE_BLOCKS):
            f.seek(start + span * k // SAMPLE_BLOCKS)
            h.update(f.read(SAMPLE_BYTES))
        f.seek(max(start, size - SAMPLE_BYTES))
        h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def file_identity(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size <= FULL_HASH_BYTES:
        return {"size": size, "sha256": sha256_file(path)}
    return {"size": size, "sampled_sha256": _sampled_sha(path)}


def _safetensors_identity(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        header = f.read(n) if 0 < n < 100 << 20 else b""
    return {
        "size": path.stat().st_size,
        "header_sha256": hashlib.sha256(header).hexdigest(),
        "sampled_sha256": _sampled_sha(path, 8 + len(header)),
    }


def model_identity(model_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in MODEL_SMALL_FILES:
        p = model_dir / name
        if p.is_file():
            out[name] = file_identity(p)
    for p in sorted((model_dir / "additional_chat_templates").glob("*.jinja")):
        out[f"additional_chat_templates/{p.name}"] = file_identity(p)
    for p in sorted(model_dir.glob("*.safetensors")):
        out[p.name] = _safetensors_identity(p)
    for p in sorted([*model_dir.glob("*.bin"), *model_dir.glob("*.pt")]):
        out[p.name] = {"size": p.stat().st_size, "sampled_sha256": _sampled_sha(p)}
    return out


def dataset_identity(path: Path) -> dict[str, Any]:
    if path.is_dir():
        return {
            str(p.relative_to(path)): file_identity(p)
            for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }
    return file_identity(path)


@dataclass(frozen=True)
class InputIdentity:
    model: dict[str, Any]
    data: dict[str, Any]  # dataset name -> its identity
    preamble: dict[str, Any] | None
    prompts: dict[str, Any] = field(default_factory=dict)  # "chat_template", "templates.<ablation>" -> file identity

    def _blob(self) -> dict[str, Any]:
        blob: dict[str, Any] = {"model": self.model, "data": self.data, "preamble": self.preamble}
        return blob | ({"prompts": self.prompts} if self.prompts else {})

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self._blob(), sort_keys=True).encode()).hexdigest()

    def as_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "version": IDENTITY_VERSION, **self._blob(), "prompts": self.prompts}

    def as_recorded(self, recorded: dict[str, Any]) -> InputIdentity:
        """This identity as a launcher that wrote `recorded` saw it: a run recorded before version 2 is compared
        without the files version 2 added (else upgrading the launcher would refuse every run in progress)."""
        if recorded.get("version", 1) >= IDENTITY_VERSION:
            return self

        def v1(model: dict[str, Any]) -> dict[str, Any]:  # file name -> identity, or name -> such a mapping
            return {
                k: v1(v) if isinstance(v, dict) and "size" not in v else v
                for k, v in model.items()
                if k not in V2_MODEL_FILES and not k.startswith("additional_chat_templates/")
            }

        return InputIdentity(v1(self.model), self.data, self.preamble)


def matches(recorded: dict[str, Any], now: InputIdentity) -> bool:
    """The identity recorded at an earlier submit is this one (None recorded: a run from before 0.2, taken as is)."""
    digest = recorded.get("digest")
    return digest is None or digest == now.as_recorded(recorded).digest


def prompt_files(spec: Any) -> dict[str, Path]:
    """The spec's own files that shape prompts: data.chat_template when it names a file, data.templates files."""
    files: dict[str, Path] = {}
    chat = spec.data.chat_template
    if isinstance(chat, str) and "{" not in chat:
        files["chat_template"] = Path(chat)
    for name, tpl in spec.data.templates.items():
        if tpl.file is not None:
            files[f"templates.{name}"] = Path(tpl.file)
    return files


def identify(spec: Any) -> InputIdentity:
    """The spec's inputs as they are now (the spec is a JobSpec; paths are absolute after loading)."""
    data = {ds.name: dataset_identity(ds.file) for ds in spec.data.datasets}
    preamble = file_identity(Path(spec.data.preamble)) if spec.data.preamble else None

    def one(path: str) -> dict[str, Any]:
        if spec.model.load_format == "dummy":
            return {"config.json": file_identity(Path(path) / "config.json")}
        return model_identity(Path(path))

    # One model: its files, as runs always recorded them; a models: sweep: name -> its files.
    model = {name: one(path) for name, path in spec.models.items()} if spec.models else one(spec.model.path)
    if spec.model.adapters:
        model["adapters"] = {n: model_identity(Path(p)) for n, p in spec.model.adapters.items() if p}
    prompts = {key: file_identity(path) for key, path in prompt_files(spec).items() if path.is_file()}
    return InputIdentity(model, data, preamble, prompts)


def changes(recorded: dict[str, Any], now: InputIdentity) -> list[str]:
    """What differs between the identity recorded at an earlier submit and now, in words (empty: nothing)."""
    if not recorded:
        return []
    now = now.as_recorded(recorded)
    out = []
    if recorded.get("model") != now.model:
        old, new = recorded.get("model") or {}, now.model
        files = sorted({k for k in {*old, *new} if old.get(k) != new.get(k)})
        out.append(f"model: {', '.join(files[:6])}{' ...' if len(files) > 6 else ''} changed")
    for name in sorted({*(recorded.get("data") or {}), *now.data}):
        if (recorded.get("data") or {}).get(name) != now.data.get(name):
            out.append(f"data: dataset {name!r} holds other content")
    if recorded.get("preamble") != now.preamble:
        out.append("data: the preamble file changed")
    old_prompts = recorded.get("prompts") or {}
    for key in sorted({*old_prompts, *now.prompts}):
        if old_prompts.get(key) != now.prompts.get(key):
            out.append(f"data: the {key.replace('templates.', 'template ')} file changed")
    return out


def model_changed(recorded: dict[str, Any], now: InputIdentity) -> bool:
    return bool(recorded) and recorded.get("model") != now.as_recorded(recorded).model


__all__ = [
    "InputIdentity",
    "changes",
    "dataset_identity",
    "file_identity",
    "identify",
    "matches",
    "model_changed",
    "model_identity",
    "prompt_files",
]
