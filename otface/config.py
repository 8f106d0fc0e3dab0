"""Typed training configuration: dataclasses, YAML files and dotted command-line overrides.

Every key has a type and a help text (``otface train --list-keys`` prints them). A YAML file or an
override naming a key that does not exist is an error, never silently ignored (SPEC §9).

>>> cfg = load_config(None, ["optim.lr=0.05", "head.name=cosface"])
>>> cfg.optim.lr
0.05
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from otface.errors import ConfigError, one_line
from otface.files import write_text_atomic
from otface.options import GRAD_MODES, ON_ERROR, OT_MAX_ITERS, OT_OMEGA, OT_TOL, REDUCTIONS


def _f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
       le: float | None = None, lt: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with a default, a help text and the values it admits: numbers within
    ``ge``/``gt``/``le``/``lt`` (and finite, for floats), strings among ``choices``."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, "bounds": bounds, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


SEED_LIMIT = 1 << 63  # seeds go to numpy's SeedSequence (>= 0) and torch.manual_seed


@dataclass
class SynthSection:
    """The built-in synthetic face data set (used when ``data.root`` is empty), as
    ``otface.synth.generate_synthetic`` takes it: its seed and size determine the images;
    ``workers`` (processes) only changes the speed, ``cache_dir`` only where the set is kept."""

    seed: int = _f(0, "seed of the synthetic identities, samples and pairs", ge=0, lt=SEED_LIMIT)
    num_identities: int = _f(200, "training identities", ge=2)
    images_per_identity: int = _f(50, "training images per identity", ge=2)
    num_pairs: int = _f(6000, "pairs in each verification protocol (easy and hard), half genuine, as LFW: enough "
                              "to measure a one-point difference and TAR at FAR 1e-3; a multiple of 20 (10 folds)",
                        ge=20)
    workers: int = _f(2, "processes used to render the images", ge=1)
    cache_dir: str = _f("", "where generated sets are cached; empty: $OTFACE_CACHE or ~/.cache/otface")

    def __post_init__(self) -> None:
        """What the generator needs also of a section built directly (``otface synth``): read from
        a config, each key's range is checked first."""
        if self.num_identities < 1 or self.images_per_identity < 1:
            raise ConfigError(f"num_identities and images_per_identity must be >= 1, got {self.num_identities} "
                              f"and {self.images_per_identity}")
        if self.num_pairs < 20 or self.num_pairs % 20:
            raise ConfigError(f"num_pairs must be a positive multiple of 20 (10 balanced folds), "
                              f"got {self.num_pairs}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")


@dataclass
class DataSection:
    root: str = _f("", "training set: a RecordIO folder (train.rec, train.idx, property) or an image folder "
                       "root/<identity>/<image>; empty: synthetic faces")
    val_sets: list = _f([], "verification .bin files; empty with synthetic data: its easy and hard sets")
    synthetic: SynthSection = field(default_factory=SynthSection, metadata={"help": "synthetic data"})
    sampler: str = _f("pk", "'random' (as the paper) or 'pk' (P identities x K images per batch)",
                      choices=("random", "pk"))
    images_per_identity: int = _f(4, "K of the P x K sampler", ge=2)
    flip: bool = _f(True, "random horizontal flip during training, drawn from (seed, epoch, batch, slot)")
    num_workers: int = _f(1, "DataLoader worker processes (0: load in the main process)", ge=0)
    on_error: str = _f("raise", "an unreadable training image: 'raise' (stop, naming file and record) or 'skip' "
                                "(drop it, count it, report the count at the end)", choices=ON_ERROR)
    max_skip_fraction: float = _f(0.01, "with on_error=skip, stop when more than this fraction of the records, "
                                        "or of the samples drawn so far, was unreadable", ge=0.0, le=1.0)


@dataclass
class ModelSection:
    backbone: str = _f("iresnet18", "backbone name (see otface.models.BACKBONES)")
    embedding_size: int = _f(512, "embedding dimension", ge=1)
    input_size: int = _f(56, "square input side in pixels; images are resized if different", ge=16)
    params: dict = _f({"width": 0.25}, "extra keyword arguments of the backbone")
    init_from: str = _f("", "start from these weights: an otface checkpoint (backbone, and head when the class "
                            "count matches) or a backbone state dict such as insightface's backbone.pth")


@dataclass
class HeadSection:
    name: str = _f("arcface", "margin head name (see otface.heads.HEADS)")
    params: dict = _f({"scale": 32.0, "margin": 0.5}, "hyper-parameters of the head (empty: its paper defaults)")
    wrapper: str | None = _f(None, "wrap the head's loss: 'focal' (F-Softmax) or 'hm' (HM-Softmax), see "
                                   "otface.heads.HEAD_WRAPPERS; null: none ('focal_<head>' names are sugar for it)")
    wrapper_params: dict = _f({}, "hyper-parameters of the wrapper, e.g. {gamma: 2.0} or {ratio: 0.9}")
    sample_rate: float = _f(1.0, "Partial FC: fraction r of the classes scored per step (every positive plus "
                                 "uniform negatives); 1: all", gt=0.0, le=1.0)


@dataclass
class OTSection:
    weight: float = _f(1.0, "w in L = L_head + w * L_OT (Eq. 10); 0 disables the OT loss", ge=0.0)
    stage: str = _f("layer2", "backbone stage whose feature maps are compared (Table V)")
    eps: float = _f(0.05, "entropic regulariser of Sinkhorn (Eq. 5)", gt=0.0)
    iters: int = _f(OT_MAX_ITERS, "Sinkhorn iterations (Eq. 8); with tol the most per problem", ge=1)
    tol: float | None = _f(OT_TOL, "stop each OT problem once its value's estimated relative error is below "
                                   "this (otface.ot.schedule); null: run all ot.iters iterations", gt=0.0)
    omega: float = _f(OT_OMEGA, "over-relaxation of the Sinkhorn updates, in (0, 2); 1: plain Sinkhorn (Eq. 8)",
                      gt=0.0, lt=2.0)
    grad: str = _f("envelope", "'envelope' (plan held fixed) or 'unrolled' (through the iterations)",
                   choices=GRAD_MODES)
    margin: float = _f(0.0, "margin inside the hinge of Eq. 9")
    mining_margin: float = _f(0.0, "a group is hard when cos(a,p) + mining_margin < cos(a,n) (Eq. 1)")
    max_groups: int | None = _f(128, "keep at most this many hardest groups per micro-batch; null: all (Algorithm 1)",
                                ge=1)
    reduction: str = _f("sum", "'sum' over hard groups (Eq. 9) or 'mean'", choices=REDUCTIONS)
    chunk_size: int = _f(256, "OT problems solved at once (bounds memory)", ge=1)


@dataclass
class OptimSection:
    batch_size: int = _f(64, "images per optimiser step (before gradient accumulation)", ge=2)
    grad_accum: int = _f(1, "micro-batches accumulated per optimiser step (loss scaled by 1/grad_accum)", ge=1)
    lr: float = _f(0.1, "base learning rate of SGD", gt=0.0)
    momentum: float = _f(0.9, "SGD momentum", ge=0.0, lt=1.0)
    weight_decay: float = _f(5e-4, "SGD weight decay", ge=0.0)
    epochs: int = _f(6, "training epochs", ge=1)
    milestones: list = _f([5], "epochs at which the learning rate is multiplied by gamma")
    gamma: float = _f(0.1, "learning-rate decay factor at each milestone", gt=0.0)
    warmup_epochs: float = _f(0.0, "linear learning-rate warm-up, in epochs", ge=0.0)
    grad_clip: float = _f(0.0, "clip the gradient norm to this value; 0: no clipping", ge=0.0)


@dataclass
class TrainSection:
    seed: int = _f(0, "seed of initialisation, sampling and augmentation", ge=0, lt=SEED_LIMIT)
    device: str = _f("auto", "'auto' (cuda if available), 'cpu' or 'cuda[:i]'")
    threads: int = _f(0, "torch CPU threads; 0: torch's default", ge=0)
    amp: str = _f("none", "mixed precision: 'none', 'bf16' or 'fp16' (with a gradient scaler; CUDA)",
                  choices=("none", "bf16", "fp16"))
    compile: bool = _f(False, "CUDA: torch.compile the backbone")
    channels_last: bool = _f(False, "CUDA: channels-last memory format for the backbone and its inputs")
    sync_bn: bool = _f(False, "CUDA, several processes: synchronise batch-norm statistics over the global batch")
    deterministic: bool = _f(False, "CUDA: deterministic kernels (slower; CPU runs are always deterministic)")
    log_interval: int = _f(20, "steps between log lines", ge=1)
    val_interval: int = _f(0, "epochs between validations during training; 0: only at the end", ge=0)
    checkpoint_steps: int = _f(200, "also checkpoint every this many steps (0: only at epoch ends)", ge=0)
    max_bad_steps: int = _f(20, "abort after this many consecutive non-finite losses (across epochs)", ge=1)
    progress: bool = _f(True, "show progress bars (on terminals)")


@dataclass
class Config:
    data: DataSection = field(default_factory=DataSection, metadata={"help": "training and validation data"})
    model: ModelSection = field(default_factory=ModelSection, metadata={"help": "backbone"})
    head: HeadSection = field(default_factory=HeadSection, metadata={"help": "margin-based softmax head"})
    ot: OTSection = field(default_factory=OTSection, metadata={"help": "OTFace optimal-transport loss"})
    losses: dict = _f({}, "auxiliary losses added to the head's, {name: {weight: w, params: {...}}}; names: "
                          "discface, center, triplet, contrastive (otface.losses.AUX_LOSSES)")
    optim: OptimSection = field(default_factory=OptimSection, metadata={"help": "optimiser and schedule"})
    train: TrainSection = field(default_factory=TrainSection, metadata={"help": "run control"})

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _as_float(value: Any, key: str) -> float:
    """A float from an int or a float, or from a string holding any float literal Python reads
    (``1e-3`` and ``1.0e6`` are strings to YAML 1.1 when not quoted as floats)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected float, got {value!r}")


_BOUNDS = {"ge": (float.__ge__, ">="), "gt": (float.__gt__, ">"), "le": (float.__le__, "<="),
           "lt": (float.__lt__, "<")}


def _number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _check_value(value: Any, f: dataclasses.Field, key: str) -> None:
    """The range and choices a field's metadata admits (:func:`_f`); floats must be finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    for name, bound in f.metadata.get("bounds", {}).items():
        holds, symbol = _BOUNDS[name]
        if not holds(float(value), float(bound)):
            raise ConfigError(f"{key}: must be {symbol} {_number(bound)}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _coerce(value: Any, typ: Any, f: dataclasses.Field, key: str) -> Any:
    """``value`` checked against the field's type, range and choices; ints and float literals in
    strings are accepted where a float is expected."""
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(typ, value, key + ".")
    optional = typing.get_origin(typ) is types.UnionType and type(None) in typing.get_args(typ)
    if optional:  # X | None: null is "off"
        if value is None:
            return None
        (typ,) = [t for t in typing.get_args(typ) if t is not type(None)]
    if typ is float:
        value = _as_float(value, key)
    elif typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    elif typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    elif typ in (str, list, dict) and not isinstance(value, typ):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
    _check_value(value, f, key)
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys under {prefix or 'the top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, _field_type(cls, names[k]), names[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that also reads exponent floats without a dot or an exponent sign
    (``1e-3``, ``1e6``, ``2.5e3``) as floats, as YAML 1.2 and Python do (YAML 1.1: strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """``text`` read as YAML by the config loader (safe; exponent floats are floats)."""
    return yaml.load(text, Loader=_Loader)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.05", "data.val_sets=[a.bin, b.bin]"]`` -> nested dict; values parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: not a YAML value ({one_line(str(err))})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def packaged_configs() -> dict[str, Path]:
    """{name: path} of the recipes shipped inside the package (``otface/configs``): the file name
    without ``.yaml``, ``recipes/<name>`` for the shared bases."""
    root = Path(str(importlib.resources.files("otface") / "configs"))
    return {path.relative_to(root).with_suffix("").as_posix(): path for path in sorted(root.rglob("*.yaml"))}


def config_description(path: Path) -> str:
    """The first comment line of a config file, without its ``#``."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def find_config(name_or_path: str | Path) -> Path:
    """A config file: a path that exists, else a packaged recipe of that name (``.yaml`` optional);
    :class:`ConfigError` listing the packaged names otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = packaged_configs()
    name = path.as_posix().removesuffix(".yaml")
    if name in packaged:
        return packaged[name]
    raise ConfigError(f"--config {name_or_path}: no such file, nor a packaged recipe (`otface configs` lists them: "
                      f"{', '.join(packaged)})")


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The nested dict of a YAML config file, with its ``base:`` file (a path relative to it,
    itself possibly with a base) merged underneath: the file's own keys win."""
    path = Path(path).resolve()
    if path in _chain:
        raise ConfigError(f"config {path}: circular base chain {' -> '.join(map(str, _chain + (path,)))}")
    try:
        loaded = parse_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {one_line(str(err))}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    tree = dict(loaded or {})
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"config {path}: base must be a file path, got {base!r}")
    return _merge(read_config_file(path.parent / base, _chain + (path,)), tree)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Defaults, then ``base`` (a nested dict, e.g. a checkpoint's config) or the YAML file at
    ``path`` (if any, with its ``base:`` chain; a packaged recipe's name also, :func:`find_config`),
    then dotted ``overrides``.

    Raises ConfigError for an unknown key or a value of the wrong type.
    """
    if path is not None and base is not None:
        raise ValueError("give a config file or a base config, not both")
    tree = read_config_file(find_config(path)) if path is not None else dict(base or {})
    tree = _merge(tree, parse_overrides(overrides or []))
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    """A validated Config from a nested dict (``Config.to_dict()``, e.g. a checkpoint's); missing
    keys take their defaults."""
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(cfg: Config) -> None:
    """Checks that involve several keys or the contents of lists and mappings (each key's own
    type, range and choices are checked as it is read)."""
    checks = [
        (all(_is_number(m) and m > 0 for m in cfg.optim.milestones), "optim.milestones must be numbers > 0"),
    ]
    if cfg.data.sampler == "pk":
        checks.append((
            cfg.optim.batch_size % cfg.data.images_per_identity == 0,
            "optim.batch_size must be a multiple of data.images_per_identity with the pk sampler",
        ))
    for name, spec in cfg.losses.items():
        checks.append((
            isinstance(spec, dict) and set(spec) <= {"weight", "params"} and isinstance(spec.get("params", {}), dict)
            and _is_number(spec.get("weight")) and spec["weight"] >= 0,
            f"losses.{name} must be {{weight: number >= 0, params: {{...}}}}, got {spec!r}",
        ))
    errors = [msg for ok, msg in checks if not ok]
    if errors:
        raise ConfigError("; ".join(errors))


def admitted(f: dataclasses.Field) -> str:
    """The values a field admits, in words (``">= 0"``, ``"one of 'a', 'b'"``), or ""."""
    parts = [f"{_BOUNDS[name][1]} {_number(bound)}" for name, bound in f.metadata.get("bounds", {}).items()]
    if f.metadata.get("choices"):
        parts.append("one of " + ", ".join(map(repr, f.metadata["choices"])))
    return ", ".join(parts)


def describe(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """Yield (dotted key, type name, default, help) for every leaf key; the help ends with the
    values the key admits."""
    default = cls()
    for f in dataclasses.fields(cls):
        typ = _field_type(cls, f)
        if dataclasses.is_dataclass(typ):
            yield from describe(typ, prefix + f.name + ".")
        else:
            name = typ.__name__ if isinstance(typ, type) else str(typ)
            limits = admitted(f)
            help_text = f.metadata.get("help", "") + (f" [{limits}]" if limits else "")
            yield prefix + f.name, name, getattr(default, f.name), help_text


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the full resolved configuration as YAML (atomically)."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

