"""Audit events as objects and as the dicts ``procguardctl events --json``
prints (Sysmon ProcessAccess names where they overlap)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Optional

from .protocol import NO_RULE, POLICY_SOURCES, AuditRecord

__all__ = ["AuditEvent", "utc_time", "filetime_to_datetime"]

_TICKS_PER_MILLISECOND = 10_000
_MILLISECONDS_PER_DAY = 86_400_000


def _civil_from_days_since_1601(days: int) -> "tuple[int, int, int]":
    # The same walk as procguardctl's (events.rs): 400-year cycles, then
    # centuries, 4-year groups and years; the last of each is a day longer.
    cycles, rest = divmod(days, 146_097)
    centuries = min(rest // 36_524, 3)
    rest -= centuries * 36_524
    groups = rest // 1_461
    rest -= groups * 1_461
    years = min(rest // 365, 3)
    rest -= years * 365
    year = 1601 + cycles * 400 + centuries * 100 + groups * 4 + years
    leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
    month = 1
    for length in (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31):
        if rest < length:
            break
        rest -= length
        month += 1
    return year, month, rest + 1


def utc_time(filetime: int) -> str:
    """A Windows FILETIME (100 ns since 1601-01-01 UTC) as Sysmon's ``UtcTime``:
    ``YYYY-MM-DD HH:MM:SS.mmm`` (what ``procguardctl`` prints)."""
    milliseconds = filetime // _TICKS_PER_MILLISECOND
    days, in_day = divmod(milliseconds, _MILLISECONDS_PER_DAY)
    year, month, day = _civil_from_days_since_1601(days)
    return (
        f"{year:04}-{month:02}-{day:02} {in_day // 3_600_000:02}:"
        f"{in_day // 60_000 % 60:02}:{in_day // 1000 % 60:02}.{in_day % 1000:03}"
    )


def filetime_to_datetime(filetime: int) -> datetime:
    """A FILETIME as an aware UTC ``datetime`` (microsecond precision)."""
    return datetime(1601, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=filetime // 10)


@dataclass(frozen=True)
class AuditEvent(AuditRecord):
    """One audit record the driver reported, with the name of its rule.

    Every :class:`~procguard.protocol.AuditRecord` attribute (``sequence``,
    ``timestamp``, ``object``, ``duplication``, ``process_id``, ``thread_id``,
    ``originator_process_id``, ``originator_thread_id``, ``source_process_id``,
    ``target_process_id``, ``original_desired_access``, ``desired_access``,
    ``result_code``, ``rule_id``, ``mode``, ``ask_outcome``, ``ask_wait_us``)
    plus ``rule_name``: the rule's name in the policy in force when it was
    read (None when unknown).
    """

    rule_name: Optional[str] = None

    @classmethod
    def from_record(cls, record: AuditRecord, rule_name: Optional[str] = None) -> AuditEvent:
        """The event of a decoded record."""
        values = {name: getattr(record, name) for name in record.__dataclass_fields__}
        return cls(**values, rule_name=rule_name)

    @property
    def time(self) -> datetime:
        """``timestamp`` as an aware UTC datetime."""
        return filetime_to_datetime(self.timestamp)

    def as_dict(self) -> Dict[str, Any]:
        """The record as ``procguardctl events --json`` writes it: ``UtcTime``,
        ``SourceProcessId``/``SourceThreadId`` (the originator),
        ``TargetProcessId``, ``ThreadId``, ``Object``, ``GrantedAccess`` and
        ``OriginalDesiredAccess`` (hex strings), ``Rule`` (name, else the id as
        a string; None without a rule), ``RuleId``, ``Mode``, ``Duplication``,
        ``DuplicateSourceProcessId``, ``DuplicateTargetProcessId``,
        ``Sequence``, and for the ask path ``AskOutcome`` (None or
        ``"answered"``, ``"timed-out"``, ``"no-handler"``, ``"pool-full"``,
        ``"unaskable"``, ``"cancelled"``), ``AskWaitMicroseconds`` and
        ``ResultCode``."""
        if self.object == "policy":
            return self._policy_dict()
        has_rule = self.rule_id != NO_RULE
        return {
            "UtcTime": utc_time(self.timestamp),
            "SourceProcessId": self.originator_process_id,
            "SourceThreadId": self.originator_thread_id,
            "TargetProcessId": self.process_id,
            "ThreadId": self.thread_id,
            "Object": self.object,
            "GrantedAccess": hex(self.desired_access),
            "OriginalDesiredAccess": hex(self.original_desired_access),
            "Rule": (self.rule_name if self.rule_name is not None else str(self.rule_id))
            if has_rule
            else None,
            "RuleId": self.rule_id if has_rule else None,
            "Mode": self.mode,
            "Duplication": self.duplication,
            "DuplicateSourceProcessId": self.source_process_id,
            "DuplicateTargetProcessId": self.target_process_id,
            "Sequence": self.sequence,
            "AskOutcome": self.ask_outcome,
            "AskWaitMicroseconds": self.ask_wait_us,
            "ResultCode": self.result_code,
        }

    @property
    def policy_source(self) -> Optional[str]:
        """For a policy record (``object == "policy"``), where the policy came
        from: ``"boot"``, ``"control"`` (``procguardctl apply``) or
        ``"registry"`` (a live change of ``Parameters\\Policy``); None for a
        handle record."""
        if self.object != "policy":
            return None
        return POLICY_SOURCES.get(self.source_process_id)

    def _policy_dict(self) -> Dict[str, Any]:
        """A policy record (``Mode`` ``"policy-applied"`` or
        ``"policy-rejected"``) as ``procguardctl events --json`` writes it:
        ``UtcTime``, ``Object``, ``Mode``, ``PolicyId`` (the new policy, or the
        one that stays in force after a refusal), ``PolicySource``, ``Rules``
        (in force afterwards), ``Status`` (the refusal's NTSTATUS),
        ``SourceProcessId``/``SourceThreadId`` (who sent it; 0 for the
        registry) and ``Sequence``."""
        return {
            "UtcTime": utc_time(self.timestamp),
            "Object": self.object,
            "Mode": self.mode,
            "PolicyId": f"0x{self.rule_id:08x}",
            "PolicySource": self.policy_source or "unknown",
            "Rules": self.desired_access,
            "Status": f"0x{self.result_code & 0xFFFFFFFF:08X}",
            "SourceProcessId": self.originator_process_id,
            "SourceThreadId": self.originator_thread_id,
            "Sequence": self.sequence,
        }
