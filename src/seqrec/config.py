"""Dataclass configs: the single source of truth for every setting, saved beside the weights.

Click options fill these; checkpoints store them as JSON and loading rebuilds the model from the
JSON alone (``ModelConfig.from_dict``), so no code is ever executed from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field, fields
from typing import Any

from seqrec.errors import ConfigError, received_expected

SCHEMA_VERSION = 2  # 2: HSTU's Q K^T no longer divided by sqrt(d); HSTU/PCRec checkpoints of 1 are refused
MODELS = ("sasrec", "gru4rec", "hstu", "pcrec")
ATTENTION_ENCODERS = ("sasrec", "hstu", "pcrec")  # (B, heads, L, L) scores per layer (PCRec's theta too): memory ~ L^2
HEADS = ("softmax", "cpr")
POSITIONS = ("relative", "absolute", "both", "none")
LOSSES = ("ce", "sampled")
TRAIN_WINDOWS = ("all", "last")  # all: every training item a target once; last: each user's most recent window
PRECISIONS = ("fp32", "bf16")
IMPORT_FORMATS = ("parquet", "recbole", "sasrec", "s3rec")  # seqrec data import --format
EXPORT_FORMATS = ("onnx", "tensorrt")
EXPORT_PRECISIONS = ("fp32", "fp16", "bf16")
POINTER_OPS = ("standard", "custom")
PC_ACTIVATIONS = ("softplus", "sigmoid", "tanh", "relu", "identity")
CPR_POOLINGS = ("mean", "logsumexp")
SCORE_BACKENDS = ("torch", "onnxruntime", "tensorrt")
SCORE_LAYOUTS = ("list", "long")
SCORE_ENGINES = ("local", "ray")
PROFILE_PRECISIONS = ("fp32", "fp16", "bf16")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(received_expected(name, repr(value), f"one of {', '.join(choices)}"))


MAX_BATCH = 1 << 20  # users per model call: beyond it the batch's arrays alone reach gigabytes
MAX_THREADS = 1024  # threads (or actors) per process: more than any machine's cores, and torch's int limit is far off
MAX_CATALOG = 10**9  # items: a billion-row item table is already 256 GB at d 64
MAX_VALIDATION_USERS = 100_000  # parity checks each against the full (B, N) logits: more says nothing more
# Model sizes beyond any sequential recommender's: past them a typo (a window of 10^8) allocated until the
# machine ran out of memory, or built 100,000 layers in silence, instead of failing in one line.
MAX_DIM = 16_384
MAX_LAYERS = 128
MAX_FFN_MULTIPLIER = 64
MAX_LENGTH = 8_192  # window: attention holds (B, L, L) scores per layer
MAX_PC_STEPS = 64  # PCRec steps unrolled in every layer


def _check_range(name: str, value: float | None, low: float, high: float | None = None) -> None:
    """value in [low, high] (high None: no upper bound); None passes: an optional setting left unset."""
    if value is None:
        return
    if not math.isfinite(value) or value < low or (high is not None and value > high):  # NaN compares false
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(received_expected(name, value, bound))


def _check_positive(name: str, value: float | None) -> None:
    """value > 0 and finite (lr 0 trains nothing; a zero time budget still ran a whole epoch); None passes."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(received_expected(name, value, "> 0"))


def _check_device_name(device: str) -> None:
    """A torch device string of a kind training runs on: 'cpu', 'cuda' or 'cuda:N' (whether this machine has it is
    ``_check_device_present``'s question, asked only where training starts: a checkpoint trained on a GPU loads
    on any machine)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(received_expected("device", repr(device), "cpu, cuda or cuda:N")) from err
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(received_expected("device", repr(device), "cpu, cuda or cuda:N"))


def _check_device_present(device: str) -> None:
    """'cpu', or 'cuda' / 'cuda:N' where this machine has that CUDA device."""
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(received_expected("device", repr(device), f"cpu, or one of the {torch.cuda.device_count()} "
                                            "CUDA devices of this machine"))


class _JsonConfig:
    """Round trip through plain dicts, rejecting unknown keys so typos never pass silently."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def _check_integer_fields(self) -> None:
        """Every ``int`` field an integer (NumPy's too, stored as int): a float or bool width or count was
        accepted and failed deep inside torch (``dim=8.0``: "empty(): argument 'size' ... got float")."""
        for item in fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if item.type not in ("int", "int | None") or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(received_expected(item.name, repr(value), "an integer"))
            setattr(self, item.name, int(value))

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(received_expected(f"{cls.__name__} keys", unknown, sorted(known)))
        return cls(**data)


CPR_VARIANT = re.compile(r"(?P<parts>softmax|C|CP|CPR:(?P<ks>[1-9]\d*(?:,[1-9]\d*)*))(?P<mi>\+Mi)?")


@dataclass(frozen=True)
class CPRVariant:
    """Which softmax-CPR partitions a head uses (arXiv 2310.14079, Table 2 names)."""

    context: bool  # C: history items get their own logit c(v) = f_C . E[v]
    pointer: bool  # P: ... plus the mean pointer score of their occurrences
    rerank: tuple[int, ...]  # R:k1,k2,..: the top-k of the running logits get f_R . E[v], k descending
    mixed_input: bool  # +Mi: projections read [h_t ; GELU(W [h_t, h_t-1, h_t-2 of the top two layers])]


def parse_cpr_variant(text: str) -> CPRVariant:
    """'softmax', 'softmax+Mi', 'C', 'CP', 'CPR:100', 'CPR:500,100,20+Mi', ..."""
    match = CPR_VARIANT.fullmatch(text)
    ks = tuple(int(k) for k in match["ks"].split(",")) if match and match["ks"] else ()
    if match is None or list(ks) != sorted(set(ks), reverse=True):
        raise ConfigError(received_expected("cpr_variant", repr(text), "softmax, C, CP or CPR:k1,k2,... with "
                                            "k1 > k2 > ... > 0, optionally followed by +Mi (e.g. CPR:100+Mi)"))
    parts = match["parts"]
    return CPRVariant(parts.startswith("C"), parts.startswith("CP"), ks, match["mi"] is not None)


@dataclass
class ModelConfig(_JsonConfig):
    """Encoder + head. ``num_items`` counts real items; index 0 is padding."""

    model: str = "sasrec"
    head: str = "softmax"
    num_items: int = 1
    dim: int = 64
    layers: int = 2
    heads: int = 1
    ffn_multiplier: int = 1  # SASRec feed-forward width = ffn_multiplier * dim
    dropout: float = 0.5
    embedding_std: float | None = None  # item table initialised N(0, std^2); None = dim**-0.5 (unit-scale inputs)
    max_length: int = 50
    positions: str = "relative"  # relative: bias by distance back; absolute: embedding from the oldest; both
    cpr_variant: str = "CPR:100+Mi"  # softmax-CPR partitions (head cpr only), see models/cpr.py
    cpr_recency: bool = True  # CPR pointer scores get a learned bias by distance back (models/cpr.py)
    cpr_pooling: str = "logsumexp"  # how an item's repeated history slots combine: logsumexp or mean (published)
    cpr_base_projection: bool = True  # False: the CPR base partition is the plain softmax head h . E (no f_S, no Mi)
    l2_normalize: bool = False  # softmax head: cosine of hidden state and item embedding (HSTU recipe)
    pc_steps: int = 2  # PCRec: predictive-coding steps unrolled in every layer (0 = plain HSTU)
    pc_alpha: float = 0.5  # PCRec: Hebbian rate of theta (normalised, stable in [0, 2])
    pc_activation: str = "tanh"  # PCRec: f in the prediction mu = theta f(s)

    def __post_init__(self) -> None:
        self._check_integer_fields()
        _check_choice("model", self.model, MODELS)
        _check_choice("head", self.head, HEADS)
        _check_choice("positions", self.positions, POSITIONS)
        if self.head == "cpr":
            parse_cpr_variant(self.cpr_variant)
        _check_choice("cpr_pooling", self.cpr_pooling, CPR_POOLINGS)
        _check_range("num_items", self.num_items, 1, MAX_CATALOG)
        _check_range("dim", self.dim, 1, MAX_DIM)
        _check_range("layers", self.layers, 1, MAX_LAYERS)
        _check_range("heads", self.heads, 1)
        _check_range("ffn_multiplier", self.ffn_multiplier, 1, MAX_FFN_MULTIPLIER)
        _check_range("max_length", self.max_length, 1, MAX_LENGTH)
        _check_range("dropout", self.dropout, 0.0, 0.95)
        _check_range("embedding_std", self.embedding_std, 1e-6)
        _check_range("pc_steps", self.pc_steps, 0, MAX_PC_STEPS)
        _check_range("pc_alpha", self.pc_alpha, 0.0, 2.0)
        _check_choice("pc_activation", self.pc_activation, PC_ACTIVATIONS)
        if self.dim % self.heads:
            raise ConfigError(received_expected("dim / heads", f"dim={self.dim}, heads={self.heads}",
                                                "dim divisible by heads"))


@dataclass
class TrainConfig(_JsonConfig):
    """Optimisation settings. Defaults are the ones that reach the published Beauty figures."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "ce"
    negatives: int = 256
    exclude_history: bool = False  # leave each prefix's own items out of its training softmax
    cpr_base_weight: float = 0.0  # CPR head: + this x the softmax loss of its base partition alone (see loop.packed_loss)
    cpr_base_detach: bool = False  # CPR head: the CPR loss takes the base logits as constants (needs cpr_base_weight)
    cpr_detach_partitions: bool = False  # CPR head: the other partitions read detached states and item vectors
    temperature: float = 1.0
    patience: int = 10
    eval_every: int = 1
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # bf16: autocast matrix products (weights, optimizer and loss stay fp32)
    max_minutes: float | None = None
    refit: bool = False  # after early stopping, retrain from scratch on train + validation items, as many epochs
    eval_users: int | None = None  # validate on a fixed random subset to save time; None = all
    train_windows: str = "all"  # all: windows of max_length + 1 cut from the end of each user's training items, every
    # item a target once; last: the most recent window only (the runs recorded before this option existed)

    def __post_init__(self) -> None:
        self._check_integer_fields()
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("train_windows", self.train_windows, TRAIN_WINDOWS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_range("epochs", self.epochs, 1)
        _check_range("batch_size", self.batch_size, 1, MAX_BATCH)
        _check_positive("lr", self.lr)
        _check_range("negatives", self.negatives, 1)
        _check_range("temperature", self.temperature, 1e-6)
        _check_range("cpr_base_weight", self.cpr_base_weight, 0.0)
        _check_range("patience", self.patience, 1)
        _check_range("eval_every", self.eval_every, 1)
        _check_range("weight_decay", self.weight_decay, 0.0)
        _check_range("eval_users", self.eval_users, 1)
        _check_positive("max_minutes", self.max_minutes)
        _check_range("seed", self.seed, 0, 2**63 - 1)
        _check_device_name(self.device)


CATALOG_BLOCK = 262_144  # item-table rows an exported graph scores at once: 512 MiB of fp32 scores for 512 users


@dataclass
class ExportConfig(_JsonConfig):
    """What ``seqrec export`` builds: a scoring graph (items -> top-K) and how it is checked."""

    format: str = "onnx"  # tensorrt: the ONNX file plus an engine built from it (needs a GPU)
    top_k: int = 10
    exclude_seen: bool = False  # never return an item of the input history (baked into the graph)
    precision: str = "fp32"  # fp16 / bf16: the model's matrix products in that type, scores in fp32
    pointer_op: str = "standard"  # custom: the CPR history scatter as one seqrec-domain node
    max_length: int | None = None  # window of the graph; None = the model's max_length
    opset: int = 18
    validation_users: int | None = None  # random users checked against PyTorch, beside the edge cases; None:
    # 200, fewer where a long window makes each user slow (exporter.validate.parity_users)
    seed: int = 0
    catalog_block: int = CATALOG_BLOCK  # item-table rows the graph scores at once: (batch, block) scores

    def __post_init__(self) -> None:
        self._check_integer_fields()
        _check_range("catalog_block", self.catalog_block, 1)
        _check_choice("format", self.format, EXPORT_FORMATS)
        _check_choice("precision", self.precision, EXPORT_PRECISIONS)
        _check_choice("pointer_op", self.pointer_op, POINTER_OPS)
        _check_range("top_k", self.top_k, 1, 3840)  # TensorRT's TopK limit
        _check_range("opset", self.opset, 18)
        _check_range("validation_users", self.validation_users, 1, MAX_VALIDATION_USERS)
        _check_range("max_length", self.max_length, 1, MAX_LENGTH)


@dataclass
class ScoreConfig(_JsonConfig):
    """What ``seqrec score`` runs: histories Parquet -> top-K Parquet, streamed and resumable."""

    model: str = ""  # an export bundle (manifest.json) or a checkpoint directory (config.json)
    input: str = ""  # a Parquet file, a directory of parts or a glob
    output: str = ""  # directory: one part per input part, _rejects.parquet, _summary.json
    backend: str | None = None  # None: onnxruntime for a bundle, torch for a checkpoint
    top_k: int | None = None  # None: the bundle's (baked in), or 10 for a checkpoint
    exclude_seen: bool | None = None  # None: the bundle's, or False for a checkpoint
    batch_size: int | None = None  # users per model call; None: DEFAULT_SCORE_BATCH, fewer for a long window
    layout: str = "list"  # list: one row per user; long: one row per (user, rank)
    engine: str = "local"
    resume: bool = False  # continue a killed job in ``output`` (parts in its ledger are kept)
    address: str | None = None  # Ray cluster to join (engine ray); None starts a local one
    actors: int | None = None  # Ray scorer actors (engine ray); None: DEFAULT_ACTORS
    threads: int | None = None  # intra-op threads of the backend; None: the library's default
    precision: str = "fp32"  # torch backend: bf16 autocasts the matrix products (a bundle's is set at export)
    progress: bool = True

    def __post_init__(self) -> None:
        self._check_integer_fields()
        if self.backend is not None:
            _check_choice("backend", self.backend, SCORE_BACKENDS)
        _check_choice("layout", self.layout, SCORE_LAYOUTS)
        _check_choice("engine", self.engine, SCORE_ENGINES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_range("batch_size", self.batch_size, 1, MAX_BATCH)
        _check_range("actors", self.actors, 1, MAX_THREADS)
        for name in ("address", "actors"):  # a local run would ignore them: someone who meant a cluster
            if self.engine != "ray" and getattr(self, name) is not None:
                raise ConfigError(received_expected(name, f"{getattr(self, name)!r} with engine {self.engine!r}",
                                                    "only with engine 'ray' (--engine ray), which reads it"))
        _check_range("top_k", self.top_k, 1)
        _check_range("threads", self.threads, 1, MAX_THREADS)


@dataclass
class ProfileConfig(_JsonConfig):
    """What ``seqrec profile`` measures: latency and throughput per backend x precision x catalog x batch."""

    model: str = ""  # an export bundle or a checkpoint directory, as for ScoreConfig
    out: str = "profile"  # directory for profile.json and profile.png
    backends: tuple[str, ...] = SCORE_BACKENDS
    batch_sizes: tuple[int, ...] = (1, 32, 256, 1024)
    catalog_sizes: tuple[int, ...] | None = None  # None: the model's own catalog
    precisions: tuple[str, ...] = ("fp32",)
    length: int | None = None  # histories of 1..length items; None: the model's window
    top_k: int | None = None  # None: the bundle's (baked in), or 10 for a checkpoint
    warmup: int = 3  # untimed calls before each measurement
    iterations: int | None = None  # timed calls per measurement; exclusive with seconds
    seconds: float | None = None  # timed time per measurement; both None: 2 s
    threads: int | None = None  # intra-op threads of the backend; None: the library's default
    seed: int = 0  # histories and the random weights of other catalog sizes

    def __post_init__(self) -> None:
        self._check_integer_fields()
        self.backends = _check_choices("backends", self.backends, SCORE_BACKENDS)
        self.precisions = _check_choices("precisions", self.precisions, PROFILE_PRECISIONS)
        self.batch_sizes = _check_sizes("batch_sizes", self.batch_sizes, MAX_BATCH)
        if self.catalog_sizes is not None:
            self.catalog_sizes = _check_sizes("catalog_sizes", self.catalog_sizes, MAX_CATALOG)
        _check_range("warmup", self.warmup, 0)
        if self.iterations is not None and self.seconds is not None:
            raise ConfigError(received_expected("--iterations and --seconds", "both", "at most one of them"))
        for name in ("length", "top_k", "iterations"):
            _check_range(name, getattr(self, name), 1)
        _check_range("threads", self.threads, 1, MAX_THREADS)
        _check_range("seed", self.seed, 0, 2**63 - 1)  # as training's
        _check_range("seconds", self.seconds, 1e-3)


def _check_choices(name: str, values: tuple[str, ...], choices: tuple[str, ...]) -> tuple[str, ...]:
    """A non-empty list of known names, each once, in the order given."""
    unknown = [value for value in values if value not in choices]
    if unknown or not values:
        raise ConfigError(received_expected(name, ",".join(unknown or values) or "nothing",
                                            f"a comma-separated list of {', '.join(choices)}"))
    return tuple(dict.fromkeys(values))


def _check_sizes(name: str, values: tuple[int, ...], high: int | None = None) -> tuple[int, ...]:
    """A non-empty list of positive integers (at most ``high``), each once, ascending."""
    if not values or min(values) < 1 or (high is not None and max(values) > high):
        bound = "integers >= 1" if high is None else f"integers in [1, {high:,}]"
        raise ConfigError(received_expected(name, ",".join(map(str, values)) or "nothing",
                                            f"a comma-separated list of {bound}"))
    return tuple(sorted(set(values)))


@dataclass
class ModelDefaults:
    """Per-model defaults for options the user did not set."""

    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


# Beauty (benchmarks/RESULTS.md): full softmax beat 1,024 sampled negatives, and dot products beat
# HSTU's cosine at temperature 0.05, for both models; both stay available as options.
_HSTU_MODEL = {"dim": 64, "layers": 2, "heads": 1, "dropout": 0.5}
_HSTU_TRAIN = {"lr": 1e-3, "batch_size": 128}

MODEL_DEFAULTS: dict[str, ModelDefaults] = {
    "sasrec": ModelDefaults(model={"dim": 64, "layers": 2, "heads": 1, "ffn_multiplier": 4, "dropout": 0.5},
                            train={"lr": 1e-3, "batch_size": 128}),
    "gru4rec": ModelDefaults(model={"dim": 256, "layers": 1, "heads": 1, "dropout": 0.5},
                             train={"lr": 1e-3, "batch_size": 128}),
    "hstu": ModelDefaults(model=_HSTU_MODEL, train=_HSTU_TRAIN),
    "pcrec": ModelDefaults(model={**_HSTU_MODEL, "pc_steps": 2, "pc_alpha": 0.5, "pc_activation": "tanh"},
                           train=_HSTU_TRAIN),
}


def resolve_configs(model: str, head: str, options: dict) -> tuple[ModelConfig, TrainConfig]:
    """Explicit options (None = not given) win over the model's defaults, then the dataclass defaults."""
    given = {key: value for key, value in options.items() if value is not None}
    defaults = MODEL_DEFAULTS[model]
    model_keys = {f.name for f in fields(ModelConfig)}
    model_given = {key: value for key, value in given.items() if key in model_keys}
    train_given = {key: value for key, value in given.items() if key not in model_keys}
    model_cfg = ModelConfig.from_dict({**defaults.model, **model_given, "model": model, "head": head})
    train_cfg = TrainConfig.from_dict({**defaults.train, **train_given})
    check_trainable(model_cfg, train_cfg)
    _refuse_unused(given, model_cfg, train_cfg)
    return model_cfg, train_cfg


# options that only some models, heads or losses read: (who reads it, whether this run does)
_USED_BY = {
    "pc_steps": ("--model pcrec", lambda m, t: m.model == "pcrec"),
    "pc_alpha": ("--model pcrec and --pc-steps >= 1", lambda m, t: m.model == "pcrec" and m.pc_steps > 0),
    "pc_activation": ("--model pcrec and --pc-steps >= 1", lambda m, t: m.model == "pcrec" and m.pc_steps > 0),
    "heads": ("an attention model (sasrec, hstu, pcrec)", lambda m, t: m.model != "gru4rec"),
    "positions": ("an attention model (sasrec, hstu, pcrec)", lambda m, t: m.model != "gru4rec"),
    "ffn_multiplier": ("--model sasrec", lambda m, t: m.model == "sasrec"),
    "cpr_variant": ("--head cpr", lambda m, t: m.head == "cpr"),
    "cpr_recency": ("--head cpr with a pointer partition (CP, CPR:..)",
                    lambda m, t: m.head == "cpr" and parse_cpr_variant(m.cpr_variant).pointer),
    "cpr_pooling": ("--head cpr with history partitions (C, CP, CPR:..)",
                    lambda m, t: m.head == "cpr" and parse_cpr_variant(m.cpr_variant).context),
    "cpr_base_projection": ("--head cpr", lambda m, t: m.head == "cpr"),
    "negatives": ("--loss sampled", lambda m, t: t.loss == "sampled"),
}


def _refuse_unused(given: dict, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """An option given explicitly that this model, head or loss never reads would be recorded in config.json
    and silently ignored: refuse it."""
    for name in given:
        if name in _USED_BY and not _USED_BY[name][1](model_cfg, train_cfg):
            run = (f"--model {model_cfg.model}" + (f" (pc_steps {model_cfg.pc_steps})" if model_cfg.model == "pcrec"
                                                   else "") + f", --head {model_cfg.head}"
                   + (f" (variant {model_cfg.cpr_variant})" if model_cfg.head == "cpr" else "") + f", --loss {train_cfg.loss}")
            raise ConfigError(received_expected(name, f"{given[name]!r} for {run}",
                                                f"only with {_USED_BY[name][0]}, which reads it"))


def check_catalog_fit(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Settings bounded by the catalog of the data (``model_cfg.num_items``, known once the data is read)."""
    if train_cfg.loss == "sampled" and train_cfg.negatives > model_cfg.num_items:
        raise ConfigError(received_expected("negatives", f"{train_cfg.negatives:,} for a catalog of "
                                            f"{model_cfg.num_items:,} items", f"at most {model_cfg.num_items:,} "
                                            "(drawn from the catalog; to score against every item, --loss ce)"))


def check_trainable(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Settings that each config accepts alone but that do not go together, and a training device this machine has."""
    _check_device_present(train_cfg.device)
    if train_cfg.cpr_base_weight > 0 and model_cfg.head != "cpr":
        raise ConfigError(received_expected("cpr_base_weight", f"{train_cfg.cpr_base_weight} with head "
                                            f"{model_cfg.head!r}", "0 unless the head is 'cpr'"))
    if model_cfg.l2_normalize and model_cfg.head != "softmax":  # the CPR head scores dot products only
        raise ConfigError(received_expected("l2_normalize", f"True with head {model_cfg.head!r}",
                                            "the softmax head (the CPR head's partitions score dot products)"))
    if train_cfg.cpr_base_detach and (model_cfg.head != "cpr" or train_cfg.cpr_base_weight <= 0):
        raise ConfigError(received_expected("cpr_base_detach", f"True with head {model_cfg.head!r} and "
                                            f"cpr_base_weight {train_cfg.cpr_base_weight}",
                                            "head 'cpr' and cpr_base_weight > 0 (else the base never trains)"))
    variant = parse_cpr_variant(model_cfg.cpr_variant) if model_cfg.head == "cpr" else None
    if variant and not model_cfg.cpr_base_projection and not (variant.context or variant.rerank):
        raise ConfigError(received_expected("cpr_base_projection", f"False with variant {model_cfg.cpr_variant!r}",
                                            "True, or a variant with history or reranker partitions (C, CP or "
                                            "CPR:..): a plain base alone is --head softmax, and Mi would feed nothing"))
    if train_cfg.cpr_detach_partitions and not (variant and (variant.context or variant.rerank)):
        raise ConfigError(received_expected("cpr_detach_partitions", f"True with head {model_cfg.head!r}, variant "
                                            f"{model_cfg.cpr_variant!r}",
                                            "head 'cpr' with reranker or history partitions (C, CP or CPR:..)"))
