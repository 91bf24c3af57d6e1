"""The `lowrank-bench` command line: run, report, validate, methods, publish."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

RESULTS_ROOT = Path("results")
REPORTS_ROOT = Path("reports")


def _suite(args) -> tuple:
    from bench.suite import load_suite

    suite, path = load_suite(args.suite)
    only = getattr(args, "only", None)
    if only:
        from bench.slice import SliceError, slice_suite
        from bench.suite import SuiteError

        try:
            suite = slice_suite(suite, only)
        except SliceError as exc:
            raise SuiteError(f"{path}: {exc}") from None
    return suite, path


def cmd_validate(args) -> int:
    from bench.cells import expand

    suite, path = _suite(args)
    cells = expand(suite)
    print(f"{path}: valid suite '{suite.name}' with {len(cells)} cells "
          f"({len(suite.models)} models x {len(suite.datasets)} datasets x "
          f"{len({c.seed for c in cells})} seeds)")
    return 0


def cmd_run(args) -> int:
    from bench.runner import format_plan, plan_suite, run_suite

    suite, path = _suite(args)
    results = Path(args.results or RESULTS_ROOT / suite.name)
    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    if suite.slice:
        print(f"slice of suite '{suite.name}': {suite.slice}")
    if args.dry_run:
        print(format_plan(plan_suite(suite, results, args.retry_failed), suite, args.jobs))
        if not args.no_probe:
            from bench.estimate import estimate_suite, format_estimate

            est = estimate_suite(suite, results, args.data_root, retry_failed=args.retry_failed,
                                 share_timing=not args.time_each_cell)
            if est.cells or est.missing:
                print(format_estimate(est, args.jobs, args.executor))
        return 0
    from bench.preflight import PreflightError, preflight

    try:
        preflight(suite, results, args.data_root, retry_failed=args.retry_failed, say=print)
    except PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_suite(suite, results, data_root=args.data_root,
                            retry_failed=args.retry_failed, executor=args.executor,
                            jobs=args.jobs, share_timing=not args.time_each_cell)
    except RuntimeError as exc:
        if "executor needs Ray" not in str(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.computed:
        na = f"{summary.not_applicable} not applicable, " if summary.not_applicable else ""
        print(f"done: {summary.ok} ok, {na}{len(summary.failed)} failed, {summary.skipped} reused, "
              f"{summary.seconds:.1f}s; records in {results}/cells")
        if summary.seconds > 0:
            if summary.jobs == 1:
                share = max(0.0, 1.0 - summary.work_s / summary.seconds)
                print(f"time in training, compression, evaluation and timing: "
                      f"{summary.work_s:.1f}s of {summary.seconds:.1f}s wall "
                      f"(harness overhead {100 * share:.1f}%)")
            else:
                busy = ", ".join(f"{s:.1f}s" for s in summary.busy_s.values())
                print(f"time in training, compression, evaluation and timing: "
                      f"{summary.work_s:.1f}s summed over {summary.jobs} workers and the "
                      f"driver, {summary.seconds:.1f}s wall ({summary.timing_phase_s:.1f}s of "
                      f"it the driver's timing phase); busy per worker: {busy}")
    from bench.cells import expand
    from bench.store import ResultStore

    store = ResultStore(results)
    if summary.stale_locks:
        print(f"removed {summary.stale_locks} stale lock file(s) of processes that are gone")
    if summary.environment:
        print(f"{len(summary.environment)} cell(s) stopped by the environment, not recorded "
              "(fix it and run the same command again):")
        for line in summary.environment:
            print(f"  {line}")
    if summary.failed:
        print(f"{len(summary.failures)} failed cell(s) (rerun only these with --retry-failed):")
        for f in summary.failures:
            print(f"  {f['cell']}: {f['type']}: {f['message']}  [{f['cell_id']}]")
        return 1
    missing = [c for c in expand(suite) if store.load(c.id) is None]
    if missing:
        print(f"{len(missing)} cell(s) have no record yet (their worker was lost, or another "
              "run still holds them); run the same command again to compute them")
        return 1
    return 0


def cmd_report(args) -> int:
    from bench.manifest import write_manifest
    from bench.record import RecordError
    from bench.report import build_report

    suite, path = _suite(args)
    results = Path(args.results or RESULTS_ROOT / suite.name)
    out = Path(args.out or REPORTS_ROOT / suite.name)
    write_manifest(suite, results)  # what the suite expects, so the report needs no suite
    try:
        written = build_report(results, out)
    except RecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report for '{suite.name}' written to {out}: " + ", ".join(p.name for p in written))
    if args.readme:
        from bench.report import update_readme

        try:
            changed = update_readme(Path(args.readme), suite.name, out)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.readme}: leaderboard block {'updated' if changed else 'unchanged'}")
    return 0


def _write_missing_manifests(reports_root: Path, results_root: Path) -> list[str]:
    """Records without a manifest (a fresh clone commits only cells/): write it from the
    suite file of the same name, as `report` does, so publishing can check the report.

    Returns a problem per suite whose file no longer expands to any cell it has a
    record of (edited since its records were made): a report rendered from that
    file would drop every record, so its manifest is not written.
    """
    import json

    from bench.cells import expand
    from bench.manifest import FILENAME, write_manifest
    from bench.report.site import suite_reports
    from bench.suite import SUITES_DIR, SuiteError, load_suite

    problems = []
    for d in suite_reports(reports_root):
        results, suite_file = results_root / d.name, SUITES_DIR / f"{d.name}.yaml"
        if not (results / "cells").is_dir() or (results / FILENAME).exists() \
                or not suite_file.exists():
            continue
        try:
            suite, _ = load_suite(suite_file)
        except SuiteError:
            continue  # publishing then names the report it cannot check
        if suite.name != d.name:
            continue
        records = sorted((results / "cells").glob("*.json"))
        ids = {c.id for c in expand(suite)}
        if records and not ids & {p.stem for p in records}:
            hashes = set()
            for p in records:
                try:
                    hashes.add(str(json.loads(p.read_text()).get("suite_hash")))
                except (OSError, ValueError, AttributeError):
                    continue
            problems.append(
                f"{d}: {results} has {len(records)} records and no {FILENAME}, and "
                f"suites/{suite_file.name} has changed since they were made (it hashes to "
                f"{suite.hash()} and expands to {len(ids)} cells, none of them recorded; the "
                f"records come from suite hash {', '.join(sorted(hashes)) or 'unknown'}): a "
                f"report rendered from it would drop every record. Publish where the run's "
                f"{FILENAME} is, or rerun the suite; not publishing a report that cannot be "
                "checked against its records")
            continue
        write_manifest(suite, results)
    return problems


def cmd_publish(args) -> int:
    """Gather every reports/<suite>/ into one static site (optionally refresh the README)."""
    from bench.report import publish_site, update_readme
    from bench.report.readme import markers
    from bench.report.site import StaleReportError

    root = Path(args.reports or REPORTS_ROOT)
    results_root = Path(args.results or RESULTS_ROOT)
    problems = _write_missing_manifests(root, results_root) if root.is_dir() else []
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    try:
        index = publish_site(root, Path(args.out) if args.out else None,
                             include_examples=args.include_examples,
                             results_root=results_root)
    except (FileNotFoundError, StaleReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"site written to {index.parent} (open {index})")
    if args.readme:
        text = Path(args.readme).read_text()
        for suite_dir in sorted(d for d in root.iterdir() if (d / "summary.md").exists()):
            if markers(suite_dir.name)[0] in text:
                changed = update_readme(Path(args.readme), suite_dir.name, suite_dir)
                print(f"{args.readme}: '{suite_dir.name}' block "
                      f"{'updated' if changed else 'unchanged'}")
    return 0


def cmd_verify(args) -> int:
    """Recompute a slice of committed records in an empty directory and compare them."""
    from bench.preflight import PreflightError
    from bench.verify import RecomputeStopped, format_checks, verify_suite

    suite, path = _suite(args)
    if not suite.slice:
        print("error: verify recomputes cells from scratch; name a slice with --only "
              "(e.g. --only model=mlp,seed=0,method=svd)", file=sys.stderr)
        return 2
    results = Path(args.results or RESULTS_ROOT / suite.name)
    print(f"recomputing {suite.slice} of '{suite.name}' from scratch and comparing with "
          f"{results}/cells")
    try:
        checks = verify_suite(suite, results, data_root=args.data_root,
                              workdir=Path(args.keep) if args.keep else None)
    except (PreflightError, RecomputeStopped) as exc:  # as `run` does: exit 2, nothing compared
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_checks(checks))
    if not any(c.status != "no committed record" for c in checks):
        print("error: no cell of this slice has a committed record to compare with",
              file=sys.stderr)
        return 2
    return 1 if any(c.failed for c in checks) else 0


def cmd_methods(args) -> int:
    from bench.plugins import get_method, method_names

    for name in method_names():
        cls = get_method(name)
        summary = cls.description or (cls.__doc__ or "").strip().split("\n")[0]
        print(f"{name}  [{cls.kind}]  {summary}")
        for field, info in cls.Params.model_fields.items():
            default = info.get_default(call_default_factory=True)
            desc = f"  {info.description}" if info.description else ""
            print(f"    {field} = {default!r}{desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowrank-bench",
        description="Benchmark neural-network compression methods and render leaderboards.")
    parser.add_argument("-v", "--verbose", action="store_true", help="per-epoch training logs")
    sub = parser.add_subparsers(dest="command", required=True)

    def suite_arg(p):
        p.add_argument("suite", help="suite name under suites/ (quick) or a path to a YAML file")

    p = sub.add_parser("run", help="run a suite's cells that have no record yet")
    suite_arg(p)
    p.add_argument("--results", help="results directory (default results/<suite>)")
    p.add_argument("--data-root", help="where datasets live (default $LOWRANK_BENCH_DATA)")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as failed")
    p.add_argument("--jobs", "-j", type=int, default=1,
                   help="groups run at once: worker processes (local) or Ray tasks (ray)")
    p.add_argument("--executor", choices=["serial", "local", "ray"],
                   help="where groups run (default: serial for --jobs 1, else local); ray "
                        "connects to $RAY_ADDRESS or starts a local Ray instance")
    p.add_argument("--time-each-cell", action="store_true",
                   help="time every cell; by default a row's architecture is timed once on "
                        "this machine and its other seeds and recovery budgets reuse the figures")
    p.add_argument("--only", metavar="KEY=VALUE,...",
                   help="run a slice: keys model, dataset, seed, method, target; several values "
                        "with |, e.g. --only model=resnet18-cifar,seed=0,method=svd|prune-l1")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells, which are done, and a time estimate from a short "
                        "probe of each model on this machine; run nothing")
    p.add_argument("--no-probe", action="store_true",
                   help="with --dry-run: only the estimate from earlier records, no probe")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="render a suite's leaderboard from its records")
    suite_arg(p)
    p.add_argument("--results", help="results directory (default results/<suite>)")
    p.add_argument("--out", help="output directory (default reports/<suite>)")
    p.add_argument("--only", metavar="KEY=VALUE,...",
                   help="report a slice of the suite (same keys as run --only)")
    p.add_argument("--readme", help="also write the summary between this Markdown file's "
                   "<!-- leaderboard:<suite>:start/end --> markers")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("publish", help="gather every reports/<suite>/ into a static site")
    p.add_argument("--reports", help="reports root (default reports)")
    p.add_argument("--results", help="results root (default results): a report whose records "
                   "under <results>/<suite>/ changed since it was rendered is re-rendered first")
    p.add_argument("--out", help="site directory (default <reports>/site)")
    p.add_argument("--readme", help="also refresh the leaderboard blocks of this Markdown file")
    p.add_argument("--include-examples", action="store_true",
                   help="rank example suites (digits) with the others in the site's ranking")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("validate", help="check a suite file without running anything")
    suite_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("verify", help="recompute committed cells from scratch and compare "
                       "top-1, MACs, params and ranks (on another CPU or torch build, top-1 "
                       "against the committed seed spread)")
    suite_arg(p)
    p.add_argument("--only", metavar="KEY=VALUE,...", required=True,
                   help="the cells to recompute (same keys as run --only)")
    p.add_argument("--results", help="committed records (default results/<suite>)")
    p.add_argument("--data-root", help="where datasets live (default $LOWRANK_BENCH_DATA)")
    p.add_argument("--keep", metavar="DIR", help="recompute into DIR and keep it (default: a "
                   "temporary directory, removed afterwards)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("methods", help="list registered methods and their parameters")
    p.set_defaults(func=cmd_methods)
    return parser


def configure_logging(verbose: bool) -> None:
    """Our progress at INFO (DEBUG with -v); other libraries only from WARNING on.

    The ONNX exporter's passes log every graph rewrite at INFO ("Removed 138 unused
    nodes"), hundreds of lines per timing phase that would bury the run's own."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("lowrank_bench").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from bench.suite import SuiteError

    try:
        return args.func(args)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `lowrank-bench methods | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    except KeyboardInterrupt:
        print("interrupted: cells that finished keep their records; a rerun continues with "
              "the others", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
