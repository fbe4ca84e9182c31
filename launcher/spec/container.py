"""spec/container.py: the container section: runtime, image, binds, environment (secrets kept out of plain text)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from launcher.secrets import REDACTED, SECRET_KEY_RE
from launcher.spec.common import CONTROL_RE, ENV_NAME_RE, ENV_VALUE_MAX, _FieldError, _Section


class ContainerSpec(_Section):
    """How each job runs: inside an image (runtime, image, binds, environment) or directly on the node."""

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
            raise ValueError(
                f"{value[:80]!r} is not an image: it must not be empty, start with '-' (the runtime would "
                "read it as an option) or hold control characters"
            )
        return value

    @field_validator("binds")
    @classmethod
    def _binds(cls, value: list[str]) -> list[str]:
        from launcher.containers.runtimes import Bind
        from launcher.errors import ContainerError

        for i, text in enumerate(value):
            try:
                Bind.parse(text)
            except ContainerError as exc:
                raise _FieldError(
                    (i,),
                    exc.first.message,
                    "host[:container[:ro|rw]] with absolute paths, no ':' inside a path",
                    exc.first.fix or "fix the bind",
                ) from None
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, v in value.items():
            if not ENV_NAME_RE.fullmatch(name):
                raise _FieldError(
                    (name,),
                    f"{name!r} is not an environment variable name",
                    "letters, digits and '_', not starting with a digit",
                    "rename the variable",
                )
            if "\0" in v or len(v) > ENV_VALUE_MAX:
                raise _FieldError(
                    (name,),
                    "the value holds a NUL byte or is too long to pass on a command line",
                    f"at most {ENV_VALUE_MAX} characters, no NUL",
                    "put long values in a bound file",
                )
        return value

    @field_serializer("env", when_used="json")
    def _redact_env(self, value: dict[str, str]) -> dict[str, str]:
        # spec.json and run.json are readable by whoever can read the run dir; the value itself reaches the
        # container through run_dir/container.json only.
        return {k: REDACTED if SECRET_KEY_RE.search(k) else v for k, v in value.items()}

    @model_validator(mode="after")
    def _image_needed(self) -> ContainerSpec:
        if self.runtime != "none" and not self.image:
            raise _FieldError(
                ("image",),
                f"runtime {self.runtime} needs an image",
                "a .sif path or image name",
                "set container.image, or container.runtime: none to run without one",
            )
        return self
