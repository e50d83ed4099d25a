"""Runs a console script's `main()` once per command line, each in a fork of one process that imported it.

    python -m tests.forked_main MODULE '[["--flag", "value"], ...]'

prints one JSON list of `{"status", "stdout", "stderr"}`, a command line each. Importing the demo
modules takes most of a bad command line's time (torch, transformers, LIT), so the import happens
once and every command line runs the real `main()` in a child: its own absl flags, exit status,
stdout and stderr. Children start before any thread does (fork after threads is unsafe).
"""

import importlib
import json
import os
import signal
import sys
import tempfile
import traceback

TIMEOUT_S = 240


def run_forked(main, argv: list[str]) -> dict:
    """`main()` with `sys.argv = argv` in a child process: its exit status and output."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:  # The child: the command line's process.
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.argv = argv
            signal.alarm(TIMEOUT_S)  # A command line that serves instead of failing dies here (status -14).
            status = 0
            try:
                main()
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if not isinstance(exit_.code, int | None):
                    print(exit_.code, file=sys.stderr)
            except BaseException:  # pylint: disable=broad-except
                traceback.print_exc()
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return {"status": os.waitstatus_to_exitcode(wait_status), "stdout": out.read(), "stderr": err.read()}


def main() -> None:
    module, command_lines = sys.argv[1], json.loads(sys.argv[2])
    entry = importlib.import_module(module).main
    results = [run_forked(entry, [module, *argv]) for argv in command_lines]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
