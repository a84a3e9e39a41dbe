"""What every subcommand shares: exit codes and `--section.key=value` overrides."""

from __future__ import annotations

from rnnscope.checks import number_text, shown
from rnnscope.files import WriteError, reason

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_LINE = 1000  # characters of an error line: the validators quote values short already


def error_line(error: BaseException) -> str:
    """An error as the one line the command prints: its first line, an OSError as the
    file it concerns and why (not "[Errno 36] ..."), cut to MAX_LINE characters."""
    if isinstance(error, OSError) and not isinstance(error, WriteError):
        text = f"{error.filename}: {reason(error)}" if error.filename else reason(error)
    else:
        text = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    return cut(text)


def cut(text: str) -> str:
    """`text` on one line of at most MAX_LINE characters."""
    text = " ".join(text.splitlines())
    return text if len(text) <= MAX_LINE else f"{text[:MAX_LINE]}... (cut)"


def parse_overrides(arguments: list[str], sections: tuple[str, ...]) -> dict[str, dict]:
    """`--section.key=value` arguments -> {section: {key: value}}, values typed by their
    look: true/false, integers, floats, else strings."""
    parsed: dict[str, dict] = {section: {} for section in sections}
    for argument in arguments:
        name, equals, text = argument.removeprefix("--").partition("=")
        section, dot, key = name.partition(".")
        if not (argument.startswith("--") and equals and dot and key):
            raise ValueError(f"unrecognized argument {shown(argument)}; settings are given as "
                             f"--section.key=value (sections: {', '.join(sections)})")
        if section not in parsed:
            raise ValueError(f"{name}: unknown section {shown(section)}; accepted: "
                             f"{', '.join(sections)}")
        parsed[section][key] = _typed(text)
    return parsed


def _typed(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return number_text(text)
