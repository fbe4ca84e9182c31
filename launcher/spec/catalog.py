"""spec/catalog.py: a dataset's name -> its path, so that the old guide's users can name datasets as they did
(`--dataset Chameleons`).

Where a name is looked up, first hit wins:
1. the spec's top-level `datasets:` map (a catalog; usually set in the cluster profile it extends);
2. a project file `launcher.yaml` in the spec's folder or a parent of it, then in the current folder or a parent,
   and the file named by $LAUNCHER_CATALOG: their `datasets:` maps (names -> paths, relative to that file);
3. the data-root convention, under `data_root:` (spec, project file) or $LAUNCHER_DATA_ROOT:
   <root>/<name>.jsonl|.parquet|.csv, or <root>/<name>/scenarios.jsonl|test.jsonl|data.jsonl (.parquet, .csv too),
   with the name as given, then in lower case.
A name found nowhere is an error that lists the names it knows and how to add one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from launcher.errors import SpecError
from launcher.spec.load import Layers, SpecYamlLoader, resolve_path

PROJECT_FILE = "launcher.yaml"
CATALOG_ENV = "LAUNCHER_CATALOG"
DATA_ROOT_ENV = "LAUNCHER_DATA_ROOT"
SUFFIXES = (".jsonl", ".parquet", ".csv")
FOLDER_FILES = ("scenarios", "test", "data")


def project_files(start: Path | None) -> list[Path]:
    """launcher.yaml files that apply: from `start` (the spec's folder) upward, then the current folder upward, then
    $LAUNCHER_CATALOG. Nearest first."""
    found: list[Path] = []
    for origin in (start, Path.cwd()):
        if origin is None:
            continue
        for folder in [origin.resolve(), *origin.resolve().parents]:
            candidate = folder / PROJECT_FILE
            if candidate.is_file() and candidate not in found:
                found.append(candidate)
    env = os.environ.get(CATALOG_ENV)
    if env and Path(env).expanduser().is_file() and Path(env).expanduser().resolve() not in found:
        found.append(Path(env).expanduser().resolve())
    return found


def _read_project(path: Path) -> tuple[dict[str, str], str | None]:
    """(catalog, data_root) of a project file; paths made absolute against its folder."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=SpecYamlLoader) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError.one(
            str(path),
            "datasets",
            f"cannot read this project file: {exc}",
            fix="fix or remove it (it names datasets: `datasets: {NAME: path}`)",
        ) from None
    if not isinstance(data, dict):
        raise SpecError.one(
            str(path),
            "",
            "a project file is a mapping",
            allowed="datasets:, data_root:",
            fix="write `datasets:` with one `NAME: path` per line",
        )
    catalog = data.get("datasets") or {}
    if not isinstance(catalog, dict):
        raise SpecError.one(
            str(path), "datasets", "must map names to paths", fix="datasets: {Chameleons: ./data.jsonl}"
        )
    base = path.parent
    root = data.get("data_root")
    return (
        {str(k): resolve_path(str(v), base) for k, v in catalog.items()},
        resolve_path(str(root), base) if root else None,
    )


class Catalog:
    """Every name known to this spec, and the roots to search by convention."""

    def __init__(self, own: dict[str, str], own_root: str | None, start: Path | None) -> None:
        self.entries: list[tuple[str, dict[str, str]]] = [("the spec's `datasets:` map", own)] if own else []
        self.roots: list[str] = [own_root] if own_root else []
        for path in project_files(start):
            catalog, root = _read_project(path)
            if catalog:
                self.entries.append((str(path), catalog))
            if root:
                self.roots.append(root)
        if os.environ.get(DATA_ROOT_ENV):
            self.roots.append(os.path.expanduser(os.environ[DATA_ROOT_ENV]))

    def names(self) -> list[str]:
        return sorted({n for _, c in self.entries for n in c})

    def find(self, name: str) -> tuple[str, str] | None:
        """(path, where it came from) or None."""
        for where, catalog in self.entries:
            if name in catalog:
                return catalog[name], where
        for where, catalog in self.entries:
            for key, value in catalog.items():
                if key.lower() == name.lower():
                    return value, where
        for root in self.roots:
            for variant in dict.fromkeys((name, name.lower())):
                base = Path(root) / variant
                for candidate in [base.with_name(variant + s) for s in SUFFIXES] + [
                    base / (f + s) for f in FOLDER_FILES for s in SUFFIXES
                ]:
                    if candidate.is_file():
                        return str(candidate), f"data_root {root}"
                if base.is_dir() and any((base / n).exists() for n in ("dataset_info.json", "dataset_dict.json")):
                    return str(base), f"data_root {root}"
        return None

    def unknown(self, name: str, where: str, field: str) -> SpecError:
        known = self.names()
        sources = [w for w, _ in self.entries] + [f"data_root {r}" for r in self.roots]
        return SpecError.one(
            where,
            field,
            f"no dataset named {name!r}: not in the catalog"
            + (
                f" ({'; '.join(sources)})"
                if sources
                else " (none found: no launcher.yaml, no `datasets:` map, no data_root)"
            ),
            allowed=f"a name the catalog knows: {', '.join(known)}" if known else "a path, or a catalogued name",
            fix=f"add `datasets: {{{name}: /path/to/{name.lower()}/scenarios.jsonl}}` to {PROJECT_FILE} (this "
            "project) or to your cluster profile; or set data_root; or give the path (--scenario_path PATH, "
            "data.datasets[].path)",
        )


def resolve_dataset_paths(layers: Layers) -> None:
    """Fill in data.datasets[i].path from the catalog where a spec left it out (in the merged dict, before types)."""
    data = layers.data
    datasets = data.get("data", {}).get("datasets") if isinstance(data.get("data"), dict) else None
    if not isinstance(datasets, list) or all(isinstance(d, dict) and d.get("path") for d in datasets):
        return
    start = _spec_folder(layers)
    own = data.get("datasets") if isinstance(data.get("datasets"), dict) else {}
    catalog = Catalog({str(k): str(v) for k, v in (own or {}).items()}, data.get("data_root"), start)
    for i, ds in enumerate(datasets):
        if not isinstance(ds, dict) or ds.get("path") or not isinstance(ds.get("name"), str):
            continue
        hit = catalog.find(ds["name"])
        key = ("data", "datasets", i, "name")
        if hit is None:
            raise catalog.unknown(ds["name"], layers.where(key), f"data.datasets[{i}].name")
        ds["path"] = hit[0]
        layers.origin[("data", "datasets", i, "path")] = f"{layers.where(key)} (catalog: {hit[1]})"


def _spec_folder(layers: Layers) -> Path | None:
    root = layers.root.rsplit(":", 1)[0]
    path = Path(root)
    return path.parent if path.suffix in (".yaml", ".yml") else None


def find_dataset(
    name: str, where: str, field: str, start: Path | None = None, own: dict[str, Any] | None = None
) -> tuple[str, str]:
    """For the old flags: `--dataset NAME` -> (path, where it came from), or SpecError listing the names known."""
    catalog = Catalog({str(k): str(v) for k, v in (own or {}).items()}, None, start)
    hit = catalog.find(name)
    if hit is None:
        raise catalog.unknown(name, where, field)
    return hit


__all__ = ["PROJECT_FILE", "Catalog", "find_dataset", "project_files", "resolve_dataset_paths"]
