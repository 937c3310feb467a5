"""The study file as typed models: every key's type, range and default, checked once (pydantic).

:class:`StudyFile` holds the top level (``name``, ``config``, ``preset``, ``set``, ``axes``,
``include``, ``side_by_side``) and :class:`EvalSection` the evaluation plan (``checkpoints``,
``bench``, ``mteb``, ``geom``, ``report``). :func:`validate_study` turns the YAML mapping into
plain values or raises one ``UserError`` line naming the key, the bad value and the fix, in the
style of the training config (``nitp_train.config_model``): unknown keys name the nearest known
one, ``report: maybe`` is not true, ``mteb.pooling: max`` is refused before anything trains.

Example
-------
>>> validate_study({"eval": {"report": "maybe"}}, "study s.yaml")
Traceback (most recent call last):
...
nitp.errors.UserError: study s.yaml: eval.report='maybe': must be true or false
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from nitp.errors import UserError
from nitp_eval.mteb import POOLINGS
from nitp_eval.mteb.tasks import SUITES
from nitp_train.config import yaml_problem
from nitp_train.config_model import (
    BIG,
    MUST_BE_GIVEN,
    Bool,
    Choice,
    Int,
    Need,
    OptionalText,
    _Section,
    _show,
    first_error,
    locate,
    lookup,
    model_keys,
    nearest_key,
    need_text,
)

CORPUS_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
LINE = "study_line"  # a problem that is the whole message after ``study PATH:``


def _fail(problem: str, whole: bool = False):
    raise PydanticCustomError(LINE if whole else "study", problem)


# ----------------------------------------------------------------------------- value checks
def _safe_name(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        _fail("use letters, digits, '.', '_' and '-' only")
    return value


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        _fail("must be a text")
    return value


def _jsonable(value: Any) -> bool:
    """A value ``--set`` can carry: YAML's numbers, texts, booleans, null, lists and mappings (a
    date or a timestamp would not come back as itself)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        return False


def _set_entry(value: Any) -> str:
    """``key=value`` whose value parses as YAML (what ``--set`` takes)."""
    if not isinstance(value, str) or "=" not in value:
        _fail("expected key=value, e.g. train.steps=500")
    key, raw = value.split("=", 1)
    try:
        yaml.safe_load(raw)
    except yaml.YAMLError as e:
        _fail(f'the value is not valid YAML ({yaml_problem(e)}); quote it, e.g. {key.strip()}="..."')
    return value


def _axes(value: Any) -> dict[str, list]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail("axes must be a mapping of key: [values], e.g. axes: {seed: [0, 1]}", whole=True)
    axes = {}
    for key, values in value.items():
        if not isinstance(values, list):
            _fail(f"axis {key!r} must be a list of values, e.g. {key}: [{values!r}]", whole=True)
        if not values:
            _fail(f"axis {key!r} is empty; give it at least one value or remove it", whole=True)
        bad = next((v for v in values if not _jsonable(v)), None)
        if bad is not None:
            _fail(
                f"axis {key!r} value {bad!r}: use a number, a text, true/false or null (quote dates)",
                whole=True,
            )
        seen = [json.dumps(v, sort_keys=True) for v in values]  # the same YAML value (0 and "0" differ)
        repeated = [v for i, v in enumerate(values) if seen[i] in seen[:i]]
        if repeated:
            _fail(f"axis {key!r} repeats {repeated[0]!r}; make its values distinct", whole=True)
        axes[str(key)] = values
    return axes


def _include(value: Any) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) and v for v in value):
        _fail("include must be a list of mappings, e.g. include: [{objective: ntp}]", whole=True)
    for entry in value:
        bad = next((k for k, v in entry.items() if not _jsonable(v)), None)
        if bad is not None:
            _fail(f"include entry {entry!r}: {bad}: use a number, a text, true/false or null", whole=True)
    return [{str(k): v for k, v in entry.items()} for entry in value]


def _task_names(value: Any) -> list[str] | None:
    """``a,b`` or ``[a, b]``: distinct non-empty names (None: use the suite)."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names) or not names:
        _fail("must be a list of task names, e.g. [arc_easy, piqa]")
    names = [n.strip() for n in names]
    if len(set(names)) < len(names):
        _fail("names a task twice")
    return names


def _layers(value: Any) -> Any:
    from analysis.hidden import parse_layers

    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return value
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        with contextlib.suppress(UserError):
            parse_layers(str(value))
            return value
    _fail("use all, a list of layers such as [0, 2, -1] or the text 0,2,-1 (-1 = last hidden state)")


def _corpus(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail("must be builtin or a .txt/.jsonl/.parquet file or folder")
    if Path(value).suffix in CORPUS_SUFFIXES and not Path(value).expanduser().exists():
        _fail("no such file; give an existing corpus file or builtin")
    return value


Description = Annotated[str, PlainValidator(_description), Need("must be a text")]
StudyName = Annotated[str | None, PlainValidator(_safe_name), Need("must be a folder name")]
SetEntry = Annotated[str, PlainValidator(_set_entry), Need("must be key=value")]
SetList = Annotated[list[SetEntry], Need("must be a list of key=value strings, e.g. [train.steps=500]")]
Axes = Annotated[dict[str, list], PlainValidator(_axes), Need("must be a mapping of key: [values]")]
Include = Annotated[list[dict], PlainValidator(_include), Need("must be a list of mappings")]
TaskNames = Annotated[list[str] | None, PlainValidator(_task_names), Need("must be a list of task names")]
Layers = Annotated[Any, PlainValidator(_layers), Need("must be all or a list of layers")]
Corpus = Annotated[str, PlainValidator(_corpus), Need("must be builtin or a corpus file")]


# ----------------------------------------------------------------------------- sections
class BenchEval(_Section):
    """One ``nitp-eval bench`` call per trained checkpoint."""

    suite: OptionalText = None
    tasks: TaskNames = None
    limit: Int(1, BIG, null=True) = None
    data_dir: OptionalText = None

    @model_validator(mode="after")
    def _known_benchmarks(self) -> BenchEval:
        from nitp_eval.bench.plan import select_benchmarks

        try:
            select_benchmarks(self.tasks, self.suite)
        except UserError as e:
            _fail(str(e))
        return self


class MtebEval(_Section):
    """``nitp-eval mteb`` of every trained checkpoint."""

    suite: Choice(*SUITES) | None = None
    tasks: TaskNames = None
    pooling: Choice(*POOLINGS) = "mean"
    layer: Int(-1, 100_000) = -1


class GeomEval(_Section):
    """``nitp-geom layers`` of every trained checkpoint."""

    corpus: Corpus = "builtin"
    tokens: Int(1, BIG, null=True) = None
    layers: Layers = None


class EvalSection(_Section):
    """What every trained cell is scored with; an omitted evaluator is skipped."""

    checkpoints: Choice("last", "all") = "last"
    bench: list[BenchEval] = Field(default_factory=list)
    mteb: MtebEval | None = None
    geom: GeomEval | None = None
    report: Bool = True

    @field_validator("bench", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, dict):
            return [value]
        if not isinstance(value, list):
            _fail("must be a mapping or a list of them, e.g. {suite: offline}")
        return value


class StudyFile(_Section):
    """A whole study file (docs/studies.md)."""

    name: StudyName = None
    description: Description = ""
    config: OptionalText = None
    preset: OptionalText = None
    set: SetList = Field(default_factory=list)
    axes: Axes = Field(default_factory=dict)
    include: Include = Field(default_factory=list)
    side_by_side: Int(1, 1024) = 1
    # True: NTP cells train for NITP's FLOPs (steps x (1 + NITP's overhead at their size))
    compute_matched: Bool = False
    eval: EvalSection = Field(default_factory=EvalSection)

    @field_validator("eval", "set", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any, info: ValidationInfo) -> Any:
        return ({} if info.field_name == "eval" else []) if value is None else value


# ----------------------------------------------------------------------------- validation
def validate_study(data: dict, where: str) -> dict:
    """``data`` (a study file's mapping) checked against :class:`StudyFile`; the plain values,
    with the ``eval`` sections as the file gave them (``exclude_unset``) and ``bench`` a list.

    Raises one ``UserError`` line ``<where>: <key>=<value>: <problem>`` for the first bad key
    (an unknown key before a bad value)."""
    return _validated(StudyFile, data, where)


def validate_eval(data: dict, where: str) -> dict:
    """An evaluation plan (the ``eval`` section, e.g. of a changed ``StudySpec``) checked alone."""
    return _validated(EvalSection, data, where, prefix=("eval",))


def _validated(model: type[BaseModel], data: dict, where: str, prefix: tuple = ()) -> dict:
    try:
        parsed = model.model_validate(data)
    except ValidationError as e:
        # a single bench mapping as a one-item list, as the model reads it
        plan = data if prefix else (data.get("eval") if isinstance(data, dict) else None)
        listed = data
        if isinstance(plan, dict) and isinstance(plan.get("bench"), dict):
            plan = {**plan, "bench": [plan["bench"]]}
            listed = plan if prefix else {**data, "eval": plan}
        line = _one_line(first_error(e), model, listed, where, prefix)
        if listed is not data:  # the file gave one mapping: name it as the file does
            line = line.replace("eval.bench[0]", "eval.bench")
        raise UserError(line) from None
    whole = isinstance(parsed, StudyFile)
    plan = parsed.eval if whole else parsed
    sections = plan.model_dump(exclude_unset=True)  # nested sections too: as the file gave them
    for key in ("bench", "mteb", "geom", "checkpoints", "report"):  # left out: the defaults
        sections.setdefault(key, getattr(plan, key))
    return {**parsed.model_dump(by_alias=True), "eval": sections} if whole else sections


def _one_line(error: dict, model: type[BaseModel], data: dict, where: str, prefix: tuple) -> str:
    loc = list(error["loc"])
    if error["type"] == LINE:
        return f"{where}: {error['msg']}"
    if error["type"] == "extra_forbidden":
        known, near = nearest_key(model, loc)
        hint = f"did you mean {near}?" if near else f"use one of {', '.join(known)}"
        head = _dotted([*prefix, *loc[:-1]])
        return f"{where}{': ' + head if head else ''}: unknown key {str(loc[-1])!r} ({hint})"
    path, field, section = locate(model, loc)
    shown, value = _dotted([*prefix, *path]), lookup(data, path)
    if section is not None and error["type"] != "study":
        return f"{where}: {shown} must be a mapping with keys {', '.join(model_keys(section))}"
    if error["type"] in ("study", "nitp"):
        problem = error["msg"]
    else:
        problem = MUST_BE_GIVEN if value is None else need_text(field)
    if isinstance(value, dict) and error["type"] == "study":  # a section's own check
        return f"{where}: {shown}: {problem}"
    return f"{where}: {shown}={_show(value)}: {problem}"


def _dotted(loc: list) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
