"""spec/__init__.py: YAML job spec -> JobSpec (typed, validated), the one entry for a spec, so that every command reads
it the same way. Errors name the file, line, field and the fix.

One file per section, as in vLLM's config/: model, data, sampling, slurm, container, output, scheduling, cost;
job.py puts them together. load.py reads YAML with line numbers and `extends`, validate.py turns pydantic's errors
into ours, catalog.py finds datasets by name, secrets.py holds the one rule for what is a secret. Every field
carries its default and a docstring under it: `launcher schema` turns them into the JSON Schema editors use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.errors import SpecError
from launcher.spec.common import BUILTIN_ABLATIONS, SLUG, Slug
from launcher.spec.container import ContainerSpec
from launcher.spec.cost import CostSpec
from launcher.spec.data import DatasetSpec, DataSpec, FieldNames, TemplateSpec
from launcher.spec.job import JobSpec
from launcher.spec.load import load_layers
from launcher.spec.model import ModelSpec
from launcher.spec.output import OutputSpec
from launcher.spec.sampling import SamplingSpec
from launcher.spec.scheduling import SchedulingSpec
from launcher.spec.slurm import SlurmSpec, parse_time_min


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, merge (extends), override (--set) and validate a job spec. Raises SpecError on any problem."""
    from launcher.spec.validate import validate

    layers = load_layers(Path(path), overrides or [])
    return validate(layers, JobSpec)


def spec_from_dict(data: dict[str, Any], where: str = "<dict>") -> JobSpec:
    """Validate an already-parsed spec (e.g. built from the old script's flags)."""
    from launcher.spec.load import Layers
    from launcher.spec.validate import validate

    return validate(Layers.from_dict(data, where), JobSpec)


def json_schema() -> dict[str, Any]:
    schema = JobSpec.model_json_schema()
    schema["properties"]["extends"] = {
        "type": "string",
        "description": "Another spec (a cluster profile) to start from.",
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "launcher job spec"
    return schema


__all__ = [
    "BUILTIN_ABLATIONS",
    "SLUG",
    "ContainerSpec",
    "CostSpec",
    "DataSpec",
    "DatasetSpec",
    "FieldNames",
    "JobSpec",
    "ModelSpec",
    "OutputSpec",
    "SamplingSpec",
    "SchedulingSpec",
    "Slug",
    "SlurmSpec",
    "SpecError",
    "TemplateSpec",
    "json_schema",
    "load_spec",
    "parse_time_min",
    "spec_from_dict",
]
