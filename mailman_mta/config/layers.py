"""The lazr.config layer stack: laying a layer, copying a stack, naming a parse problem."""

from __future__ import annotations

import configparser
import difflib
import io
import re

from lazr.config import Config
from lazr.config.interfaces import ConfigErrors

from ..errors import ConfigurationError


def as_is(text: str) -> str:
    return text


def _copy_of(lazr: Config) -> Config:
    """A `Config` with *lazr*'s schema and layers, to push on without changing *lazr*.

    (lazr.config's own objects cannot be copied with `copy.copy`, whose
    probing recurses through their ``__getattr__``.)
    """
    copy = Config.__new__(Config)
    copy.__dict__.update(vars(lazr))
    return copy


def _lay(lazr: Config, name: str, text: str) -> None:
    """Push *text* on *lazr* as layer *name*, raising `ConfigurationError` for what lazr.config finds wrong.

    lazr.config takes only ASCII text, recording anything else as an error
    of the layer while keeping the values; mailman-mta takes any text, so
    those errors are not ours (each key's type checks its value).
    """
    try:
        lazr.push(name, text)
    except OSError as error:
        raise ConfigurationError(
            f"config layer {name!r}: [meta] extends names {error.filename!r}, which cannot be read: {error.strerror}",
            layer=name,
            section="meta",
            key="extends",
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"config layer {name!r}: [meta] extends names a file that is not UTF-8 text (byte {error.start} is not)",
            layer=name,
            section="meta",
            key="extends",
        ) from None
    try:
        lazr.validate()
    except ConfigErrors as error:
        problems = [str(problem) for problem in error.errors if not isinstance(problem, UnicodeError)]
        if problems:
            raise ConfigurationError(f"config layer {name!r} is not valid: {'; '.join(problems)}", layer=name) from None


def _lay_again(old: Config, new: Config) -> None:
    """Push *old*'s layers onto *new*, whose schema plugins have changed.

    Each lazr.config layer holds every section's effective values, so each
    is laid again whole, under its name, keeping the sections *new*'s
    schema has: those of a plugin no longer known are dropped.
    """
    schema = new.schema
    for data in reversed(old.overlays[:-1]):
        layer = configparser.RawConfigParser(interpolation=None)
        layer.optionxform = str  # type: ignore[assignment,method-assign]
        for section in data:
            category, _, rest = section.name.partition(".")
            if section.name in schema or (rest and f"{category}.master" in schema):
                layer[section.name] = {key: section[key] for key in section.schema}
        text = io.StringIO()
        layer.write(text)
        new.push(data.name, text.getvalue())


def _parse_problem(error: configparser.Error) -> str:
    """What configparser found wrong, without repeating the text of the line.

    The line may hold a password (``smtp_pass s3cret``, with the colon
    forgotten), so only its number, and the word it starts with, are shown.
    """
    if isinstance(error, configparser.MissingSectionHeaderError):
        return f"line {error.lineno} comes before any [section] header"
    if isinstance(error, configparser.ParsingError):
        problems = []
        for number, line in error.errors:
            word = re.split(r"[\s:=]", str(line).strip("'\" "), maxsplit=1)[0]
            problems.append(f"line {number} (starting {word!r}) is not 'key: value'")
        return "; ".join(problems)
    return error.message.splitlines()[0]


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known: {', '.join(sorted(choices))}"
