"""Entry point of a sandbox worker process (run as a script: `python -S -s -P -B _bootstrap.py`).

Takes private copies of the pipe descriptors (stdout's becomes the result channel; fd 1 is then pointed at
stderr so that stray writes cannot corrupt it), reads the init frame, sets the import path to the standard
library plus the given site directories and loads the `core` modules without running package `__init__`s
(which would import numba, the MCP layer or the sandbox's parent side). Then hands over to `_worker.main`.
"""

import json
import os
import struct
import sys
import types


def _read_exact(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _main():
    chan_in, chan_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    n_json, n_blob = struct.unpack("<II", _read_exact(chan_in, 8))
    init = json.loads(_read_exact(chan_in, n_json))
    if n_blob:
        _read_exact(chan_in, n_blob)
    sys.path.extend(p for p in init["site_dirs"] if p not in sys.path)
    core_dir = init["core_dir"]
    for name, sub in (("core", ""), ("core.controllers", "controllers"), ("core.sandbox", "sandbox")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(core_dir, sub) if sub else core_dir]
        pkg.__package__ = name
        sys.modules[name] = pkg
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, pkg)
    from core.sandbox import _worker

    _worker.main(chan_in, chan_out, init)


_main()
