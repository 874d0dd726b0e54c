"""Job files and submissions: reading JSON/YAML, checking a document, and grouping jobs by their input files."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cloudpilot.client.errors import InvalidRequest, JobFileError

if TYPE_CHECKING:
    from pydantic import BaseModel

# yaml, pydantic and the job models are imported when a job file is read or checked: commands that only list or
# show jobs start without them.


def load_job_file(path: Path | str) -> object:
    """Read a job file: JSON for ``.json``, YAML for ``.yaml``/``.yml``, otherwise JSON and then YAML.

    Raises :class:`JobFileError` naming the file and the problem (unreadable, not parseable, empty, wrong shape).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise JobFileError(f"job file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except OSError as exc:
        raise JobFileError(f"cannot read job file {path}: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = _parse_json(path, text)
    elif suffix in (".yaml", ".yml"):
        data = _parse_yaml(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            # YAML reads most JSON too, so its message is the more useful one when both fail.
            data = _parse_yaml(path, text, what="JSON or YAML")
    if data is None or data == [] or data == {}:
        raise JobFileError(f"job file {path} is empty")
    if not isinstance(data, dict | list):
        raise JobFileError(
            f"job file {path} must hold a job, a list of jobs or a parametric job, not a {type(data).__name__}"
        )
    return data


def _parse_json(path: Path, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise JobFileError(f"job file {path} is not valid JSON: {exc.msg} at {where}") from exc


def _parse_yaml(path: Path, text: str, what: str = "YAML") -> object:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise JobFileError(f"job file {path} is not valid {what}: {problem}{where}") from exc


@dataclass
class Submission:
    """What to POST to /api/v1/jobs, and the job dicts in it that still need an input sandbox.

    ``sandboxes`` maps each distinct set of input files (sorted names) to the job dicts that use it; the
    client uploads each set once and writes its id into those dicts' ``input_sandbox``.
    """

    body: Any
    count: int
    sandboxes: dict[tuple[str, ...], list[dict[str, Any]]] = field(default_factory=dict)


def is_parametric(document: object) -> bool:
    """The same rule the server applies: a mapping with ``job`` and ``parameter_count``."""
    return isinstance(document, dict) and "job" in document and "parameter_count" in document


def plan_submission(document: object) -> Submission:
    """Check a job document locally and decide which sandboxes to upload; the caller's object is not changed.

    A parametric job whose ``input_files`` use ``{n}`` is expanded here (each job needs its own sandbox);
    any other parametric job is sent as is and the server expands it.
    """
    from cloudpilot.domain.jobs import JobSpec, ParametricSpec, expand_parametric

    doc = copy.deepcopy(document)
    templates: list[dict[str, Any]]
    if is_parametric(doc):
        assert isinstance(doc, dict)
        spec = _validate(ParametricSpec, doc, "")
        assert isinstance(spec, ParametricSpec)
        if spec.job.input_sandbox is None and any("{n}" in name for name in spec.job.input_files):
            body: Any = [job.model_dump(mode="json", exclude_defaults=True) for job in expand_parametric(spec)]
            templates, count = body, len(body)
        else:
            body, templates, count = doc, [doc["job"]], spec.parameter_count
    elif isinstance(doc, dict) and "job" in doc and "executable" not in doc:
        # The server would read this as one job and complain about "executable"; say what is really missing.
        raise InvalidRequest(
            "parameter_count: a parametric job {job, parameter_count} needs parameter_count",
            code="invalid",
            field="parameter_count",
        )
    elif isinstance(doc, dict):
        _validate(JobSpec, doc, "")
        body, templates, count = doc, [doc], 1
    elif isinstance(doc, list):
        if not doc:
            raise InvalidRequest("the submission holds no job", code="invalid")
        for i, item in enumerate(doc):
            if not isinstance(item, dict):
                raise InvalidRequest(
                    f"[{i}]: a job must be an object, not {type(item).__name__}", code="invalid", field=f"[{i}]"
                )
            _validate(JobSpec, item, f"[{i}]")
        body, templates, count = doc, doc, len(doc)
    else:
        raise InvalidRequest(
            "a submission is a job, a list of jobs, or a parametric job {job, parameter_count}", code="invalid"
        )
    plan = Submission(body=body, count=count)
    for job in templates:
        names = job.get("input_files") or []
        if names and job.get("input_sandbox") is None:
            plan.sandboxes.setdefault(tuple(sorted(set(names))), []).append(job)
    return plan


def _validate(model: type[BaseModel], data: dict[str, Any], prefix: str) -> BaseModel:
    """Validate with the domain model, so a bad document is refused before any upload, worded as the server would."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = prefix
        for part in first.get("loc", ()):
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        raise InvalidRequest(message, code="invalid", field=where or None) from exc


def check_input_files(base_dir: Path, names: tuple[str, ...]) -> list[Path]:
    """The local paths of ``names`` under ``base_dir``; :class:`JobFileError` for the first one that is missing."""
    paths = []
    for name in names:
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts:
            raise JobFileError(f"input file {name!r} must be a relative path inside {base_dir}", field="input_files")
        path = base_dir / name
        if not path.exists():
            raise JobFileError(f"input file {name!r} not found: {path} does not exist", field="input_files")
        paths.append(path)
    return paths
