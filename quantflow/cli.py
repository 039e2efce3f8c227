"""``qf``: validate metadata, generate the dbt project, run stages, list artifacts."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _cmd_validate(args: argparse.Namespace) -> int:
    from quantflow.metadata import get_metadata_manager

    manager = get_metadata_manager(args.project_dir, strict=args.strict)
    issues = manager.validate()
    if issues:
        print(f"{len(issues)} error{'s' if len(issues) != 1 else ''} in project metadata:", file=sys.stderr)
        for issue in issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    md = manager.load_all()
    feeds = ", ".join(f"{f.name} ({f.kind})" for f in md.project.ingest.enabled_feeds) or "none"
    print(f"OK: project {md.name}: {len(md.symbols)} symbols, enabled feeds: {feeds}, engine {md.engine}")
    return 0


def _cmd_dbt_generate(args: argparse.Namespace) -> int:
    from quantflow.metadata import get_metadata_manager
    from quantflow.transform.generator import DBTProjectGenerator

    md = get_metadata_manager(args.project_dir).load_all()
    written = DBTProjectGenerator(md).generate(force=args.force)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("dbt project is up to date (use --force to rewrite every generated file)")
    return 0


def _cmd_lake(args: argparse.Namespace) -> int:
    import quantflow.lake as qlake

    lake = qlake.open_lake(args.project_dir)
    if args.lake_command == "upgrade":
        converted = lake.upgrade_layout()
        print(f"lake {lake.store.url(lake.store.path())}: {converted} partitions converted to the hive layout"
              if converted else "lake is in the current layout: nothing to convert")
        return 0
    for table in lake.tables():
        parts = lake.partitions(table)
        print(f"{table}: {len(parts)} partitions ({lake.partition_width(table)}), {lake.url(table)}")
    return 0


def _not_printed_elsewhere(record: logging.LogRecord) -> bool:
    """Dagster's console logger prints its own records (and dagster-dbt's); SQLAlchemy's migrations of the
    instance are noise below a warning."""
    name = record.name.split(".")[0]
    return name != "dagster" and (record.levelno >= logging.WARNING or name not in ("alembic", "sqlalchemy"))


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.logging import RichHandler

    from quantflow.metadata import get_metadata_manager
    from quantflow.pipeline.console import ConsoleReporter, stdout_console
    from quantflow.pipeline.instance import ensure_dagster_home
    from quantflow.pipeline.runner import BatchPipelineRunner

    root = Path(args.project_dir).resolve()
    ensure_dagster_home(root)
    console = stdout_console()
    # log records go through the console that draws the progress bars, so they print above them
    handler = RichHandler(console=console, show_time=False, show_path=False,
                          level=logging.INFO if args.verbose else logging.WARNING)
    handler.addFilter(_not_printed_elsewhere)
    logging.getLogger().handlers[:] = [handler]
    md = get_metadata_manager(root).load_all()
    runner = BatchPipelineRunner(md, reporter=ConsoleReporter(console, verbose=args.verbose, quiet=args.quiet))
    symbols = args.symbols.split(",") if args.symbols else None
    console.print(f"QuantFlow {md.name}: stage {args.stage}, {args.start or 'yesterday'} .. {args.end or 'today'}, "
                  f"{len(symbols) if symbols else len(md.symbols)} symbols, {args.write_mode}", markup=False,
                  soft_wrap=True)
    result = runner.run(
        stage=args.stage, symbols=symbols, start_date=args.start, end_date=args.end, write_mode=args.write_mode,
        max_concurrency=args.max_concurrency, batch_days=args.batch_days, skip_test=not args.with_tests,
        log_level="DEBUG" if args.verbose else "CRITICAL",  # progress, warnings and failures: summary
    )
    console.print(result.summary(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"Dagster instance: {runner.instance().root_directory} (`make dev` to browse runs)", markup=False,
                  soft_wrap=True)
    return 0 if result.success else 1


def _cmd_artifacts(args: argparse.Namespace) -> int:
    from quantflow.metadata import get_metadata_manager
    from quantflow.storage.project import project_artifacts

    md = get_metadata_manager(args.project_dir).load_all()
    folder = f"models/{args.model}" if args.model else args.stage
    for url in project_artifacts(md, folder).list(args.prefix):
        print(url)
    return 0


def _cmd_image_build(args: argparse.Namespace) -> int:
    from quantflow.deploy.image import ImageBuildError, build

    root = Path(args.project_dir).resolve()
    if not (root / "docker" / "Dockerfile").is_file():
        print(f"error: {root / 'docker' / 'Dockerfile'} not found: run from the repository root", file=sys.stderr)
        return 1
    try:
        tag = build(root, tag=args.tag, offline=args.offline, base=args.base)
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"built {tag}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qf", description="QuantFlow command line")
    parser.add_argument("--project-dir", default=".", help="project directory (holds project_metadata/)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="details: every shard and dbt line, Dagster's events (qf -v run ...)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check project_metadata/*.yaml; exit 1 on errors")
    p.add_argument("--strict", action="store_true", help="also reject keys the schema does not define")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("dbt", help="dbt project helpers")
    dbt_sub = p.add_subparsers(dest="dbt_command", required=True)
    g = dbt_sub.add_parser("generate", help="write dbt_project/ from the metadata where missing or outdated")
    g.add_argument("--force", action="store_true", help="rewrite every generated file")
    g.set_defaults(func=_cmd_dbt_generate)

    from quantflow.pipeline.stages import STAGE_NAMES

    p = sub.add_parser("run", help="run a stage (or all) as in-process Dagster jobs on the project's instance")
    p.add_argument("--stage", default="all", choices=["all", *STAGE_NAMES])
    p.add_argument("--start", help="first date, YYYY-MM-DD (default yesterday)")
    p.add_argument("--end", help="last date, YYYY-MM-DD (default today)")
    p.add_argument("--symbols", help="comma-separated subset of the project's symbols")
    p.add_argument("--write-mode", default="skip_if_exists", choices=["skip_if_exists", "overwrite", "append"])
    p.add_argument("--max-concurrency", type=int, default=4)
    p.add_argument("--batch-days", type=int, default=None)
    p.add_argument("--with-tests", action="store_true", help="run dbt tests (shown as asset checks)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, only warnings and the final summary")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="details: every shard and dbt line, Dagster's events")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("lake", help="the project's lake tables")
    lake_sub = p.add_subparsers(dest="lake_command", required=True)
    lake_sub.add_parser("tables", help="list the tables, their partitions and locations").set_defaults(func=_cmd_lake)
    lake_sub.add_parser("upgrade", help="convert tables of the earlier symbol=/date= layout in place"
                        ).set_defaults(func=_cmd_lake)

    p = sub.add_parser("artifacts", help="list artifacts in the blob store")
    p.add_argument("prefix", nargs="?", default="", help="e.g. data_extractor_")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--model", help="a model's artifacts (its folder models/<name>/)")
    where.add_argument("--stage", choices=["portfolio", "backtest", "reports"],
                       help="a research stage's artifacts (its folder), e.g. --stage reports plot_")
    p.set_defaults(func=_cmd_artifacts)

    p = sub.add_parser("image", help="the deployment's Docker image (docker/Dockerfile)")
    image_sub = p.add_subparsers(dest="image_command", required=True)
    b = image_sub.add_parser("build", help="docker build the project image (README: Deploy)")
    b.add_argument("--tag", default="quantflow:latest")
    b.add_argument("--offline", action="store_true",
                   help="no image registry: a debootstrapped Debian base and a local wheelhouse")
    b.add_argument("--base", help="base image (default python:3.11-slim; offline: quantflow-base:bookworm)")
    b.set_defaults(func=_cmd_image_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except Exception as exc:  # the CLI prints the message, not a traceback, for expected failures
        from quantflow.compute.stage import StageError
        from quantflow.metadata import MetadataError
        from quantflow.storage.lake import LakeLayoutError

        if isinstance(exc, (MetadataError, StageError, ValueError, FileNotFoundError, LakeLayoutError)):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


def console_main() -> None:
    """The ``qf`` command: ``main``, then the process ends once the exit handlers have run, without tearing
    down every module it imported (Dagster, dbt, PyTorch, vectorbt, riskfolio-lib: about 2 s on 2 cores after
    a whole run, with nothing left to write)."""
    import atexit
    import os
    import threading

    code = main()
    for thread in threading.enumerate():  # as at a normal exit: threads still working finish first
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # logging's flush, Ray's shutdown, Dagster's and dbt's handlers, as at a normal exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
