"""Entry point of the sandbox zygote process: `python -S -s -P -B _bootstrap.py CONTROL_FD`.

Points stdin at /dev/null and stdout at stderr (nothing may write to a channel by accident), reads the init
message from the control socket, sets the import path to the standard library plus the given site directories
and the package's parent directory, then hands over to `core.sandbox._zygote`.
"""

import json
import os
import socket
import sys


def _main():
    ctrl_fd = int(sys.argv[1])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    ctrl = socket.socket(fileno=ctrl_fd)
    init = json.loads(ctrl.recv(1 << 20))
    ctrl.detach()
    sys.path.extend(p for p in init["site_dirs"] if p not in sys.path)
    sys.path.insert(0, init["package_root"])
    from core.sandbox import _zygote

    _zygote.main(ctrl_fd, init)


_main()
