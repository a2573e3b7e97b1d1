"""The tusd-py command: serve, migrate, gc, events, uploads (one module each), bench, and the
client's upload, status, cancel and download (cli/upload.py).

Every option of serve, migrate and gc comes from its declaration in tusd_py.config: the
command line takes it as --<name>, the environment as TUSD_<NAME>, and the command line
wins. bench is a client (a load generator), not the server: its options are its own
(tusd_py/cli/bench.py) and it never builds Settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, NoReturn

from ..config import (
    EVENTS,
    GC,
    MIGRATE,
    SERVE,
    UPLOADS,
    Option,
    Settings,
    environment_values,
    options_for,
)
from . import bench, events, gc, migrate, serve, upload, uploads

#: each command's module has HELP, DESCRIPTION and run(settings) -> exit status
COMMANDS: dict[str, ModuleType] = {
    SERVE: serve,
    MIGRATE: migrate,
    GC: gc,
    EVENTS: events,
    UPLOADS: uploads,
}

ENVIRONMENT_NOTE = (
    " Every option can also be set with the environment variable named after it "
    "(TUSD_<NAME>); the command line wins. A switch in the environment is one of "
    "1/true/yes/on or 0/false/no/off."
)


def _plain(markdown: str) -> str:
    """A docs sentence as --help shows it."""
    return markdown.replace("`", "")


def _argument_type(declared: Option) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return declared.parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = declared.name
    return convert


def _add_option(parser: argparse.ArgumentParser, declared: Option) -> None:
    text = f"{declared.help} [env {declared.env}; default: {declared.default_text}]"
    common: dict[str, Any] = {
        "dest": declared.name,
        # unset options stay out of the namespace, so that the environment can fill them
        "default": argparse.SUPPRESS,
        "help": _plain(text).replace("%", "%%"),
    }
    flags = [declared.flag, *declared.aliases]
    if declared.is_switch:
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        return
    metavar = declared.metavar
    if declared.choices:
        metavar = "{" + ",".join(declared.choices) + "}"
    parser.add_argument(*flags, type=_argument_type(declared), metavar=metavar, **common)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One sentence and a pointer to --help, not the whole usage, which buries it."""
        self.exit(2, f"{self.prog}: {message}\n(`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tusd-py", description="A resumable upload server (tus 1.0.0).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = commands.add_parser(
            name, help=module.HELP, description=module.DESCRIPTION + ENVIRONMENT_NOTE
        )
        for declared in options_for(name):
            _add_option(command, declared)
        if hasattr(module, "add_arguments"):  # the command's own, beside the options
            module.add_arguments(command)
    # listed in --help; main() hands their arguments to bench.main and upload.main before
    # Settings are built: they are clients, with options of their own
    bench.add_arguments(
        commands.add_parser(bench.NAME, help=bench.HELP, description=bench.DESCRIPTION)
    )
    for name in upload.NAMES:
        upload.add_arguments(name, commands.add_parser(name, help=upload.HELP[name]))
    return parser


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, Settings]:
    """The command and its settings, from the command line over the environment.

    A bad command line exits (status 2) through argparse; a bad environment variable or a
    combination the settings refuse raises ValueError with a sentence."""
    command, settings, _ = parse_command(argv, environ)
    return command, settings


def parse_command(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, Settings, dict[str, Any]]:
    """parse(), and the command's own arguments (ARGUMENTS of its module) apart."""
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    own = {name: args.pop(name) for name in getattr(COMMANDS[command], "ARGUMENTS", ())}
    from_environment = environment_values(
        command, os.environ if environ is None else environ, given=args
    )
    return command, Settings(**{**from_environment, **args}), own


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == [bench.NAME]:
        return bench.main(arguments[1:])
    if arguments[:1] and arguments[0] in upload.NAMES:
        return upload.main(arguments[0], arguments[1:])
    try:
        command, settings, own = parse_command(argv)
    except ValueError as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic's plugin chatter at INFO says nothing an operator needs
    logging.getLogger("alembic").setLevel(logging.WARNING)
    module = COMMANDS[command]
    status: int = (
        module.run(settings, own) if hasattr(module, "ARGUMENTS") else module.run(settings)
    )
    return status
