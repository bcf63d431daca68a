"""Command-line helpers shared by the scripts."""
from __future__ import annotations

import os
import sys


# --------------------------------------------------------------------------- command lines
def main_with_clean_errors(main):
    """Wrap a script's ``main``: a missing file (weights, run, image) is one line, not a traceback."""
    def wrapped(argv):
        try:
            return main(argv)
        except FileNotFoundError as e:
            sys.exit(f"{os.path.basename(sys.argv[0])}: {e}")
    return wrapped


def parse_flags(argv: list[str]) -> list[str]:
    """absl ``flags_parser`` for the scripts: a bad ``--config.x=y`` exits with one clear line.

    ml_collections raises AttributeError (with a "did you mean" hint) for an unknown field of a
    locked config, which absl would show as a traceback.
    """
    from absl import flags, logging

    try:
        rest = flags.FLAGS(argv)
        if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
            logging.set_verbosity(logging.WARNING)
        return rest
    except flags.Error as e:
        sys.exit(f"{os.path.basename(argv[0])}: {e}\nPass --helpfull to see the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace('\\"', '"')
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        sys.exit(f"{os.path.basename(argv[0])}: bad config override ({text}); overrides given: {' '.join(bad)}")
