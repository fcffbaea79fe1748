"""Driver Verifier's IRQL rules, in the emulator.

The harness (``KernelHarness``, which mixes this class in) tracks the IRQL
the one emulated thread runs at and the state of its critical regions and
locks, the way the kernel would:

* spin locks: ``KeAcquireSpinLockRaiseToDpc`` raises to DISPATCH_LEVEL,
  ``KeReleaseSpinLock`` restores the IRQL its acquisition returned;
* guarded (= fast, since Windows 8) mutexes: held at APC_LEVEL, the IRQL
  before the acquisition comes back at release;
* ``KeRaiseIrql``/``KeRaiseIrqlToDpcLevel``/``KeLowerIrql`` (when imported);
* critical regions (``KeEnterCriticalRegion``/``KeLeaveCriticalRegion``): no
  IRQL change, but an ``ExAcquireResource*Lite`` needs one (or APC_LEVEL);
* ERESOURCEs: initialised in non-paged storage, deleted before their memory
  is freed and by the end of unload.

Every kernel or framework function the driver calls is checked against its
documented maximum IRQL, read from ``driver/windows-support.toml`` (the one
table of Windows facts: ``max_irql`` of its ``[[import]]`` and
``[[wdf_function]]`` rows); a function with no row is a violation too. A
violation is recorded with the driver's return addresses on the stack
(symbolized through the PDB) and fails the run that made it, like a Verifier
bug check would. Every run of driver code must also return at the IRQL it was
entered at, with no critical region open and no lock held.

``KeGetCurrentIrql`` returns the tracked value; the harness enters callbacks
at the IRQL the kernel uses (PASSIVE_LEVEL for DriverEntry, unload, the
process notify routine and IOCTLs; PASSIVE or APC for the object callbacks,
as a test chooses).
"""

from __future__ import annotations

import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from speakeasy.winenv import arch as se_arch

PASSIVE_LEVEL = 0
APC_LEVEL = 1
DISPATCH_LEVEL = 2
HIGH_LEVEL = 15

SUPPORT_TABLE = Path(__file__).resolve().parents[2] / "driver" / "windows-support.toml"
# sizeof(ERESOURCE) on x64 (wdm.h; checked by the driver's layout tests).
ERESOURCE_SIZE = 104
KGUARDED_MUTEX_SIZE = 56
POOL_FLAG_NON_PAGED = 0x40


class IrqlViolation(AssertionError):
    """A rule Driver Verifier enforces was broken (raised by ``assert_no_fault``)."""


def load_irql_limits(path: Path = SUPPORT_TABLE) -> tuple[dict[str, int], set[str]]:
    """Function name -> documented maximum IRQL, from the support table's
    ``[[import]]`` rows and ``[[wdf_function]]`` rows; and the names of the
    data imports (variables, never called)."""
    table = tomllib.loads(path.read_text())
    limits: dict[str, int] = {}
    data: set[str] = set()
    for row in table.get("import", []) + table.get("wdf_function", []):
        if row.get("data"):
            data.add(row["name"])
            continue
        limits[row["name"]] = int(row["max_irql"])
    return limits, data


@dataclass
class ResourceState:
    """One ERESOURCE the driver initialised."""

    address: int
    held: int = 0  # exclusive acquisitions not yet released
    deleted: bool = False
    acquired_in_region: list[bool] = field(default_factory=list)


class IrqlVerifier:
    """Mixed into ``KernelHarness``: needs its ``_hook``, ``read``/``write``,
    ``in_image``, ``pool``, ``sys_path``, ``emu``, ``events``, ``stack_region``
    and ``irql``."""

    # --------------------------------------------------------------- setup

    def _install_irql_verifier(self) -> None:
        self.irql_limits, self.data_imports = load_irql_limits()
        # Routines of the framework the driver reaches through pointers, not
        # imports (so not in the table): the framework's DriverUnload, which
        # the driver's displaced-unload stub calls, runs at PASSIVE_LEVEL.
        self.irql_limits.setdefault("FxFrameworkDriverUnload", PASSIVE_LEVEL)
        # (message, driver return addresses): not yet reported by a run, reported.
        self.irql_violations: list[tuple[str, tuple[int, ...]]] = []
        self.reported_irql_violations: list[tuple[str, tuple[int, ...]]] = []
        self.critical_regions = 0
        self.spin_locks: dict[int, int] = {}  # held lock -> IRQL its acquisition returned
        self.mutexes: dict[int, bool] = {}  # initialised KGUARDED_MUTEX -> held
        self.mutex_irqls: dict[int, int] = {}  # held mutex -> IRQL before acquisition
        self.mutex_acquisitions = 0
        self.spin_lock_acquisitions = 0
        self.resources: dict[int, ResourceState] = {}
        self.resource_acquisitions = 0
        hook = self._hook
        hook("ntoskrnl", "KeInitializeGuardedMutex", 1, self._ke_initialize_guarded_mutex)
        hook("ntoskrnl", "KeAcquireGuardedMutex", 1, self._ke_acquire_guarded_mutex)
        hook("ntoskrnl", "KeReleaseGuardedMutex", 1, self._ke_release_guarded_mutex)
        hook("ntoskrnl", "KeAcquireSpinLockRaiseToDpc", 1, self._ke_acquire_spin_lock_raise_to_dpc)
        hook("ntoskrnl", "KeReleaseSpinLock", 2, self._ke_release_spin_lock)
        hook("ntoskrnl", "KeGetCurrentIrql", 0, self._ke_get_current_irql)
        hook("ntoskrnl", "KeRaiseIrqlToDpcLevel", 0, self._ke_raise_irql_to_dpc_level)
        hook("ntoskrnl", "KfRaiseIrql", 1, self._kf_raise_irql)
        hook("ntoskrnl", "KeLowerIrql", 1, self._ke_lower_irql)
        hook("ntoskrnl", "KfLowerIrql", 1, self._ke_lower_irql)
        hook("ntoskrnl", "KeEnterCriticalRegion", 0, self._ke_enter_critical_region)
        hook("ntoskrnl", "KeLeaveCriticalRegion", 0, self._ke_leave_critical_region)
        hook("ntoskrnl", "ExInitializeResourceLite", 1, self._ex_initialize_resource_lite)
        hook("ntoskrnl", "ExDeleteResourceLite", 1, self._ex_delete_resource_lite)
        hook("ntoskrnl", "ExAcquireResourceExclusiveLite", 2, self._ex_acquire_resource_exclusive_lite)
        hook("ntoskrnl", "ExReleaseResourceLite", 1, self._ex_release_resource_lite)

    def _install_pass_through_hooks(self) -> None:
        """Imports and KMDF functions the harness has no hook of its own for
        (Speakeasy's handlers) still go through ``_hook``, so every call the
        driver makes is checked."""
        from kernel_harness import speakeasy_wdf_function_names  # noqa: PLC0415 - see irql_report

        functions = [(module_name, name) for _slot, (module_name, name) in self.module.imports.items()]
        functions += [("wdfldr", name) for name in speakeasy_wdf_function_names() if name]
        for module_name, name in functions:
            if (module_name.lower(), name) in self._hooked or name in self.data_imports:
                continue

            def pass_through(argv, original, name=name, module_name=module_name):
                if original is None:
                    # Nobody implements it: end the run the way Speakeasy
                    # does for an unsupported API, naming it.
                    self.emu.curr_run.error = {"type": "unsupported_api", "api_name": f"{module_name}.{name}"}
                    self.emu.stop()
                    return 0
                return original(argv)

            self._hook(module_name, name, 0, pass_through)

    # ------------------------------------------------------------ checking

    def irql_violation(self, message: str, *, stack: bool = True) -> None:
        """Records a violation, with the driver's return addresses on the
        stack when it happens inside a call (``stack``); they are symbolized
        when reported (once per distinct violation: a loop repeats one)."""
        addresses: tuple[int, ...] = ()
        if stack:
            rsp = self.emu.reg_read(se_arch.AMD64_REG_RSP)
            depth = max(0, min(0x4000, self.stack_top - rsp))
            raw = self.read(rsp, depth) if depth else b""
            words = struct.unpack(f"<{depth // 8}Q", raw[: depth // 8 * 8])
            addresses = tuple(word for word in words if self.in_image(word))[:12]
        self.irql_violations.append((message, addresses))

    def _verify_call(self, name: str, argv: list[int]) -> None:
        """Called before every hooked function runs: its IRQL limit, and
        pool frees that would free a live ERESOURCE."""
        limit = self.irql_limits.get(name)
        if limit is None:
            self.irql_violation(f"{name}: no max_irql in driver/windows-support.toml (add its row, from its doc page)")
        elif self.irql > limit:
            self.irql_violation(f"{name} called at IRQL {self.irql}, above its maximum {limit}")
        if name in ("ExFreePoolWithTag", "ExFreePool") and argv:
            address = argv[0]
            block = self.pool.get(address)
            end = address + (block.size if block else 1)
            for resource in self.resources.values():
                if not resource.deleted and address <= resource.address < end:
                    self.irql_violation(
                        f"{name}({address:#x}) frees the live ERESOURCE at {resource.address:#x}"
                        " (ExDeleteResourceLite first)"
                    )

    def _verifier_after_run(self, what: str, entry_irql: int) -> None:
        """A callback returns: IRQL, critical regions and locks as entered."""
        if self.irql != entry_irql:
            self.irql_violation(f"{what} returned at IRQL {self.irql}, entered at {entry_irql}", stack=False)
            self.irql = entry_irql
        if self.critical_regions != 0:
            self.irql_violation(f"{what} returned with {self.critical_regions} critical region(s) open", stack=False)
            self.critical_regions = 0
        if self.spin_locks:
            self.irql_violation(f"{what} returned holding spin lock(s) {[hex(lock) for lock in self.spin_locks]}", stack=False)
            self.spin_locks.clear()
        held = [hex(mutex) for mutex, is_held in self.mutexes.items() if is_held]
        if held:
            self.irql_violation(f"{what} returned holding guarded mutex(es) {held}", stack=False)
            for mutex in self.mutexes:
                self.mutexes[mutex] = False
            self.mutex_irqls.clear()
        resources = [hex(r.address) for r in self.resources.values() if r.held]
        if resources:
            self.irql_violation(f"{what} returned holding ERESOURCE(s) {resources}", stack=False)
            for resource in self.resources.values():
                resource.held = 0
        if what == "DriverUnload":
            live = [hex(r.address) for r in self.resources.values() if not r.deleted]
            if live:
                self.irql_violation(f"unload left ERESOURCE(s) {live} initialised (no ExDeleteResourceLite)", stack=False)

    # ------------------------------------------------------- guarded mutexes

    def _ke_initialize_guarded_mutex(self, argv, _original):
        mutex = argv[0]
        if self.mutexes.get(mutex):
            self.irql_violation(f"KeInitializeGuardedMutex({mutex:#x}) while it is held")
        self.write(mutex, b"\0" * KGUARDED_MUTEX_SIZE)
        self.mutexes[mutex] = False
        return None

    def _ke_acquire_guarded_mutex(self, argv, _original):
        # A guarded mutex is a fast mutex since Windows 8: held at APC_LEVEL.
        mutex = argv[0]
        self.mutex_acquisitions += 1
        self.events.append(("KeAcquireGuardedMutex", mutex))
        if mutex not in self.mutexes:
            raise RuntimeError(f"KeAcquireGuardedMutex({mutex:#x}): not initialised")
        if self.mutexes[mutex]:
            # One emulated thread: acquiring a held mutex would wait forever.
            raise RuntimeError(f"KeAcquireGuardedMutex({mutex:#x}): already held (deadlock)")
        self.mutexes[mutex] = True
        self.mutex_irqls[mutex] = self.irql
        self.irql = max(self.irql, APC_LEVEL)
        return None

    def _ke_release_guarded_mutex(self, argv, _original):
        mutex = argv[0]
        self.events.append(("KeReleaseGuardedMutex", mutex))
        if not self.mutexes.get(mutex):
            raise RuntimeError(f"KeReleaseGuardedMutex({mutex:#x}): not held")
        if self.irql != APC_LEVEL:
            self.irql_violation(f"KeReleaseGuardedMutex({mutex:#x}) at IRQL {self.irql}, acquired to APC_LEVEL")
        self.mutexes[mutex] = False
        self.irql = self.mutex_irqls.pop(mutex, PASSIVE_LEVEL)
        return None

    # ---------------------------------------------------- spin locks, IRQL

    def _ke_acquire_spin_lock_raise_to_dpc(self, argv, _original):
        lock = argv[0]
        self.spin_lock_acquisitions += 1
        if self._read_u64(lock) != 0 or lock in self.spin_locks:
            raise RuntimeError(f"KeAcquireSpinLockRaiseToDpc({lock:#x}): already held (spins forever)")
        self._write_u64(lock, 1)
        old = self.irql
        self.spin_locks[lock] = old
        self.irql = DISPATCH_LEVEL
        return old

    def _ke_release_spin_lock(self, argv, _original):
        lock, new_irql = argv[0], argv[1] & 0xFF
        if self._read_u64(lock) == 0 or lock not in self.spin_locks:
            raise RuntimeError(f"KeReleaseSpinLock({lock:#x}): not held")
        expected = self.spin_locks.pop(lock)
        if self.irql != DISPATCH_LEVEL:
            self.irql_violation(f"KeReleaseSpinLock({lock:#x}) at IRQL {self.irql}, not DISPATCH_LEVEL")
        if new_irql != expected:
            self.irql_violation(
                f"KeReleaseSpinLock({lock:#x}) back to IRQL {new_irql}; its acquisition returned {expected}"
            )
        self._write_u64(lock, 0)
        self.irql = new_irql
        return None

    def _ke_get_current_irql(self, _argv, _original):
        return self.irql

    def _ke_raise_irql_to_dpc_level(self, _argv, _original):
        old = self.irql
        self.irql = DISPATCH_LEVEL
        return old

    def _kf_raise_irql(self, argv, _original):
        new = argv[0] & 0xFF
        old = self.irql
        if new < old:
            self.irql_violation(f"KeRaiseIrql to {new} from the higher IRQL {old}")
        self.irql = new
        return old

    def _ke_lower_irql(self, argv, _original):
        new = argv[0] & 0xFF
        if new > self.irql:
            self.irql_violation(f"KeLowerIrql to {new} from the lower IRQL {self.irql}")
        self.irql = new
        return None

    # ------------------------------------------- critical regions, ERESOURCE

    def _ke_enter_critical_region(self, _argv, _original):
        self.critical_regions += 1
        return None

    def _ke_leave_critical_region(self, _argv, _original):
        if self.critical_regions == 0:
            self.irql_violation("KeLeaveCriticalRegion without a matching KeEnterCriticalRegion")
            return None
        self.critical_regions -= 1
        if self.critical_regions == 0 and self.irql < APC_LEVEL:
            held = [hex(r.address) for r in self.resources.values() if r.held]
            if held:
                self.irql_violation(f"KeLeaveCriticalRegion while holding ERESOURCE(s) {held}")
        return None

    def _non_paged(self, address: int, size: int) -> bool:
        """Image sections are non-paged (the package step links them so);
        pool blocks are non-paged if allocated with POOL_FLAG_NON_PAGED (or
        from NonPagedPoolNx by the ExAllocatePoolWithTag fallback)."""
        if self.in_image(address) and self.in_image(address + size - 1):
            return True
        for block in self.pool.values():
            if block.address <= address and address + size <= block.address + block.size:
                return bool(block.flags & POOL_FLAG_NON_PAGED) or block.non_paged
        return False

    def _resource(self, address: int, api: str) -> ResourceState:
        resource = self.resources.get(address)
        if resource is None or resource.deleted:
            raise RuntimeError(f"{api}({address:#x}): not an initialised ERESOURCE")
        return resource

    def _ex_initialize_resource_lite(self, argv, _original):
        address = argv[0]
        existing = self.resources.get(address)
        if existing is not None and not existing.deleted:
            self.irql_violation(f"ExInitializeResourceLite({address:#x}): already initialised")
        if address % 8:
            self.irql_violation(f"ExInitializeResourceLite({address:#x}): not 8-byte aligned")
        if not self._non_paged(address, ERESOURCE_SIZE):
            self.irql_violation(f"ExInitializeResourceLite({address:#x}): storage is not non-paged memory")
        self.write(address, b"\0" * ERESOURCE_SIZE)
        self.resources[address] = ResourceState(address)
        return 0  # STATUS_SUCCESS

    def _ex_delete_resource_lite(self, argv, _original):
        resource = self._resource(argv[0], "ExDeleteResourceLite")
        if resource.held:
            self.irql_violation(f"ExDeleteResourceLite({resource.address:#x}) while it is held")
        resource.deleted = True
        return 0

    def _ex_acquire_resource_exclusive_lite(self, argv, _original):
        resource = self._resource(argv[0], "ExAcquireResourceExclusiveLite")
        wait = argv[1] & 0xFF
        self.resource_acquisitions += 1
        self.events.append(("ExAcquireResourceExclusiveLite", resource.address))
        if self.critical_regions == 0 and self.irql < APC_LEVEL:
            self.irql_violation(
                f"ExAcquireResourceExclusiveLite({resource.address:#x}) with normal kernel APCs enabled"
                " (no critical region)"
            )
        if resource.held:
            # ERESOURCEs are recursive for their owner; this driver never
            # recurses, and one emulated thread makes it a bug here.
            raise RuntimeError(f"ExAcquireResourceExclusiveLite({resource.address:#x}): already held")
        if not wait:
            raise RuntimeError("ExAcquireResourceExclusiveLite with Wait = FALSE: the driver always waits")
        resource.held += 1
        self.mutex_acquisitions += 1  # the writer lock: counted with the mutexes
        return 1  # TRUE: acquired

    def _ex_release_resource_lite(self, argv, _original):
        resource = self._resource(argv[0], "ExReleaseResourceLite")
        self.events.append(("ExReleaseResourceLite", resource.address))
        if not resource.held:
            raise RuntimeError(f"ExReleaseResourceLite({resource.address:#x}): not held")
        resource.held -= 1
        return None

    def irql_report(self) -> str:
        """The violations not yet reported, each once with its count and its
        symbolized stack; they then count as reported, so the test's
        teardown does not report them a second time."""
        from kernel_harness import symbolize  # noqa: PLC0415 - the harness imports this module

        counts: dict[tuple[str, tuple[int, ...]], int] = {}
        for violation in self.irql_violations:
            counts[violation] = counts.get(violation, 0) + 1
        self.reported_irql_violations.extend(self.irql_violations)
        self.irql_violations.clear()
        lines = []
        for (message, addresses), count in counts.items():
            lines.append(message if count == 1 else f"{message} ({count} times)")
            if addresses:
                lines.append(
                    "  driver return addresses found on the stack (innermost first; older"
                    " frames' leftovers may appear):"
                )
                lines.append(symbolize(self.sys_path, list(addresses)))
        return "\n".join(lines)
