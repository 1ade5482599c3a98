"""The ``weightvault`` command line.

Known errors become one line on stderr (what went wrong, then what to try)
and their own exit code; a traceback only with ``WEIGHTVAULT_DEBUG=1``.
Every command has ``--help`` with an example.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Command groups; each module's register(sub, common) adds its subcommands.
COMMAND_MODULES = [
    "weightvault.commands.core",
    "weightvault.commands.provenance",
    "weightvault.commands.diff",
    "weightvault.commands.reliability",
    "weightvault.commands.teacher",
]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def add_command(sub, name: str, *, help: str, example: str, parents=(), description: str | None = None):
    """Add a subcommand whose --help ends with an example (tests check every command has one)."""
    return sub.add_parser(
        name, help=help, description=description or help, parents=list(parents),
        epilog=f"example:\n  {example}", formatter_class=_Formatter,
    )


class _Skipped:
    """Stands in for the parser of a command this run does not invoke: every call is a no-op."""

    def __getattr__(self, name):
        return self._noop

    def _noop(self, *args, **kwargs):
        return self


class _OnlyCommand:
    """The subcommands action, building only the parser of one command (the others are skipped)."""

    def __init__(self, sub, name: str):
        self.sub, self.name, self.found = sub, name, False

    def add_parser(self, name, **kwargs):
        if name != self.name:
            return _Skipped()
        self.found = True
        return self.sub.add_parser(name, **kwargs)


_GLOBAL_OPTIONS_WITH_VALUE = {"--store", "--endpoint", "--lock-timeout"}


def _command_in(argv) -> str | None:
    """The subcommand ``argv`` invokes, or None where only the full parser can tell (help, version,
    an abbreviated or unknown option)."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in _GLOBAL_OPTIONS_WITH_VALUE:
            skip = True
        elif a.startswith("-"):
            if a.split("=", 1)[0] not in _GLOBAL_OPTIONS_WITH_VALUE:
                return None
        else:
            return a
    return None


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The full parser, or with ``argv``, one with only the parser of the command it invokes.

    Building all 30 subparsers (argparse looks up a translation for every help
    string) took 16-25 ms of each CLI call on the bench machine; one takes a
    tenth of that. Anything that is not a known command gets the full parser,
    so errors and help list every command.
    """
    from weightvault import __version__

    parser = argparse.ArgumentParser(
        prog="weightvault",
        description="Archive model weights as history: deduplicated, compressed, byte-exact snapshots "
                    "with a DuckDB catalog of versions, lineage and provenance.",
        epilog="example:\n  weightvault snapshot ./my-model --model my-model\n  weightvault log my-model\n"
               "\nThe store is --store, else $WEIGHTVAULT_STORE, else ~/.local/share/weightvault/store.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--store", metavar="DIR", help="store folder or s3://BUCKET/PREFIX "
                                                        "(default: $WEIGHTVAULT_STORE or per-user)")
    parser.add_argument("--endpoint", metavar="URL", help="S3 endpoint for s3:// stores (default: $AWS_ENDPOINT_URL)")
    parser.add_argument("--lock-timeout", type=float, metavar="S", default=None,
                        help="seconds to wait for a busy store or catalog (default 600)")
    parser.add_argument("--version", action="version", version=f"weightvault {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = _command_in(argv) if argv is not None else None
    only = _OnlyCommand(sub, wanted) if wanted else None
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(only or sub, common)
    if only is not None and not only.found:
        return build_parser()  # not a command: the full parser names the real ones
    return parser


def open_vault(args, *, create: bool = True):
    from weightvault.vault import Vault

    return Vault.open(args.store, create=create, lock_timeout=args.lock_timeout)


class _WarningHandler(logging.Handler):
    def emit(self, record):
        from weightvault._ui import err_console, escape

        err_console().print(f"[yellow]warning:[/] {escape(record.getMessage())}", soft_wrap=True)


def _report(err) -> int:
    from weightvault._ui import err_console, escape

    # escape: messages carry brackets ("pip install 'weightvault[teacher]'") that are not markup
    line = f"[bold red]error:[/] {escape(str(err))}"
    hint = getattr(err, "hint", "")
    if hint:
        line += f" [dim]→[/] {escape(hint)}"
    err_console().print(line, soft_wrap=True, markup=True, highlight=False)
    return getattr(err, "exit_code", 1)


def main(argv=None) -> int:
    from weightvault import _process
    from weightvault.errors import WeightvaultError

    _process.tune()

    debug = os.environ.get("WEIGHTVAULT_DEBUG", "") not in ("", "0")
    log = logging.getLogger("weightvault")
    if not log.handlers:
        log.addHandler(_WarningHandler())
        log.setLevel(logging.WARNING)
        log.propagate = False
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "store", None) == "":  # "--store $VAULT" with VAULT unset: not the default store
        from weightvault.errors import UsageError

        return _report(UsageError("--store is empty", hint="pass a folder or s3://BUCKET/PREFIX, or leave --store "
                                                           "out for $WEIGHTVAULT_STORE or the per-user store"))
    if getattr(args, "endpoint", None):  # s3:// stores read it (archive/s3.py); remembered at init
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, not at exit, where a closed pipe could not be caught
        return int(rc or 0)
    except WeightvaultError as e:
        if debug:
            raise
        return _report(e)
    except KeyboardInterrupt:
        from weightvault._ui import err_console

        err_console().print("[yellow]interrupted[/]: committed versions are intact; rerun to finish")
        return 130
    except BrokenPipeError:  # the reader left (`| head`): not an error; nothing more to write
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except OSError as e:
        if debug:
            raise
        import errno

        if e.errno == errno.ENOSPC:
            from weightvault.errors import DiskFullError

            return _report(DiskFullError(e.filename or "the store"))
        from weightvault.errors import WeightvaultError as W

        hints = {errno.EEXIST: "a file is where a folder is needed, or the name is taken: pick another path",
                 errno.ENOTDIR: "part of the path is a file, not a folder: pick another path",
                 errno.EACCES: "check the path's permissions", errno.EPERM: "check the path's permissions",
                 errno.EROFS: "the file system is read-only: a store there can be read (restore, verify, log, "
                              "sql), not changed; write to a writable copy or path"}
        return _report(W(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "),
                         hint=hints.get(e.errno, "check the path and its permissions")))
    except Exception as e:  # a bug: say so in one line, traceback on request
        if debug:
            raise
        from weightvault.errors import WeightvaultError as W

        return _report(W(f"internal error: {type(e).__name__}: {e}",
                         hint="rerun with WEIGHTVAULT_DEBUG=1 for a traceback and report it"))


if __name__ == "__main__":
    sys.exit(main())
