"""Ask only about handles to one program (log_decisions.toml) and log every
decision as a JSON line: who asked for what, what the handler answered, and
how long it took.

    python log_decisions.py [log_decisions.toml]      (as Administrator; Ctrl+C stops)

The policy is applied first (compiled by procguardctl: see ProcGuard's
documentation for how it is found). The handler grants what was asked except
PROCESS_VM_WRITE and PROCESS_CREATE_THREAD for requesters other than the
target's own updater: change ``decide`` to your rule.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from procguard import (
    PROCESS_CREATE_THREAD,
    PROCESS_VM_WRITE,
    HandleOperationEventParams,
    ProcGuard,
    mask_names,
)

TRUSTED_REQUESTERS = {"contoso-updater.exe"}
log = logging.getLogger("log_decisions")


def decide(e: HandleOperationEventParams) -> None:
    """The decision: no code injection except by the trusted requesters."""
    if e.requester_image_name.lower() not in TRUSTED_REQUESTERS:
        e.desired_access &= ~(PROCESS_VM_WRITE | PROCESS_CREATE_THREAD)


def on_handle_operation(e: HandleOperationEventParams) -> None:
    """Decides, then logs the request and the answer as one JSON line."""
    started = time.perf_counter()
    decide(e)
    log.info(json.dumps({
        "time": e.time.isoformat(),
        "object": e.object_kind,
        "operation": "duplicate" if e.duplication else "create",
        "target": {"pid": e.process_id, "tid": e.thread_id, "image": e.target_image_name},
        "requester": {"pid": e.requester_process_id, "image": e.requester_image_name},
        "rule": e.rule_id,
        "asked": mask_names(e.ask_rights, e.object_kind),
        "requested": hex(e.original_desired_access),
        "granted": hex(e.desired_access),
        "removed": mask_names(e.request.desired_access & ~e.desired_access, e.object_kind),
        "handler_us": round((time.perf_counter() - started) * 1e6),
    }))


def main(policy: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with ProcGuard() as guard:
        guard.apply_policy(policy)
        guard.on_process_handle_operation = on_handle_operation
        guard.on_thread_handle_operation = on_handle_operation
        guard.start()
        log.info(json.dumps({"connected": guard.connection.handler_pid,
                             "timeout_ms": guard.connection.timeout_ms}))
        while True:  # time.sleep, unlike Event.wait, lets Ctrl+C through on Windows
            time.sleep(1)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("log_decisions.toml"))
