#!/usr/bin/env bash
# Cross-compiles the Windows user-mode programs (x86_64, console) on Debian 12:
# procguardctl.exe (the control tool), procguard-events.exe (the events
# service, crates/procguard-events, with its message table) and
# procguard-smoke.exe (the VM smoke test, crates/procguard-smoke), in one
# cargo invocation.
#
#   crates/procguardctl/build-windows.sh        (as root if packages are missing)
#
# Output: target/windows-user/x86_64-pc-windows-gnu/release/{procguardctl,procguard-smoke,procguard-events}.exe
#
# Recipe: target x86_64-pc-windows-gnu, built with Debian's rustc-web (rustup
# here has no Windows target and cannot download one), std rebuilt from
# rust-web-src with -Zbuild-std (RUSTC_BOOTSTRAP=1), linked by mingw-w64's
# x86_64-w64-mingw32-gcc against its CRT (msvcrt.dll). windows-sys imports
# through raw-dylib, so no Windows SDK import library is needed. Each image's
# imports are then checked: Windows system DLLs only.
#
# Why not the others (see the crate README): x86_64-pc-windows-msvc links with
# lld-link, but std needs kernel32.lib, ntdll.lib, userenv.lib, ws2_32.lib,
# dbghelp.lib and the MSVC CRT import libraries, which no Debian package
# ships; x86_64-pc-windows-gnullvm needs an LLVM-built mingw runtime
# (libunwind, compiler-rt builtins), which Debian 12 does not package.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target=x86_64-pc-windows-gnu
target_dir="$root/target/windows-user"
# package:binary of every program built.
programs=(procguardctl:procguardctl procguard-smoke:procguard-smoke procguard-events:procguard-events)

# Debian packages: rustc + cargo + std sources (rustc-web), the mingw-w64
# linker and CRT, llvm-readobj-16 for the import check.
packages=(rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64-win32 mingw-w64-x86-64-dev binutils-mingw-w64-x86-64 llvm-16)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "build-windows.sh: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "build-windows.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
linker=x86_64-w64-mingw32-gcc-win32
command -v "$linker" >/dev/null || linker=x86_64-w64-mingw32-gcc

# A rustup toolchain running this script (cargo xtask, cargo make) must not
# leak into the Debian one.
unset CARGO RUSTC RUSTDOC RUSTUP_TOOLCHAIN RUSTC_WRAPPER CARGO_TARGET_DIR CARGO_ENCODED_RUSTFLAGS RUSTFLAGS CARGO_BUILD_TARGET

cd "$root"
cargo_selection=()
for program in "${programs[@]}"; do
    cargo_selection+=(--package "${program%%:*}" --bin "${program#*:}")
done
echo "build-windows.sh: building ${programs[*]#*:} for $target (rustc-web $(/usr/bin/rustc --version | cut -d' ' -f2), -Zbuild-std, $linker)"
# No DWARF debug info nor symbols in the shipped .exe (the workspace's
# release profile keeps line tables for the driver's PDB).
RUSTC=/usr/bin/rustc \
RUSTC_BOOTSTRAP=1 \
CARGO_PROFILE_RELEASE_DEBUG=0 \
CARGO_PROFILE_RELEASE_STRIP=symbols \
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER="$linker" \
    /usr/bin/cargo build \
    "${cargo_selection[@]}" \
    --release --target "$target" \
    -Zbuild-std=std,panic_abort \
    --target-dir "$target_dir"

# Each image must be an AMD64 console program importing only system DLLs.
check_image() {
    local exe=$1 headers dll bad=0
    local -a dlls
    [[ -f $exe ]] || { echo "build-windows.sh: no $exe" >&2; return 1; }
    headers="$(llvm-readobj-16 --file-headers "$exe")"
    grep -q "Machine: IMAGE_FILE_MACHINE_AMD64" <<<"$headers" || { echo "build-windows.sh: $exe is not an AMD64 image" >&2; return 1; }
    grep -q "Subsystem: IMAGE_SUBSYSTEM_WINDOWS_CUI" <<<"$headers" || { echo "build-windows.sh: $exe is not a console program" >&2; return 1; }
    mapfile -t dlls < <(llvm-readobj-16 --coff-imports "$exe" | sed -n 's/^ *Name: \(.*\.dll\)$/\1/Ip' | sort -fu)
    ((${#dlls[@]})) || { echo "build-windows.sh: no imports found in $exe" >&2; return 1; }
    for dll in "${dlls[@]}"; do
        case "${dll,,}" in
        kernel32.dll | ntdll.dll | advapi32.dll | bcrypt.dll | bcryptprimitives.dll | ws2_32.dll | \
            userenv.dll | msvcrt.dll | ucrtbase.dll | api-ms-win-*.dll) ;;
        *)
            echo "build-windows.sh: $exe imports $dll, which is not a Windows system DLL" >&2
            bad=1
            ;;
        esac
    done
    ((bad == 0)) || return 1
    echo "build-windows.sh: $exe ($(stat -c %s "$exe") bytes), imports: ${dlls[*]}"
}

failed=0
for program in "${programs[@]}"; do
    check_image "$target_dir/$target/release/${program#*:}.exe" || failed=1
done
((failed == 0)) || exit 1
