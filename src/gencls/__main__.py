import os
import sys

from gencls.cli import main

if __name__ == "__main__":
    code = main()
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        # a torchrun worker whose work is done and written: leave without the interpreter's teardown,
        # where gloo's threads were seen to abort a finished rank ("terminate called without an active
        # exception", SIGABRT: torchrun then reports the whole run failed)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
