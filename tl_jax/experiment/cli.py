"""What every script shares: absl flag parsing, one-line errors and documented exit codes.

Exit codes: 0 done; 1 the command was valid but running it failed (a missing or unreadable file,
an unprepared dataset, a non-finite loss, a checkpoint or log that could not be written, ...); 2
the command line is wrong (an unknown flag, config field or value); 143 stopped by SIGTERM and
130 by SIGINT / Ctrl-C (128 + the signal, as a shell reports a process killed by it). A training
run stopped by a signal first checkpoints the step it was on and says so in one line,
``preempted at step N; run the same command to resume``; the same command resumes it. ``--help``
prints the script's usage and flags and exits 0; ``--traceback`` shows the full traceback of an
error instead of one line.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import app, flags, logging

from tl_jax.experiment.config import ConfigError, field_hint, has_field, load_config
from tl_jax.preemption import Preempted

FAILURE, USAGE, INTERRUPTED, PREEMPTED = 1, 2, 130, 143
_HELP = ("-h", "-?", "--help", "--helpshort", "--helpfull")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "on an error, show the full traceback instead of one line")


class UsageError(ValueError):
    """A command line no run can use (exit code 2)."""


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with the exit codes and one-line errors above."""
    app.run(_guarded(main), flags_parser=parse_flags)


def fail(message: Any, code: int = FAILURE) -> NoReturn:
    """Print ``<script>: error: <message>`` as one line on stderr and exit with ``code``."""
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip()).replace(":;", ":")
    print(f"{os.path.basename(sys.argv[0])}: error: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a wrong flag or ``--config.x=y`` is one line (exit 2) and help exits 0."""
    if any(a in _HELP for a in argv[1:]):
        doc = (sys.modules["__main__"].__doc__ or "").strip()
        full = "--helpfull" in argv
        try:
            print(f"{doc}\n\nflags:\n{flags.FLAGS.get_help() if full else flags.FLAGS.main_module_help()}")
            sys.stdout.flush()
        except BrokenPipeError:   # `--help | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e}; pass --help to see the flags", USAGE)
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:  # raised by a --config file or field
        fail(_config_flag_error(argv, e), USAGE)
    if not flags.FLAGS["verbosity"].present:  # orbax and absl log every checkpoint at INFO
        logging.set_verbosity(logging.WARNING)
    return rest


def _config_flag_error(argv: Sequence[str], error: Exception) -> str:
    """One line for a ``--config`` that does not load or a ``--config.x=y`` naming no field."""
    text = str(error.args[0] if isinstance(error, AttributeError) and error.args else error)
    text = text.strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    path = next((argv[i + 1] if a == "--config" and i + 1 < len(argv) else a.split("=", 1)[1]
                 for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")), None)
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if path is not None and isinstance(error, (AttributeError, KeyError)):
        try:
            config = load_config(path)
        except Exception:  # noqa: BLE001 - the file itself is the problem; report the original error
            return f"bad --config {path}: {text}"
        bad = [k for k in overrides if not has_field(config, k)]
        if bad:
            return f"the config has no field {bad[0]!r}{field_hint(config, bad[0])} (--config.{bad[0]})"
    return f"bad --config ({text}); overrides given: {' '.join('--config.' + k for k in overrides)}"


def _guarded(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """``main`` with its expected errors turned into one line and an exit code."""
    def wrapped(argv: list[str]) -> Any:
        if len(argv) > 1 and getattr(main, "takes_args", False) is False:
            fail(f"unexpected arguments: {' '.join(argv[1:])}; pass --help to see the flags", USAGE)
        try:
            return main(argv)
        except SystemExit:
            raise
        except BaseException as e:  # noqa: BLE001 - sorted below, re-raised with --traceback
            if _TRACEBACK.value:
                raise
            if isinstance(e, Preempted):      # not an error: the run stopped cleanly and resumes
                print(f"{os.path.basename(sys.argv[0])}: {e}", file=sys.stderr, flush=True)
                sys.exit(INTERRUPTED if e.signum == signal.SIGINT else PREEMPTED)
            if isinstance(e, KeyboardInterrupt):
                fail("; ".join(getattr(e, "__notes__", ())) or "interrupted", INTERRUPTED)
            if isinstance(e, (UsageError, ConfigError)):
                fail(e, USAGE)
            if isinstance(e, (OSError, ValueError, RuntimeError, FloatingPointError)):
                fail(e, FAILURE)
            raise
    return wrapped


def takes_args(main: Callable) -> Callable:
    """Mark a ``main`` that accepts positional arguments (e.g. image files)."""
    main.takes_args = True
    return main


def checkpoint_flag(value: str) -> str | int:
    """``--checkpoint``: ``latest``, ``best`` or a step number."""
    if value in ("latest", "best"):
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--checkpoint={value!r}: use latest, best or a step number") from None


def int_list(values: Sequence[str], flag: str) -> list[int]:
    """A list flag of integers (``--seeds=0,1,2``)."""
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UsageError(f"{flag}={','.join(values)}: expected integers such as 0,1,2") from None
