"""The HTML report of a run or a study directory: one self-contained file.

It reads only the directory (`data.py`), so any run, old, remote or killed half way,
can be rendered again; each section says which data it needed when that is missing.
The file embeds its figures and refers to nothing on the network, so it can be mailed
or archived as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnnscope.files import atomic_target, check_file_target
from rnnscope.report.data import kind_of, load_run, load_study
from rnnscope.report.page import GENERATOR, Page
from rnnscope.report.run_page import run_page
from rnnscope.report.study_page import study_page

REPORT_FILE = "report.html"


@dataclass
class Report:
    kind: str  # "run" or "study"
    source: Path
    html: str
    runs: int
    figures: int  # <img> elements embedded

    def write(self, out: str | Path | None = None) -> Path:
        """Write the page atomically (a failure leaves no half-written file) to `out`,
        by default report.html in the directory it describes."""
        path = check_report_target(out if out is not None else self.source / REPORT_FILE)
        try:
            with atomic_target(path) as temporary:
                temporary.write_text(self.html, encoding="utf-8")
        except OSError as error:
            raise ValueError(f"out: cannot write {path} ({error.strerror or error})") from None
        return path


def check_report_target(path: str | Path) -> Path:
    """`path` as a place to write a report: a new file, or a report written before (a
    directory, a FIFO, a device or a file rnnscope did not write is refused in one line:
    writing the page replaces what is there)."""
    return check_file_target("out", path, ours=is_report)


def is_report(path: Path) -> bool:
    """Whether the file at `path` is a report rnnscope wrote (it has our generator tag
    near its start, or, from before the tag, a title that says so)."""
    try:
        with path.open("rb") as file:
            start = file.read(4096)
    except OSError:
        return False
    return GENERATOR.encode() in start or b"<title>rnnscope " in start


def render_report(directory: str | Path) -> Report:
    """The report of a study directory (study.db) or a run directory (config.yaml);
    a one-line ValueError for anything else."""
    directory = Path(directory)
    kind = kind_of(directory)
    page = Page()
    if kind == "study":
        study = load_study(directory)
        title = f"rnnscope study: {directory.resolve().name}"
        study_page(study, page)
        runs = len(study.rows)
    else:
        run = load_run(directory)
        title = f"rnnscope run: {run.name}"
        run_page(run, page, level=1)
        runs = 1
    return Report(kind, directory, page.render(title), runs, page.figures)


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Render the report of `directory` and write it to `out` (default
    DIRECTORY/report.html); returns the path written."""
    return render_report(directory).write(out)
