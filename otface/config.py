"""Typed training configuration: dataclasses, YAML files and dotted command-line overrides.

Every key has a type and a help text (``otface train --list-keys`` prints them). A YAML file or an
override naming a key that does not exist is an error, never silently ignored (SPEC §9).

>>> cfg = load_config(None, ["optim.lr=0.05", "head.name=cosface"])
>>> cfg.optim.lr
0.05
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from otface.errors import ConfigError


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a default and a help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SynthSection:
    """The built-in synthetic face data set (used when ``data.root`` is empty)."""

    seed: int = _f(0, "seed of the synthetic identities, samples and pairs")
    num_identities: int = _f(200, "training identities")
    images_per_identity: int = _f(50, "training images per identity")
    num_pairs: int = _f(1000, "pairs in each verification protocol (easy and hard), half genuine")
    workers: int = _f(2, "processes used to render the images")
    cache_dir: str = _f("", "where generated sets are cached; empty: $OTFACE_CACHE or ~/.cache/otface")


@dataclass
class DataSection:
    root: str = _f("", "training set: a RecordIO folder (train.rec, train.idx, property) or an image folder "
                       "root/<identity>/<image>; empty: synthetic faces")
    val_sets: list = _f([], "verification .bin files; empty with synthetic data: its easy and hard sets")
    synthetic: SynthSection = field(default_factory=SynthSection, metadata={"help": "synthetic data"})
    sampler: str = _f("pk", "'random' (as the paper) or 'pk' (P identities x K images per batch)")
    images_per_identity: int = _f(4, "K of the P x K sampler")
    flip: bool = _f(True, "random horizontal flip during training")
    num_workers: int = _f(1, "DataLoader worker processes (0: load in the main process)")
    on_error: str = _f("raise", "an unreadable training image: 'raise' (stop, naming file and record) or 'skip' "
                                "(drop it, count it, report the count at the end)")


@dataclass
class ModelSection:
    backbone: str = _f("iresnet18", "backbone name (see otface.models.BACKBONES)")
    embedding_size: int = _f(512, "embedding dimension")
    input_size: int = _f(56, "square input side in pixels; images are resized if different")
    params: dict = _f({"width": 0.25}, "extra keyword arguments of the backbone")


@dataclass
class HeadSection:
    name: str = _f("arcface", "margin head name (see otface.heads.HEADS)")
    params: dict = _f({"scale": 32.0, "margin": 0.5}, "hyper-parameters of the head (empty: its paper defaults)")


@dataclass
class OTSection:
    weight: float = _f(1.0, "w in L = L_head + w * L_OT (Eq. 10); 0 disables the OT loss")
    stage: str = _f("layer2", "backbone stage whose feature maps are compared (Table V)")
    eps: float = _f(0.05, "entropic regulariser of Sinkhorn (Eq. 5)")
    iters: int = _f(30, "Sinkhorn iterations (Eq. 8)")
    tol: float = _f(0.0, "stop Sinkhorn early below this marginal error; 0: run all iterations")
    grad: str = _f("envelope", "'envelope' (plan held fixed) or 'unrolled' (through the iterations)")
    margin: float = _f(0.0, "margin inside the hinge of Eq. 9")
    mining_margin: float = _f(0.0, "a group is hard when cos(a,p) + mining_margin < cos(a,n) (Eq. 1)")
    max_groups: int = _f(128, "keep at most this many hardest groups per micro-batch; 0: all (Algorithm 1)")
    reduction: str = _f("sum", "'sum' over hard groups (Eq. 9) or 'mean'")
    chunk_size: int = _f(256, "OT problems solved at once (bounds memory)")


@dataclass
class OptimSection:
    batch_size: int = _f(64, "images per optimiser step (before gradient accumulation)")
    grad_accum: int = _f(1, "micro-batches accumulated per optimiser step (loss scaled by 1/grad_accum)")
    lr: float = _f(0.1, "base learning rate of SGD")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "SGD weight decay")
    epochs: int = _f(6, "training epochs")
    milestones: list = _f([5], "epochs at which the learning rate is multiplied by gamma")
    gamma: float = _f(0.1, "learning-rate decay factor at each milestone")
    warmup_epochs: float = _f(0.0, "linear learning-rate warm-up, in epochs")
    grad_clip: float = _f(0.0, "clip the gradient norm to this value; 0: no clipping")


@dataclass
class TrainSection:
    seed: int = _f(0, "seed of initialisation, sampling and augmentation")
    device: str = _f("auto", "'auto' (cuda if available), 'cpu' or 'cuda[:i]'")
    threads: int = _f(0, "torch CPU threads; 0: torch's default")
    amp: str = _f("none", "mixed precision: 'none', 'bf16' or 'fp16' (CUDA)")
    log_interval: int = _f(20, "steps between log lines")
    val_interval: int = _f(0, "epochs between validations during training; 0: only at the end")
    checkpoint_steps: int = _f(200, "also checkpoint every this many steps (0: only at epoch ends)")
    max_bad_steps: int = _f(20, "abort after this many consecutive non-finite losses")
    progress: bool = _f(True, "show progress bars")


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


_SCALARS = (bool, int, float, str)


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check ``value`` against the field type; ints are accepted where a float is expected."""
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(typ, value, key + ".")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ in (int, float) and (isinstance(value, bool) or not isinstance(value, typ)):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
    if typ in (str, list, dict) and not isinstance(value, typ):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys under {prefix or 'the top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, _field_type(cls, names[k]), prefix + k) for k, v in values.items()}
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


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.05", "data.val_sets=[a.bin, b.bin]"]`` -> nested dict; values parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The nested dict of a YAML config file, with its ``base:`` file (a path relative to it,
    itself possibly with a base) merged underneath: the file's own keys win."""
    path = Path(path).resolve()
    if path in _chain:
        raise ConfigError(f"config {path}: circular base chain {' -> '.join(map(str, _chain + (path,)))}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    tree = dict(loaded or {})
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"config {path}: base must be a file path, got {base!r}")
    return _merge(read_config_file(path.parent / base, _chain + (path,)), tree)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any, with its ``base:`` chain), then dotted
    ``overrides``.

    Raises ConfigError for an unknown key or a value of the wrong type.
    """
    tree = read_config_file(path) if path is not None else {}
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


def validate(cfg: Config) -> None:
    """Checks of values that types alone cannot catch."""
    checks = [
        (cfg.data.sampler in ("random", "pk"), "data.sampler must be 'random' or 'pk'"),
        (cfg.data.on_error in ("raise", "skip"), "data.on_error must be 'raise' or 'skip'"),
        (cfg.data.images_per_identity >= 2, "data.images_per_identity must be >= 2"),
        (cfg.optim.batch_size >= 2, "optim.batch_size must be >= 2"),
        (cfg.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
        (cfg.optim.epochs >= 1, "optim.epochs must be >= 1"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.ot.weight >= 0, "ot.weight must be >= 0"),
        (cfg.ot.eps > 0, "ot.eps must be > 0"),
        (cfg.ot.iters >= 1, "ot.iters must be >= 1"),
        (cfg.ot.grad in ("envelope", "unrolled"), "ot.grad must be 'envelope' or 'unrolled'"),
        (cfg.ot.reduction in ("sum", "mean"), "ot.reduction must be 'sum' or 'mean'"),
        (cfg.train.amp in ("none", "bf16", "fp16"), "train.amp must be 'none', 'bf16' or 'fp16'"),
        (all(isinstance(m, (int, float)) for m in cfg.optim.milestones), "optim.milestones must be numbers"),
    ]
    if cfg.data.sampler == "pk":
        checks.append((
            cfg.optim.batch_size % cfg.data.images_per_identity == 0,
            "optim.batch_size must be a multiple of data.images_per_identity with the pk sampler",
        ))
    for name, spec in cfg.losses.items():
        checks.append((
            isinstance(spec, dict) and set(spec) <= {"weight", "params"} and isinstance(spec.get("params", {}), dict)
            and isinstance(spec.get("weight"), (int, float)) and not isinstance(spec.get("weight"), bool)
            and spec["weight"] >= 0,
            f"losses.{name} must be {{weight: number >= 0, params: {{...}}}}, got {spec!r}",
        ))
    errors = [msg for ok, msg in checks if not ok]
    if errors:
        raise ConfigError("; ".join(errors))


def describe(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """Yield (dotted key, type name, default, help) for every leaf key."""
    default = cls()
    for f in dataclasses.fields(cls):
        typ = _field_type(cls, f)
        if dataclasses.is_dataclass(typ):
            yield from describe(typ, prefix + f.name + ".")
        else:
            name = typ.__name__ if isinstance(typ, type) else str(typ)
            yield prefix + f.name, name, getattr(default, f.name), f.metadata.get("help", "")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the full resolved configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

