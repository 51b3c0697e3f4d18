"""``python -m anomalens`` and the ``anomalens`` command: run the command line.

:func:`run` imports the CLI (torch, matplotlib ...: a second or more) inside the same Ctrl-C
handling as the commands, so an early Ctrl-C prints ``anomalens: interrupted`` and exits 130
instead of a traceback (``ANOMALENS_DEBUG=1`` shows it).
"""

import os
import sys

EXIT_INTERRUPTED = 130


def run() -> int:
    """Import and run :func:`anomalens.cli.main`; Ctrl-C at any time exits 130."""
    try:
        from anomalens.cli import main

        return main()
    except KeyboardInterrupt:
        if os.environ.get("ANOMALENS_DEBUG", "").strip() not in ("", "0"):
            raise
        print("anomalens: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(run())
