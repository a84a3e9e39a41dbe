"""`rnnscope report`: render a run or a study directory as one self-contained HTML page."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rnnscope.cli.common import EXIT_OK

EXAMPLES = """\
examples:
  # one run: its diagnosis in words, heat map of the gradient flow, curves, config
  rnnscope train --cell rnn_tanh --seq-len 100 --out runs/tanh
  rnnscope report runs/tanh                  # writes runs/tanh/report.html

  # a study: sortable comparison table, grid of metric and reach, one section per run
  rnnscope study adding.yaml --out studies/adding
  rnnscope report studies/adding --out adding-report.html

  # machine-readable: where it was written and what it holds
  rnnscope report runs/tanh --json

The page embeds its figures and needs no network: mail it or archive it as is.
A section whose data is missing (a run killed early) shows a note instead.
--out replaces only a report written before: a directory, a FIFO, a device, a link
or any other file is refused. Exit codes: 0 done, 2 bad input (not a run or study
directory, unwritable --out).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write an HTML report of a run or a study",
        description="Render a run directory (config.yaml) or a study directory (study.db) "
        "as one self-contained HTML file: the diagnosis in words, the gradient-flow heat "
        "map, loss and metric curves, clipping, the Lyapunov spectrum and, for a study, a "
        "sortable comparison of every run.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, metavar="DIR",
                        help="a run directory or a study directory")
    parser.add_argument("--out", type=Path, default=None,
                        help="the HTML file to write (default: DIR/report.html)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnscope.report.data import kind_of
    from rnnscope.report.render import (  # imports matplotlib
        REPORT_FILE,
        check_report_target,
        render_report,
    )

    kind_of(args.directory)  # a run or a study directory, else a one-line ValueError
    # Checked before the slow part, so bad input fails fast; Report.write checks again.
    out = check_report_target(args.out if args.out is not None
                              else args.directory / REPORT_FILE)
    report = render_report(args.directory)
    path = report.write(out)
    if args.json:
        print(json.dumps({"report": str(path), "kind": report.kind, "runs": report.runs,
                          "figures": report.figures}, indent=2))
    else:
        runs = f"{report.runs} run{'s' if report.runs != 1 else ''}"
        print(f"{report.kind} report of {args.directory}: {runs}, {report.figures} figures")
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
        print(f"open {path} in a browser")
    return EXIT_OK


__all__ = ["register", "run"]
