"""``python -m tests.chaos [options]`` (``make chaos``): see :mod:`tests.chaos`.

Exit 0 when nothing was lost, duplicated or refused and the drain finished in time; 1 when
the verdict fails; 2 when the run could not be carried out (a process would not start);
130 on Ctrl-C or SIGTERM, after everything it started is stopped. The run's folder (logs,
the pusher's ids, the broker's data) is removed after a pass and kept otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

from tests.chaos.children import strays
from tests.chaos.options import parse
from tests.chaos.run import run


def main(argv: list[str] | None = None) -> int:
    options = parse(argv, os.environ)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    token = uuid.uuid4().hex[:12]
    parent = options.log_dir or Path(tempfile.gettempdir())
    workdir = parent / f"chaos-{token}"
    workdir.mkdir(parents=True)
    # SIGTERM ends the run as Ctrl-C does: the same path stops every process it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        verdict = asyncio.run(run(options, workdir, token))
    except KeyboardInterrupt:
        left = strays(token)
        print("chaos: interrupted; " + (f"still running: {left}" if left else "all stopped"))
        print(f"chaos: logs in {workdir / 'logs'}")
        return 130
    except Exception as exc:  # noqa: BLE001 -- any failure to run is reported the same way
        print(f"chaos: the run could not be carried out: {exc!r}", file=sys.stderr)
        print(f"chaos: logs in {workdir / 'logs'}", file=sys.stderr)
        return 2
    print("\nchaos verdict:\n" + verdict.table())
    print(verdict.json_line(), flush=True)
    if verdict.ok and options.log_dir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"chaos: logs in {workdir / 'logs'}")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
