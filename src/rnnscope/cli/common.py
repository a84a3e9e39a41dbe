"""What every subcommand shares: exit codes and `--section.key=value` overrides."""

from __future__ import annotations

from rnnscope.checks import number_text

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def parse_overrides(arguments: list[str], sections: tuple[str, ...]) -> dict[str, dict]:
    """`--section.key=value` arguments -> {section: {key: value}}, values typed by their
    look: true/false, integers, floats, else strings."""
    parsed: dict[str, dict] = {section: {} for section in sections}
    for argument in arguments:
        name, equals, text = argument.removeprefix("--").partition("=")
        section, dot, key = name.partition(".")
        if not (argument.startswith("--") and equals and dot and key):
            raise ValueError(f"unrecognized argument {argument!r}; settings are given as "
                             f"--section.key=value (sections: {', '.join(sections)})")
        if section not in parsed:
            raise ValueError(f"{name}: unknown section {section!r}; accepted: "
                             f"{', '.join(sections)}")
        parsed[section][key] = _typed(text)
    return parsed


def _typed(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return number_text(text)
