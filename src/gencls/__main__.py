import os
import sys

from gencls.cli import main

if __name__ == "__main__":
    code = main()
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        # a torchrun worker whose work is done and written: leave without the interpreter's teardown.
        # gloo's threads outliving the group aborted finished ranks there ("terminate called without
        # an active exception", SIGABRT: torchrun then reported the run failed); the cause is fixed in
        # distributed.process_group (an import order), and this stays as a second guard
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
