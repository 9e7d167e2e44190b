"""Flags owns turning config fields into flags and YAML keys, each declared once: help, default, check.

A field made with :func:`flag` carries everything its command-line flag needs: the help text,
the ``--help`` section, argparse's type/choices/nargs, and a check of its value. The flag's name
is the field's name with dashes (``batch_size`` is ``--batch-size``), the YAML key is either
spelling, and :func:`add_flags` / :func:`check_fields` / :func:`from_args` work for every
component config, the core's and the strategies' alike.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from common.base.errors import UserError


class ConfigError(UserError):
    """A bad flag or config-file value."""


@dataclass(frozen=True)
class Flag:
    """What a config field needs to be a flag; ``check(value)`` returns what is wrong, or None."""

    help: str
    section: str | None  # the --help section; None: the parser's own options
    check: Callable[[Any], str | None] | None = None
    argparse: dict[str, Any] = field(default_factory=dict)
    opt_in: str | None = None  # only in parsers that ask for this group (``core_parser(kfold=True)``)
    negated: bool = False  # a True default turned off by --no-<name>


def flag(default: Any, help: str, *, section: str | None, check: Callable[[Any], str | None] | None = None,
         opt_in: str | None = None, negated: bool = False, **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also the flag ``--<name-with-dashes>``."""
    spec = Flag(help, section, check, argparse_kwargs, opt_in, negated)
    if isinstance(default, list | tuple):
        return field(default=tuple(default), metadata={"flag": spec})
    return field(default=default, metadata={"flag": spec})


def flag_name(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def flags_of(cls) -> list[tuple[dataclasses.Field, Flag]]:
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(cls) if "flag" in f.metadata]


# Checks shared by many flags: each returns what is wrong with the value, or None.
def at_least(low: int, show: bool = True) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is not None and v < low:
            return f"must be at least {low}" + (f", got {v}" if show else "")
        return None
    return check


def one_of(choices: Iterable[str]) -> Callable[[Any], str | None]:
    choices = tuple(choices)
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def check_fields(cfg: Any) -> None:
    """ConfigError for the first field whose own check fails: ``--name <what is wrong>``."""
    for f, spec in flags_of(type(cfg)):
        problem = spec.check(getattr(cfg, f.name)) if spec.check else None
        if problem is None and "choices" in spec.argparse:
            problem = one_of(spec.argparse["choices"])(getattr(cfg, f.name))
        if problem is not None:
            raise ConfigError(flag_name(f.name) + ("" if problem.startswith(":") else " ") + problem)


def add_flags(parser: argparse.ArgumentParser, cls, defaults: dict[str, Any] | None = None,
              sections: dict[str, Any] | None = None, opt_in: Iterable[str] = ()) -> None:
    """Add the flags of config class ``cls`` to ``parser``, in their sections (created in the
    order of ``sections`` when given, else as met); ``defaults`` override the fields' own.
    ``opt_in``: the groups of opt-in flags this parser shows (``"kfold"``, ``"data"``)."""
    sections = {} if sections is None else sections
    for f, spec in flags_of(cls):
        if spec.opt_in and spec.opt_in not in opt_in:
            continue
        if spec.section is None:
            sections[None] = parser
        elif sections.get(spec.section) is None:
            sections[spec.section] = parser.add_argument_group(spec.section)
        default = (defaults or {}).get(f.name, f.default)
        if isinstance(default, tuple):
            default = list(default)
        group = sections[spec.section]
        if spec.negated:
            group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name,
                               action="store_false", help=spec.help)
        elif isinstance(f.default, bool):
            group.add_argument(flag_name(f.name), action="store_true", default=default,
                               help=spec.help, **spec.argparse)
        else:
            group.add_argument(flag_name(f.name), default=default, help=spec.help, **spec.argparse)


def values_of(cls, source: Any) -> dict[str, Any]:
    """The flag values of ``cls``'s fields found in ``source`` (a Namespace or a mapping)."""
    get = source.get if isinstance(source, dict) else lambda k, d: getattr(source, k, d)
    missing = object()
    out = {}
    for f, _ in flags_of(cls):
        value = get(f.name, missing)
        if value is not missing:
            out[f.name] = tuple(value or ()) if isinstance(f.default, tuple) else value
    return out


class FlagConfig:
    """A component config whose fields are flags: ``add_flags`` on a parser, ``from_args``
    back, ``validate`` (each field's check, then the component's own ``check``)."""

    def check(self) -> None:
        """Checks across fields; the single fields' are declared with them."""

    def validate(self) -> None:
        check_fields(self)
        self.check()

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        add_flags(parser, cls)

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        cfg = cls(**values_of(cls, args))
        cfg.validate()
        return cfg
