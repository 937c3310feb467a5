"""The training config as typed models: every key's type, range, default and help text, once.

:class:`Config` holds the sections :class:`Nitp`, :class:`CosReg`, :class:`Data`, :class:`Train`,
:class:`Log` and :class:`Checkpoint`; ``model`` stays an open mapping (a preset name plus any
transformers config field, checked by :func:`check_model`). :func:`validate` turns a merged config
into a plain nested dict (``model_dump``) or raises one ``UserError`` line for the first bad key:
``<key>=<value>: <problem>; fix it in the config or with --set <key>=...`` (unknown keys name the
nearest known one). Cross-key rules (seq_len vs the model's positions, the target layer vs the
depth, steps vs tokens, the batch plan) live in ``nitp_train.config``: they need the preset.

Example
-------
>>> check_value("train.lr", "fast")
Traceback (most recent call last):
...
nitp.errors.UserError: train.lr='fast': must be a number > 0; fix it in the config or with --set train.lr=...
"""

import difflib
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Iterator, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from nitp.errors import UserError

from .choices import (
    COS_REG_KINDS,
    LOSS_IMPL_NEED,
    LOSS_KINDS,
    PROJECTORS,
    loss_impl_text,
    parse_loss_impl,
    resolve_loss_impl,
)
from .models import PRESETS
from .trackers import TRACKERS

BIG = 10**12  # counts beyond this are typos (1e12 steps, sequences, ...)
DEFAULT_PRESET = "tiny-dense"
SHIFTS = (1, 0)  # 1 = next token (NITP); 0 = same position
# Depth-relative target layers an ablation can name (the paper's "middle" and "deep" targets).
TARGET_WORDS = {"middle": 0.5, "deep": 0.75}


# ----------------------------------------------------------------------------- value types
@dataclass(frozen=True)
class Need:
    """What a key accepts, in words: the problem named when a value does not fit."""

    text: str


def _fail(problem: str):
    raise PydanticCustomError("nitp", problem)


def Int(lo: int, hi: int, *, null: bool = False, words: tuple[str, ...] = ()) -> Any:
    """An integer from ``lo`` to ``hi`` (no bools, no floats); ``words``: extra names it accepts."""
    kind: Any = Annotated[int, Field(strict=True, ge=lo, le=hi)]
    if words:
        kind = Union[kind, Literal[words]]
    more = f" or one of {', '.join(words)}" if words else ""
    return Annotated[kind | None if null else kind, Need(f"must be an integer from {lo} to {hi:,}{more}")]


def Num(lo: float = 0.0, hi: float | None = None, *, lo_open: bool = False, null: bool = False) -> Any:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``); an int is read as a float."""
    bounds = {"gt" if lo_open else "ge": lo, "le": hi}
    kind = Annotated[float, Field(strict=True, allow_inf_nan=False, **bounds)]
    words = (f"> {lo:g}" if lo_open else f">= {lo:g}") + (f" and <= {hi:g}" if hi is not None else "")
    return Annotated[kind | None if null else kind, Need(f"must be a number {words}")]


def choice_problem(value: Any, choices: tuple) -> str | None:
    """What is wrong with ``value`` as one of ``choices`` (same value and type: ``True`` is not 1)."""
    if any(value == c and type(value) is type(c) for c in choices):
        return None
    names = list(map(str, choices))
    return "use " + (" or ".join(names) if len(names) == 2 else f"one of {', '.join(names)}")


def Choice(*choices: Any) -> Any:
    """One of ``choices``, compared by value and type."""

    def check(value: Any) -> Any:
        problem = choice_problem(value, choices)
        return _fail(problem) if problem else value

    return Annotated[Literal[choices], PlainValidator(check), Need(choice_problem(None, choices))]


def _text(value: Any, folder: bool = False) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail("must be a non-empty text")
    if "\x00" in value or len(value) > 4096:
        _fail("must be at most 4096 characters without NUL bytes")
    if folder and ("/" in value or value in (".", "..") or len(value) > 200):
        _fail("must be a folder name (no '/', at most 200 characters)")
    return value


def _two_fractions(value: Any) -> list:
    if not (isinstance(value, list) and len(value) == 2):
        _fail("must be a list of two numbers, e.g. [0.9, 0.95]")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0 for v in value):
        _fail("both must be numbers from 0.0 to below 1.0")
    return value


def _names(value: Any, choices: tuple[str, ...] = ()) -> list:
    if not isinstance(value, list):
        _fail("must be a list of names, e.g. [a, b]")
    for v in value:
        if not isinstance(v, str) or not v.strip():
            _fail("every entry must be a non-empty name")
        if choices and v not in choices:
            _fail(f"{v!r} is not one of {', '.join(choices)}")
    if len(set(value)) < len(value):
        _fail("names a tracker or task twice")
    return value


def Names(*choices: str) -> Any:
    """A list of distinct names (``[]`` allowed); with ``choices``, each one of them."""
    need = f"must be a list of {', '.join(choices)}" if choices else "must be a list of names"
    return Annotated[list[str], PlainValidator(lambda v: _names(v, choices)), Need(need)]


def _loss_impl(value: Any) -> str:
    try:
        parse_loss_impl(_text(value))
    except UserError:
        _fail(LOSS_IMPL_NEED)
    return value


Text = Annotated[str, PlainValidator(_text), Need("must be a non-empty text")]
LossImpl = Annotated[str, PlainValidator(_loss_impl), Need(LOSS_IMPL_NEED)]
FolderName = Annotated[str, PlainValidator(lambda v: _text(v, folder=True)), Need("must be a folder name")]
OptionalText = Annotated[Text | None, Need("must be a non-empty text")]
Bool = Annotated[bool, Field(strict=True), Need("must be true or false")]
Fractions = Annotated[list[float], PlainValidator(_two_fractions), Need("must be two numbers in [0, 1)")]


def check_shift(value: Any, name: str = "shift") -> int:
    """The NITP target offset: 1 = the next token's hidden state (NITP), 0 = the same position.

    Example: ``check_shift(2, "shift")`` raises ``UserError('shift=2: use 1 or 0 (1 = next token, NITP;
    0 = same position)')``.
    """
    problem = choice_problem(value, SHIFTS)
    if problem:
        raise UserError(f"{name}={_show(value)}: {problem} (1 = next token, NITP; 0 = same position)")
    return value


def knob(label: str, rank: int) -> dict[str, Any]:
    """Field metadata of an ablation knob: its name in report tables and its place among the knobs
    (``reports.grouping.KNOBS`` reads both: :func:`ablation_knobs`)."""
    return {"knob": label, "knob_rank": rank}


# ----------------------------------------------------------------------------- sections
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Nitp(_Section):
    """The NITP term: lambda x loss(P(h_t), sg[z_{t+shift}]) with z read at ``target_layer``."""

    target_layer: Int(0, 10_000, null=True, words=tuple(TARGET_WORDS)) = Field(
        None,
        description="layer k whose hidden state is the target; null = the preset's; or middle | deep",
        json_schema_extra=knob("target layer", 0),
    )
    lambda_: Num(0.0, 1e6, null=True) = Field(
        None,
        alias="lambda",
        description="weight of the NITP term; null = the preset's (paper: 1.0 to 0.6)",
        json_schema_extra=knob("λ", 6),
    )
    shift: Choice(*SHIFTS) = Field(
        1,
        description="target offset: 1 = next token (NITP), 0 = same position",
        json_schema_extra=knob("temporal shift", 1),
    )
    loss: Choice(*LOSS_KINDS) = Field(
        "cosine", description="distance between prediction and target", json_schema_extra=knob("NITP loss", 2)
    )
    stop_grad: Bool = Field(
        True,
        description="no gradient through the target hidden state",
        json_schema_extra=knob("stop-gradient", 3),
    )
    projector: Choice(*PROJECTORS) = Field(
        "swiglu",
        description="throw-away head mapping h_t to the target",
        json_schema_extra=knob("projector", 4),
    )
    start_step: Int(0, BIG) = Field(
        0,
        description="optimizer step at which the NITP term switches on",
        json_schema_extra=knob("start step", 5),
    )


class CosReg(_Section):
    """The baseline regulariser: weight x mean pairwise cosine."""

    weight: Num(0.0, 1e6) = Field(
        0.0,
        description="weight of the regulariser; 0 = off",
        json_schema_extra=knob("cosine regulariser weight", 7),
    )
    kind: Choice(*COS_REG_KINDS) = Field(
        "hidden",
        description="hidden = final hidden states (the NITP paper's baseline); embedding = output "
        "embedding rows (Gao et al. 2019)",
    )


class Data(_Section):
    """The corpus, its tokenizer and the training windows."""

    corpus: Text = Field(
        "builtin", description="builtin, a .txt/.jsonl/.parquet file or folder, or a HF dataset"
    )
    text_field: Text = Field(
        "text", description="field or column holding the text (.jsonl, .parquet, datasets)"
    )
    tokenizer: OptionalText = Field(
        None, description="tokenizer folder or name; null = train a byte-level BPE"
    )
    vocab_size: Int(260, 2**32, null=True) = Field(
        None, description="vocabulary of the trained BPE (>= 256 bytes + 4 specials); null = model.vocab_size"
    )
    seq_len: Int(2, 1 << 22) = Field(256, description="tokens per training window")
    val_fraction: Num(0.0, 0.5, lo_open=True) = Field(0.05, description="share of documents held out")
    seed: Int(0, 2**32 - 1) = Field(0, description="seed of the train / validation document split")
    prepared_dir: OptionalText = Field(None, description="folder of the tokenized shards; null = RUN/data")
    workers: Int(0, 1024, null=True) = Field(
        None, description="tokenizer processes; null = one per CPU core (at most 8), 0 = in process"
    )
    batch_docs: Int(1, 1 << 20) = Field(256, description="documents per encode_batch call")


class Train(_Section):
    """Optimisation: the batch plan, the lr schedule (warm-up, stable, decay), AdamW, the device."""

    steps: Int(1, BIG, null=True) = Field(None, description="optimizer steps; give steps or tokens")
    tokens: Num(1.0, 1e16, null=True) = Field(
        None, description="token budget: steps = ceil(tokens / (global_batch x seq_len)); null = the preset's"
    )
    global_batch: Int(1, 1 << 24, null=True) = Field(
        None,
        description="sequences per optimizer step; null = the preset's, else batch_size x grad_accum x world",
    )
    batch_size: Int(1, 1 << 20) = Field(16, description="sequences per micro-batch per process")
    grad_accum: Int(1, 1 << 20, null=True) = Field(
        None, description="micro-batches per step; null = global_batch / (batch_size x world)"
    )
    lr: Num(0.0, None, lo_open=True, null=True) = Field(
        None, description="peak learning rate; null = the preset's"
    )
    warmup_steps: Int(0, BIG) = Field(30, description="linear warm-up steps (paper: 2000)")
    warmup_start_ratio: Num(0.0, 1.0) = Field(0.0, description="lr at step 0 = this x lr")
    decay_ratio: Num(0.0, 1.0) = Field(0.2, description="share of the steps spent decaying (paper: 0.2)")
    decay_type: Choice("linear", "cosine", "1-sqrt") = Field("cosine", description="shape of the decay")
    min_lr_ratio: Num(0.0, 1.0) = Field(0.1, description="lr at the end of the decay = this x lr")
    weight_decay: Num(0.0, 1e3) = Field(0.1, description="AdamW weight decay")
    betas: Fractions = Field(default_factory=lambda: [0.9, 0.95], description="AdamW betas, each in [0, 1)")
    eps: Num(0.0, 1.0, lo_open=True) = Field(1.0e-8, description="AdamW epsilon")
    grad_clip: Num(0.0, None, lo_open=True) = Field(1.0, description="gradient-norm clip")
    device: Choice("auto", "cpu", "cuda") = Field("auto", description="where to train")
    dtype: Choice("auto", "bf16", "fp32") = Field(
        "auto", description="auto = bf16 autocast on GPU, fp32 on CPU"
    )
    param_dtype: Choice("fp32", "bf16") = Field(
        "fp32",
        description="bf16 = FSDP2 MixedPrecisionPolicy: bf16 parameters in forward/backward, float32 "
        "shards, gradient reduction and AdamW state (needs train.parallel: fsdp under torchrun)",
    )
    compile: Bool = Field(False, description="torch.compile the model")
    compile_mode: Choice("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs") = Field(
        "default", description="torch.compile mode (with train.compile: true)"
    )
    fused_adamw: Choice("auto", True, False) = Field(
        "auto", description="AdamW(fused=True): auto = when every parameter is on CUDA; true needs CUDA"
    )
    parallel: Choice("ddp", "fsdp") = Field("ddp", description="data parallelism under torchrun")
    threads: Int(1, 4096, null=True) = Field(None, description="torch CPU threads; null = torch's default")
    loss_impl: LossImpl = Field(
        "plain",
        description="next-token CE: plain = the model's logits; chunked[:N] = N positions at a time "
        "(default 1024; no [B, T, V] float32 logits), recomputed in backward; chunked_gif[:N] = "
        "gradients in the forward pass; liger = liger-kernel. The deprecated train.loss_chunk: N "
        "reads as chunked:N",
    )
    activation_checkpointing: Bool = Field(False, description="recompute each block in the backward pass")


class Log(_Section):
    """What ``RUN/metrics.jsonl`` gets, and how often."""

    every: Int(1, BIG) = Field(10, description="steps between train lines")
    geom_every: Int(0, BIG) = Field(50, description="steps between geometry statistics (0 = never)")
    geom_batch: Choice("val", "train") = Field(
        "val",
        description="val = the same held-out validation tokens at every measurement and in every run "
        "of the data (curves compare across steps, seeds, objectives); train = a sample of the step's batch",
    )
    probe_every: Int(0, BIG) = Field(
        0,
        description="steps between gradient probes on the held-out batch: CE vs lambda x NITP gradient "
        "norms, ratio and cosine per block (nitp_train/probe.py); 0 = never",
    )
    eval_every: Int(0, BIG) = Field(100, description="steps between validation losses (0 = never)")
    eval_points: Int(0, BIG) = Field(
        0,
        description="also validate at this many log-spaced steps from 1 to train.steps (a size ladder's "
        "(compute, loss) points even on log compute; nitp_train.trainer.log_spaced_steps); 0 = none",
    )
    eval_batches: Int(1, BIG) = Field(8, description="validation batches per evaluation")
    trackers: Names(*TRACKERS) = Field(
        default_factory=list,
        description=f"experiment trackers fed every metrics line: any of {', '.join(TRACKERS)} "
        "(offline stores under RUN/; nitp_train/trackers.py)",
    )


class Eval(_Section):
    """Evaluation during training: a small plan run on the in-memory model (rank 0), RNG untouched."""

    every: Int(0, BIG) = Field(0, description="steps between in-training evaluations (0 = never)")
    bench: Names() = Field(
        default_factory=lambda: ["next_word"],
        description="nitp-eval bench tasks scored on the in-memory model ([] = none)",
    )
    limit: Int(1, BIG, null=True) = Field(
        32, description="documents per bench task (lm-eval --limit); null = all"
    )
    mteb: Names() = Field(
        default_factory=list, description="nitp-eval mteb tasks scored in the loop ([] = none)"
    )
    geom: Bool = Field(False, description="nitp-geom layer statistics of the model in the loop")


class Checkpoint(_Section):
    """When checkpoints are written and how many are kept."""

    every: Int(1, BIG) = Field(100, description="steps between checkpoints")
    keep_last: Int(0, 1_000_000) = Field(3, description="checkpoints kept (0 = all)")


class Config(_Section):
    """A whole training config (``RUN/config.yaml`` is its resolved dump)."""

    run_name: Annotated[FolderName | None, Need("must be a folder name")] = Field(
        None, description="run folder name; null = <preset>-<objective>"
    )
    seed: Int(0, 2**32 - 1) = Field(0, description="seed of the initial weights and of the batch order")
    objective: Choice("ntp", "nitp") = Field("nitp", description="ntp = next-token CE only; nitp = CE + NITP")
    model: dict[str, Any] = Field(
        default_factory=lambda: {"preset": DEFAULT_PRESET},
        description="preset name + any transformers config field (e.g. hidden_size), or init_from: PATH",
    )
    nitp: Nitp = Field(default_factory=Nitp)
    cos_reg: CosReg = Field(default_factory=CosReg)
    data: Data = Field(default_factory=Data)
    train: Train = Field(default_factory=Train)
    log: Log = Field(default_factory=Log)
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    eval: Eval = Field(default_factory=Eval)


DEFAULTS: dict[str, Any] = Config().model_dump(by_alias=True)


def data_defaults() -> dict[str, Any]:
    """The ``data`` defaults with ``vocab_size`` resolved for the default preset (4096)."""
    return {**DEFAULTS["data"], "vocab_size": PRESETS[DEFAULT_PRESET]["vocab_size"]}


# ----------------------------------------------------------------------------- validation
def validate(cfg: dict) -> dict:
    """``cfg`` checked against :class:`Config` and dumped back to a plain dict (defaults filled in).

    Raises one ``UserError`` line for the first bad key (an unknown key before a bad value).
    """
    return as_config(cfg).model_dump(by_alias=True)


def as_config(cfg: Config | dict) -> Config:
    """``cfg`` as a :class:`Config`: a ``Config`` as it is, a dict validated (:func:`validate`'s
    one-line errors; deprecated keys mapped by :func:`upgrade_legacy_keys`)."""
    if isinstance(cfg, Config):
        return cfg
    cfg = upgrade_legacy_keys(cfg)
    try:
        return Config.model_validate(cfg)
    except ValidationError as e:
        raise UserError(_one_line(first_error(e), cfg)) from None


def section(name: str, value: BaseModel | dict) -> Any:
    """The config section ``name`` (``"train"``, ...) as its model: a model as it is, a dict
    validated as that section of a whole config (the same one-line errors)."""
    return value if isinstance(value, BaseModel) else getattr(as_config({name: value}), name)


def upgrade_legacy_keys(cfg: Any, note: bool = True) -> Any:
    """``cfg`` with the deprecated ``train.loss_chunk`` folded into ``train.loss_impl`` (a new dict;
    ``cfg`` itself is left as it is).

    ``loss_chunk: N > 0`` reads as ``loss_impl: chunked:N`` (with ``note``, one line on stderr says
    so); ``loss_chunk: 0`` and ``loss_impl: auto`` (the old defaults, in every ``config.yaml`` of
    older runs) read as ``plain``, silently. A pair that disagrees is a one-line ``UserError``
    (:func:`nitp_train.loss.resolve_loss_impl`).
    """
    train = cfg.get("train") if isinstance(cfg, dict) else None
    if not isinstance(train, dict) or ("loss_chunk" not in train and train.get("loss_impl") != "auto"):
        return cfg
    train = dict(train)
    chunk, impl = train.pop("loss_chunk", 0), train.get("loss_impl", "auto")
    if not (isinstance(chunk, int) and not isinstance(chunk, bool) and 0 <= chunk <= 1 << 24):
        raise UserError(
            f"train.loss_chunk={_show(chunk)}: must be an integer from 0 to 16,777,216 (deprecated: "
            "use train.loss_impl=chunked:N); fix it in the config or with --set train.loss_impl=..."
        )
    if isinstance(impl, str):
        train["loss_impl"] = (
            loss_impl_text(*resolve_loss_impl(impl, chunk)) if chunk or impl == "auto" else impl
        )
        if note and chunk:
            print(
                f"note: train.loss_chunk is deprecated: read as train.loss_impl={train['loss_impl']}; "
                "write that instead",
                file=sys.stderr,
            )
    return {**cfg, "train": train}


def check_value(key: str, value: Any) -> None:
    """Raise ``UserError('<key>=<value>: <problem>; <fix>')`` when ``value`` does not fit ``key``."""
    validate(nested(key, value))


def nested(key: str, value: Any) -> dict:
    """The config holding ``value`` at the dotted ``key``: ``nested("a.b", 1) == {"a": {"b": 1}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


MUST_BE_GIVEN = "must be given (it may not be empty or null)"


def first_error(e: ValidationError) -> dict:
    """The pydantic error a one-line message names: an unknown key before a bad value."""
    errors = e.errors()
    return next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])


def model_keys(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """``{key as written (the alias): field}`` of a model."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``Model``, ``Model | None`` or ``list[Model]`` (None for plain values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(inner_model, get_args(annotation))), None)


def locate(
    model: type[BaseModel], loc: tuple | list
) -> tuple[list, FieldInfo | None, type[BaseModel] | None]:
    """``(path, field, section)`` of the key a pydantic error's ``loc`` names in ``model``: ``loc`` up to
    the key (list indices kept, a union's member names after a value dropped), the key's field, and
    the model it holds (``model`` for an empty ``loc``; None for a value)."""
    path, field, section = [], None, model
    for part in loc:
        if not isinstance(part, int):
            if section is None:
                break
            field = model_keys(section).get(part)
            section = inner_model(field.annotation) if field is not None else None
        path.append(part)
    return path, field, section


def nearest_key(model: type[BaseModel], loc: tuple | list) -> tuple[list[str], str | None]:
    """For the unknown key ``loc[-1]``: the keys known where it stands and the nearest (or None)."""
    parent = locate(model, loc[:-1])[2]
    known = list(model_keys(parent)) if parent is not None else []
    near = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return known, near[0] if near else None


def need_text(field: FieldInfo | None) -> str:
    """What ``field`` accepts, in words (its :class:`Need`)."""
    return next(
        (m.text for m in (field.metadata if field else []) if isinstance(m, Need)), "has the wrong type"
    )


def lookup(data: Any, path: list) -> Any:
    """The value at ``path`` (keys and list indices) of nested dicts and lists; None where absent."""
    for part in path:
        if isinstance(part, int):
            data = data[part] if isinstance(data, list) and part < len(data) else None
        else:
            data = data.get(part) if isinstance(data, dict) else None
    return data


def _one_line(error: dict, cfg: dict) -> str:
    """The message of one pydantic error: the dotted key, the bad value, the problem and the fix."""
    loc = [str(p) for p in error["loc"]]
    if error["type"] == "extra_forbidden":
        near, prefix = nearest_key(Config, loc)[1], "".join(f"{p}." for p in loc[:-1])
        return f"unknown config key {prefix + loc[-1]!r}" + (
            f" (did you mean {prefix}{near}?)" if near else ""
        )
    path, field, section = locate(Config, loc)
    key, value = ".".join(path), lookup(cfg, path)
    if key == "model":
        return (
            f"config key 'model'={_show(value)}: must be a mapping, e.g. model: {{preset: {DEFAULT_PRESET}}}"
        )
    if section is not None:
        return f"config key {key!r} must be a mapping"
    problem = (
        MUST_BE_GIVEN if value is None else error["msg"] if error["type"] == "nitp" else need_text(field)
    )
    return f"{key}={_show(value)}: {problem}; fix it in the config or with --set {key}=..."


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_model(model: dict) -> None:
    """``model.preset`` is a text; fields overriding a preset keep the preset's type (an int stays an
    int >= 0, a bool a bool, ...)."""
    preset = model.get("preset", DEFAULT_PRESET)
    if "preset" in model:
        try:
            _text(preset)
        except PydanticCustomError as e:
            problem = MUST_BE_GIVEN if preset is None else e.message()
            raise UserError(
                f"model.preset={_show(preset)}: {problem}; fix it in the config or with --set model.preset=..."
            ) from None
    base = PRESETS.get(preset, {})
    for key, value in model.items():
        if key == "preset" or base.get(key) is None:
            continue
        ok, need = _same_kind(base[key], value)
        if not ok:
            raise UserError(
                f"model.{key}={_show(value)}: must be {need}; fix it in the config or with --set model.{key}=..."
            )


def _same_kind(want: Any, value: Any) -> tuple[bool, str]:
    """Whether ``value`` has the kind of the preset's ``want``, and that kind in words."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(want, bool):
        return isinstance(value, bool), "true or false"
    if isinstance(want, int):
        return number and isinstance(value, int) and 0 <= value <= BIG, "an integer >= 0"
    if isinstance(want, float):
        return number and abs(value) < float("inf") and value == value, "a finite number"
    if isinstance(want, list):
        return isinstance(value, list), "a list"
    return isinstance(value, str) and bool(value.strip()), "a non-empty text"


def ablation_knobs() -> dict[str, tuple[str, Any]]:
    """``{dotted key: (table label, default)}`` of the ablation knobs (fields marked with
    :func:`knob`), in their rank order; the default is ``None`` where the preset fills it."""
    knobs = [(key, f) for key, f in leaf_fields() if "knob" in (f.json_schema_extra or {})]
    knobs.sort(key=lambda kf: kf[1].json_schema_extra["knob_rank"])
    return {key: (f.json_schema_extra["knob"], f.get_default(call_default_factory=True)) for key, f in knobs}


# ----------------------------------------------------------------------------- documentation
def keys_table() -> str:
    """The markdown table of every key (docs/contracts.md): key, default, accepts, description."""
    rows = ["| key | default | accepts | description |", "|---|---|---|---|"]
    for key, field in leaf_fields():
        default = yaml.safe_dump(field.get_default(call_default_factory=True), default_flow_style=True)
        default = default.strip().removesuffix("...").strip()
        need = next((m.text for m in field.metadata if isinstance(m, Need)), "a mapping")
        accepts = need.removeprefix("must be ").removeprefix("use ")
        cells = (f"`{key}`", f"`{default}`", accepts, field.description)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def leaf_fields(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """``(dotted key, pydantic field)`` of every key that holds a value (``model`` included)."""
    for name, field in model_keys(model).items():
        if inner_model(field.annotation):
            yield from leaf_fields(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field
