/*
 * Kernel declarations the Windows 10/11 WDK has and mingw-w64 10's DDK headers
 * lack, for the Linux type-check of the WDK build (tests/wdk-typecheck).
 * Written from the prototypes on Microsoft's reference pages (wdm.h); parsed
 * after ntifs.h/ntddk.h like the rest of wdk-sys's Base headers.
 */
#ifndef PROCGUARD_DDK_NEWER_THAN_MINGW_H
#define PROCGUARD_DDK_NEWER_THAN_MINGW_H

/* ExAllocatePool2 (Windows 10 2004): wdm.h */
typedef ULONG64 POOL_FLAGS;
NTKERNELAPI PVOID ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);

/* KeQuerySystemTimePrecise (Windows 8): wdm.h */
NTKERNELAPI VOID KeQuerySystemTimePrecise(PLARGE_INTEGER CurrentTime);

/* PsGetCurrentThread: wdm.h declares an NTKERNELAPI function (Learn:
 * library NtosKrnl.lib); mingw-w64 defines it FORCEINLINE instead, which
 * bindgen does not emit. */
NTKERNELAPI PETHREAD PsGetCurrentThread(VOID);

/* PsGetProcessExitStatus: ntddk.h (Learn: library NtosKrnl.lib). */
NTKERNELAPI NTSTATUS PsGetProcessExitStatus(PEPROCESS Process);

#endif
