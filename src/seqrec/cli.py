"""The ``seqrec`` command line: a thin skin over the library.

Each command builds a config dataclass and calls one library function. Errors the package raises
on purpose (``SeqrecError``) are printed on one line and exit with status 1, without a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from seqrec.config import (CATALOG_BLOCK, CPR_POOLINGS, EXPORT_FORMATS, EXPORT_PRECISIONS, HEADS, IMPORT_FORMATS, LOSSES, MODELS,
                           PC_ACTIVATIONS,
                           POINTER_OPS, POSITIONS, PRECISIONS, PROFILE_PRECISIONS, SCORE_BACKENDS, SCORE_ENGINES, SCORE_LAYOUTS,
                           TRAIN_WINDOWS, resolve_configs)
from seqrec.errors import ConfigError, SeqrecError, received_expected
from seqrec.interrupts import Terminated, handlers_restored, take_sigterm_as_interrupt


class CommaList(click.ParamType):
    """``a,b,c`` -> a tuple of ``item_type`` values; names are checked by the config dataclass."""

    name = "list"

    def __init__(self, item_type: type = str, items: str = "names") -> None:
        self.item_type = item_type
        self.items = items

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        try:
            if "" in parts[:-1] or (parts[-1] == "" and len(parts) > 1):  # '1,,2' or '1,': a value lost in typing
                raise ValueError(value)
            return tuple(self.item_type(part) for part in parts if part)
        except ValueError:
            self.fail(received_expected(param.name if param else "value", repr(value),
                                        f"a comma-separated list of {self.items}"), param, ctx)


AFTER_INTERRUPT = "seqrec.after_interrupt"  # ctx.meta key: () -> str, what Ctrl-C leaves behind


class SeqrecGroup(click.Group):
    def invoke(self, ctx: click.Context):
        with handlers_restored(signal.SIGTERM) as settable:  # SIGTERM as Ctrl-C, for this command only
            if settable:
                take_sigterm_as_interrupt()
            return self._invoke_reporting_errors(ctx)

    def _invoke_reporting_errors(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SeqrecError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as interrupt:
            terminated = isinstance(interrupt, Terminated)
            click.echo(f"\n{'Terminated' if terminated else 'Interrupted'}: {_after_interrupt(ctx)}", err=True)
            sys.exit(143 if terminated else 130)  # 128 + the signal's number, as a shell reports it
        except (MemoryError, RuntimeError) as error:  # numpy's and Python's, torch's allocator (a RuntimeError)
            if isinstance(error, RuntimeError) and not _allocation_failure(error):
                raise
            click.echo(f"Error: out of memory ({str(error).splitlines()[0] if str(error) else type(error).__name__}): "
                       "run with smaller sizes (batch, catalog, users)", err=True)
            sys.exit(1)


def _allocation_failure(error: RuntimeError) -> bool:
    """torch's CPU allocator and CUDA report running out of memory as a RuntimeError (or its subclass)."""
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _after_interrupt(ctx: click.Context) -> str:
    """What an interrupted command left behind and how to go on (``ctx.meta``, shared with the command's
    context, holds what the command said about it)."""
    explain = ctx.meta.get(AFTER_INTERRUPT)
    return explain() if explain else "stopped before the end"


def _output_kept() -> str:
    return "the output directory is as it was before this run (results are put in place only when complete)"


def _score_interrupted(output: str) -> str:
    from seqrec.batchinfer.ledger import recorded_parts

    recorded = recorded_parts(Path(output))
    if recorded is None:
        return f"nothing was written to '{output}'"
    return (f"{recorded[0]} of {recorded[1]} parts are finished in '{output}'; run the same command with --resume "
            "to score the rest")


@click.group(cls=SeqrecGroup)
@click.version_option(package_name="seqrec")
def main() -> None:
    """Sequential recommenders from training to nightly offline scoring."""


@main.group()
def data() -> None:
    """Import, generate and inspect interaction data."""


@data.command("import")
@click.option("--format", "fmt", type=click.Choice(IMPORT_FORMATS), required=True)
@click.argument("src", type=click.Path(exists=True, dir_okay=True))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="replace DST if it exists")
def data_import(fmt: str, src: str, dst: str, overwrite: bool) -> None:
    """Convert SRC into the canonical interactions Parquet DST.

    \b
    Formats (--format):
      parquet  a Parquet file or directory of parts (read at any depth, linked
               folders followed; _ and . names skipped) with columns user_id,
               item_id (integers or strings) and optionally timestamp
      recbole  a RecBole .inter file: a tab-separated header of 'name:type' fields
               (user_id:token, item_id:token, optional timestamp:float), then one
               row per interaction; quotes are read as pandas reads them, and an
               empty or NA-like user or item is refused as a null id
      sasrec   one 'user item' line per interaction (integers), in time order
      s3rec    one 'user item item ...' line per user (integers), items in time
               order; a user on two lines is refused, a user with no items is
               counted (users_without_items) and adds nothing

    Text files are UTF-8 (a byte-order mark is dropped) with \\n, \\r\\n or \\r
    line ends. Without a timestamp, the position in the user's sequence stands in.
    """
    from seqrec.data import convert_interactions

    _refuse_existing(dst, overwrite)
    click.echo(json.dumps(convert_interactions(src, fmt, dst)))


def _refuse_existing(dst: str, overwrite: bool) -> None:
    """DST names a file: not empty, not a directory (a trailing '/' included); one that exists is kept unless
    --overwrite, as it may be the data a checkpoint was trained on."""
    if not dst.strip() or dst.endswith(("/", "\\")) or Path(dst).is_dir():
        raise ConfigError(received_expected("DST", repr(dst), "the path of a Parquet file to write, not a directory"))
    if Path(dst).exists() and not overwrite:
        raise ConfigError(received_expected(f"DST '{dst}'", "a file that exists", "a new path, or --overwrite "
                                            "to replace it"))


@data.command("synth")
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--users", type=int, default=2000, show_default=True)
@click.option("--items", type=int, default=500, show_default=True)
@click.option("--repeat-prob", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-length", type=int, help="shortest user history  [default: min(5, max length)]")
@click.option("--max-length", type=int, help="longest user history  [default: min(50, items)]")
@click.option("--overwrite", is_flag=True, help="replace DST if it exists")
def data_synth(dst: str, overwrite: bool, **options) -> None:
    """Write a synthetic interactions Parquet with learnable sequential structure."""
    from seqrec.data import SynthConfig, synthesize_to

    cfg = SynthConfig(**options)
    _refuse_existing(dst, overwrite)
    click.echo(json.dumps(synthesize_to(cfg, dst)))


@data.command("stats")
@click.argument("path", type=click.Path(exists=True))
def data_stats(path: str) -> None:
    """Users, items, interactions, lengths and share of repeats of an interactions Parquet."""
    from seqrec.data import interaction_stats, read_interactions

    click.echo(json.dumps(interaction_stats(read_interactions(path)), indent=2))


@main.command("train")
@click.option("--data", "data_path", type=click.Path(exists=True), help="interactions Parquet  [required]")
@click.option("--out", type=click.Path(file_okay=False), help="checkpoint directory  [required]")
@click.option("--model", type=click.Choice(MODELS), default="sasrec", show_default=True)
@click.option("--head", type=click.Choice(HEADS), default="softmax", show_default=True)
@click.option("--cpr-variant", help="softmax-CPR partitions for --head cpr: softmax, C, CP or CPR:k1,k2,.. "
                                    "(k descending), each optionally +Mi  [default: CPR:100+Mi]")
@click.option("--cpr-recency/--no-cpr-recency", default=None,
              help="CPR pointer scores get a learned bias by distance back (on by default; off = the published head)")
@click.option("--cpr-pooling", type=click.Choice(CPR_POOLINGS),
              help="how an item's repeated history slots combine: logsumexp (counts occurrences, as a copy "
                   "distribution does) or mean (the published head)  [default: logsumexp]")
@click.option("--cpr-base-projection/--no-cpr-base-projection", default=None,
              help="--head cpr: the base partition scores f_S(q) . E (on by default, the published head); off = "
                   "the plain softmax head's h . E, without f_S and Mi")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--weight-decay", type=float)
@click.option("--max-length", type=int)
@click.option("--dim", type=int)
@click.option("--layers", type=int)
@click.option("--heads", type=int, help="attention heads (SASRec, HSTU, PCRec)")
@click.option("--ffn-multiplier", type=int, help="SASRec feed-forward width as a multiple of --dim")
@click.option("--dropout", type=float)
@click.option("--embedding-std", type=float,
              help="std of the item table's initialisation  [default: 1/sqrt(dim), unit-scale inputs]")
@click.option("--positions", type=click.Choice(POSITIONS))
@click.option("--l2-normalize/--no-l2-normalize", default=None,
              help="softmax head: score the cosine of hidden state and item embedding (pair with a small "
                   "--temperature)")
@click.option("--pc-steps", type=int, help="PCRec: predictive-coding steps per layer (0 = HSTU)")
@click.option("--pc-alpha", type=float, help="PCRec: Hebbian rate of theta, in [0, 2]")
@click.option("--pc-activation", type=click.Choice(PC_ACTIVATIONS), help="PCRec: f in mu = theta f(s)")
@click.option("--loss", type=click.Choice(LOSSES))
@click.option("--negatives", type=int, help="shared negatives per batch for --loss sampled")
@click.option("--exclude-history/--no-exclude-history", default=None,
              help="leave each user's own history out of the training softmax and the validation ranking "
                   "(for data without repeats, evaluated with eval --exclude-history)")
@click.option("--cpr-base-weight", type=float,
              help="--head cpr: add this weight x a softmax loss on the base partition alone, so the user's "
                   "own items stay its negatives (the history partitions take them away)  [default: 0]")
@click.option("--cpr-base-detach/--no-cpr-base-detach", default=None,
              help="--head cpr with --cpr-base-weight: the CPR loss takes the base logits as constants, so the "
                   "base partition learns from its own softmax loss only")
@click.option("--cpr-detach-partitions/--no-cpr-detach-partitions", default=None,
              help="--head cpr: the partitions other than the base read detached encoder states and item "
                   "vectors, so their loss trains only the head's own layers (with --no-cpr-base-projection "
                   "and --cpr-base-detach the encoder trains as a softmax model's, the head a second stage)")
@click.option("--train-windows", type=click.Choice(TRAIN_WINDOWS),
              help="all: each user's training items cut from the end into windows of --max-length + 1, every item "
                   "but the first a target once; last: the most recent window only (runs recorded before this "
                   "option)  [default: all]")
@click.option("--temperature", type=float)
@click.option("--patience", type=int, help="epochs without validation gain before stopping")
@click.option("--max-minutes", type=float, help="stop the selection run at the end of the first epoch that ends "
                                                 "past this much training time (--refit then trains the chosen number "
                                                 "of epochs, uncapped)")
@click.option("--eval-users", type=int, help="validate on a fixed random subset of users")
@click.option("--refit/--no-refit", default=None,
              help="after early stopping picks the epoch count, train a fresh model on every item but each "
                   "user's test item for that many epochs (what a production model should see)")
@click.option("--seed", type=int)
@click.option("--device", type=str, help="cpu, cuda or cuda:N (a GPU this machine has)  [default: cpu]")
@click.option("--precision", type=click.Choice(PRECISIONS), help="bf16 autocasts the matrix products")
@click.option("--print-config", is_flag=True, help="print the resolved configs as JSON and exit")
@click.option("--quiet", is_flag=True, help="no progress bar and no epoch lines (stderr); the result's JSON line "
                                            "stays")
def train_command(data_path: str, out: str, model: str, head: str, print_config: bool, quiet: bool,
                  **options) -> None:
    """Train a model and write a checkpoint directory."""
    from seqrec.devices import slow_bf16_warning
    from seqrec.training import train

    model_cfg, train_cfg = resolve_configs(model, head, options)
    if print_config:  # needs neither --data nor --out; the catalog size comes from the data
        click.echo(json.dumps({"model": {**model_cfg.to_dict(), "num_items": None}, "train": train_cfg.to_dict()},
                              indent=2))
        return
    for name, value in (("--data", data_path), ("--out", out)):
        if value is None:
            raise click.UsageError(f"Missing option '{name}'.")
    click.get_current_context().meta[AFTER_INTERRUPT] = _output_kept
    _warn(slow_bf16_warning(train_cfg.precision, train_cfg.device))
    ckpt = train(data_path, out, model_cfg, train_cfg, progress=not quiet)
    click.echo(json.dumps({"checkpoint": out, **{k: _headline(v) for k, v in ckpt.meta["metrics"].items()}}))


@main.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data_path", type=click.Path(exists=True), required=True)
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--exclude-history", is_flag=True, help="never rank an item the user already has")
@click.option("--by-repeat", is_flag=True, help="metrics separately for targets that repeat a history item and "
                                               "for new items, with the share of history items in the top 10")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def eval_command(checkpoint: str, data_path: str, split: str, exclude_history: bool, by_repeat: bool,
                 as_json: bool) -> None:
    """Full-ranking NDCG / HR / MRR at 1, 5, 10, 20, 50 of a checkpoint on a data split."""
    from seqrec.training import evaluate_checkpoint

    metrics = evaluate_checkpoint(checkpoint, data_path, split, exclude_history, by_repeat=by_repeat)
    _warn(_catalog_warning(metrics))
    _warn("this checkpoint was refit on every validation item (--refit): these are training targets, not a "
          "held-out measure; --split test is the held-out measure" if metrics["trained_on_targets"] else None)
    if as_json:
        click.echo(json.dumps(metrics))
        return
    if by_repeat:
        click.echo(_repeat_table(metrics))
    shown = {key: value for key, value in metrics.items()  # --by-repeat's groups are in the table above,
             if not isinstance(value, dict) and key != "trained_on_targets"}  # and trained_on_targets in the warning
    for key, value in shown.items():
        click.echo(f"{key:22s} {value:.4f}" if isinstance(value, float) else f"{key:22s} {value}")


def _warn(warning: str | None) -> None:
    if warning:
        click.echo(f"warning: {warning}", err=True)


def _catalog_warning(metrics: dict) -> str | None:
    """A line when most test targets are items the model never saw: most likely another data set than
    the one it was trained on (the metrics stand: those targets count as misses)."""
    users = metrics["all"]["users"] if "all" in metrics else metrics["users"]
    unknown = metrics["unknown_targets"]
    if users and unknown * 2 > users:
        return (f"{unknown} of {users} {metrics['split']} targets are items this model never saw (counted as "
                "misses): is this the data it was trained on?")
    return None


@main.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="bundle directory to write")
@click.option("--format", "format_", type=click.Choice(EXPORT_FORMATS), default="onnx", show_default=True)
@click.option("--top-k", type=int, default=10, show_default=True)
@click.option("--exclude-seen", is_flag=True, help="never return an item of the history window (the last --max-length items the model sees)")
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default="fp32", show_default=True)
@click.option("--pointer-op", type=click.Choice(POINTER_OPS), default="standard", show_default=True,
              help="CPR history scatter as standard ONNX ops, or as one seqrec-domain node")
@click.option("--max-length", type=int, help="history window of the graph (default: the model's)")
@click.option("--validation-users", type=int, help="random users checked against PyTorch  [default: 200, fewer "
              "where a long attention window makes each user slow: 16 at 8,192]")
@click.option("--catalog-block", type=int, default=CATALOG_BLOCK, show_default=True,
              help="rows of the item table (items + the padding row) the graph scores at once: a larger table is "
                   "scored block by block, so a batch holds (batch, block) scores, never (batch, items)")
def export_command(checkpoint: str, out: str, format_: str, **options) -> None:
    """Export a checkpoint to a scoring bundle (items -> top-K), validated against PyTorch."""
    from seqrec.config import ExportConfig
    from seqrec.exporter import export_checkpoint

    click.get_current_context().meta[AFTER_INTERRUPT] = _output_kept
    bundle = export_checkpoint(checkpoint, out, ExportConfig(format=format_, **options),
                               echo=lambda line: click.echo(line, err=True))  # the report; stdout: the result's JSON
    click.echo(json.dumps({"bundle": out, "valid": bundle.manifest["valid"],
                           "export_seconds": bundle.manifest["export_seconds"]}))


@main.command("score")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("--input", "input_", required=True, help="histories Parquet: a file, a directory of parts (read at any "
              "depth, as Spark or Hive partition them) or a glob")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="directory for the scored parts")
@click.option("--backend", type=click.Choice(SCORE_BACKENDS), help="[default: onnxruntime for a bundle, torch for a "
                                                                   "checkpoint]")
@click.option("--top-k", type=int,
              help="[default: the bundle's; 10 for a checkpoint, or its catalog's size if smaller]")
@click.option("--exclude-seen/--no-exclude-seen", default=None, help="never return an item of the history window "
                                                                     "[default: the bundle's; off for a checkpoint]")
@click.option("--batch-size", type=int, help="users per model call  [default: 512, fewer where a long window's "
                                              "attention scores would pass 1 GiB per layer]")
@click.option("--layout", type=click.Choice(SCORE_LAYOUTS), default="list", show_default=True)
@click.option("--engine", type=click.Choice(SCORE_ENGINES), default="local", show_default=True)
@click.option("--resume", is_flag=True, help="continue the job in --output: keep its finished parts")
@click.option("--address", help="Ray cluster to join (--engine ray) [default: start a local one]")
@click.option("--actors", type=int, help="Ray scorer actors (--engine ray)  [default: 2]")
@click.option("--threads", type=int, help="intra-op threads of the backend")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="torch backend: bf16 autocasts the matrix products")
@click.option("--print-config", is_flag=True, help="print the resolved config as JSON and exit")
@click.option("--quiet", is_flag=True, help="no progress bar, and no line per finished part without a terminal")
def score_command(model: str, input_: str, print_config: bool, quiet: bool, **options) -> None:
    """Score users' histories with a bundle or checkpoint MODEL: top-K per user, one output part per input part."""
    from seqrec.batchinfer import score
    from seqrec.batchinfer.model import model_kind
    from seqrec.config import ScoreConfig
    from seqrec.devices import slow_bf16_warning

    cfg = ScoreConfig(model=model, input=input_, progress=not quiet, **options)
    if print_config:  # as the job would run: the model decides what the options leave open
        from seqrec.batchinfer import resolved_score_config

        click.echo(json.dumps(resolved_score_config(cfg).to_dict(), indent=2))
        return
    click.get_current_context().meta[AFTER_INTERRUPT] = lambda: _score_interrupted(cfg.output)
    if model_kind(Path(model)) == "checkpoint":  # a bundle refuses --precision bf16 itself
        _warn(slow_bf16_warning(cfg.precision))  # the torch backend runs where torch finds a GPU, else here
    score(cfg, echo=click.echo)


@main.command("profile")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("--backends", type=CommaList(), default=",".join(SCORE_BACKENDS), show_default=True)
@click.option("--batch-sizes", type=CommaList(int, "integers"), default="1,32,256,1024", show_default=True)
@click.option("--catalog-sizes", type=CommaList(int, "integers"),
              help="items in the catalog; sizes other than the model's run it with a random item table of that size  "
                   "[default: the model's]")
@click.option("--precisions", type=CommaList(), default="fp32", show_default=True,
              help=f"any of {','.join(PROFILE_PRECISIONS)}; combinations a backend does not run are skipped")
@click.option("--length", type=int, help="histories of 1..L items  [default: the model's window]")
@click.option("--top-k", type=int,
              help="[default: the bundle's; 10 for a checkpoint, or its catalog's size if smaller]")
@click.option("--warmup", type=int, default=3, show_default=True, help="untimed calls per configuration")
@click.option("--iterations", type=int, help="timed calls per configuration")
@click.option("--seconds", type=float, help="timed seconds per configuration  [default: 2 unless --iterations]")
@click.option("--threads", type=int, help="intra-op threads of the backend")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="profile", show_default=True,
              help="directory for profile.json and profile.png")
@click.option("--print-config", is_flag=True, help="print the resolved config as JSON and exit")
def profile_command(model: str, print_config: bool, **options) -> None:
    """Latency p50/p99 and throughput of a bundle or checkpoint MODEL per backend, precision, catalog and batch size."""
    from seqrec.config import ProfileConfig
    from seqrec.profiling import profile

    cfg = ProfileConfig(model=model, **options)
    if print_config:  # as the sweep would run: the model decides what the options leave open
        from seqrec.profiling.sweep import resolved_profile_config

        click.echo(json.dumps(resolved_profile_config(cfg).to_dict(), indent=2))
        return
    profile(cfg, echo=click.echo, progress=lambda line: click.echo(line, err=True))  # stdout: the table, summary


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="demo", show_default=True)
@click.option("--model", type=click.Choice(MODELS), default="sasrec", show_default=True)
@click.option("--head", type=click.Choice(HEADS), default="cpr", show_default=True)
@click.option("--users", type=int, default=3000, show_default=True)
@click.option("--epochs", type=int, default=15, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo_command(out: str, **options) -> None:
    """Synthetic data -> train -> evaluate -> export -> score, on this machine, in a few minutes."""
    from seqrec.demo import DemoConfig, after_interrupt, run_demo

    click.get_current_context().meta[AFTER_INTERRUPT] = lambda: after_interrupt(out)
    run_demo(DemoConfig(out=out, **options), echo=click.echo)


def _repeat_table(metrics: dict) -> str:
    groups = ("all", "repeat", "new")
    keys = [key for key in metrics["all"] if key.startswith(("ndcg@", "hr@", "mrr@")) or key.endswith("share")]
    lines = [f"{'':22s}" + "".join(f"{g:>10s}" for g in groups), f"{'users':22s}" +
             "".join(f"{metrics[g]['users']:>10d}" for g in groups)]
    lines += [f"{key:22s}" + "".join(_cell(metrics[g][key]) for g in groups) for key in keys]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return f"{'n/a':>10s}" if value is None else f"{value:>10.4f}"


def _headline(metrics: dict) -> dict:
    return {key: round(metrics[key], 4) for key in ("ndcg@10", "hr@10") if key in metrics}


if __name__ == "__main__":
    main()
