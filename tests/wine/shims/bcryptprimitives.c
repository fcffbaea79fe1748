/*
 * Test shim for Wine 8 only, never shipped: Debian 12's wine64 (8.0) has no
 * bcryptprimitives.dll, which Windows has from Windows 8 on. Rust's standard
 * library imports ProcessPrng from it (HashMap's random seed), so a program
 * that hashes — procguardctl, through toml_edit's maps — does not start
 * under Wine 8 without it. The shim gives ProcessPrng's documented contract
 * (fill the buffer, always return TRUE) from advapi32's RtlGenRandom
 * (SystemFunction036), which Wine has.
 *
 * Built by tests/wine/test_windows_programs.py with x86_64-w64-mingw32-gcc
 * into the test prefix's system32.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
