"""Runs a MicroPython main.py on a PC with CPython, against a real gateway.

    python3 host/run.py [path/to/main.py]

The script's own directory comes first on the import path (its config.py), then this
directory: `umqtt.simple` and `network` stand-ins written for this repository. MicroPython's
time.ticks_ms, ticks_diff and sleep_ms are added to CPython's time module. What this proves and
what it does not: see README.md.
"""

import os
import runpy
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
script = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "main.py"))
sys.path[:0] = [os.path.dirname(script), here]

_start = time.monotonic()
time.ticks_ms = lambda: int((time.monotonic() - _start) * 1000)
time.ticks_diff = lambda a, b: a - b
time.sleep_ms = lambda ms: time.sleep(ms / 1000)
sys.stdout.reconfigure(line_buffering=True)

runpy.run_path(script, run_name="__main__")
