"""Remove PROCESS_TERMINATE from every handle to one process (apply protect_pid.toml first)."""
import sys
import time

from procguard import PROCESS_TERMINATE, ProcGuard

PROTECTED_PID = int(sys.argv[1]) if len(sys.argv) > 1 else 0


def on_process_handle_operation(e):
    if e.process_id == PROTECTED_PID:
        e.desired_access &= ~PROCESS_TERMINATE


if __name__ == "__main__":  # python protect_pid.py PID   (as Administrator; Ctrl+C stops)
    with ProcGuard() as guard:
        guard.on_process_handle_operation = on_process_handle_operation
        guard.start()
        while True:  # time.sleep, unlike Event.wait, lets Ctrl+C through on Windows
            time.sleep(1)
