"""The rules a primitive (non-PnP) driver INF must follow, checked on text.

Microsoft documents them for primitive drivers (Windows 10 1903+) and for
the INF sections involved; infverif enforces them on Windows. This checker
enforces the ones procguard's package depends on, so a broken INF fails CI
on Linux too:

- [Version]: Signature "$WINDOWS NT$", Provider, Class with ClassGuid,
  CatalogFile, a well-formed DriverVer (MM/DD/YYYY,a.b.c.d), PnpLockdown = 1;
- no [Manufacturer] section (that would make it a device driver INF);
- DefaultInstall only architecture-decorated ([DefaultInstall.NTamd64]),
  no [DefaultUninstall] (PnP removes what a primitive driver installed);
- [DefaultInstall.NTamd64.Services] adds the service with a service-install
  section whose ServiceType is 1 (SERVICE_KERNEL_DRIVER), StartType a
  documented value (0-4), ErrorControl present, and ServiceBinary in
  %13% (the driver store: destination dirid 13);
- DestinationDirs sends files to dirid 13;
- the KMDF section ([DefaultInstall.NTamd64.Wdf] KmdfService, and
  KmdfLibraryVersion in the section it names);
- every section named by a directive exists, every %string% is defined,
  and the driver file is listed in SourceDisksFiles.
"""

import re

ARCH_SECTION = "defaultinstall.ntamd64"


def parse(text):
    """INF text -> ({section: [(key, value) or (None, line)]}, [errors])."""
    sections, errors, current = {}, [], None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].strip() if not raw.lstrip().startswith('"') else raw.strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                errors.append(f"line {number}: unterminated section header {line!r}")
                continue
            current = line[1:-1].strip().lower()
            if current in sections:
                errors.append(f"line {number}: section [{current}] appears twice")
            sections.setdefault(current, [])
            continue
        if current is None:
            errors.append(f"line {number}: text outside any section")
            continue
        key, sep, value = line.partition("=")
        sections[current].append((key.strip().lower(), value.strip()) if sep else (None, line))
    return sections, errors


def values(sections, section, key):
    return [value for k, value in sections.get(section, []) if k == key]


def single(sections, section, key, errors):
    found = values(sections, section, key)
    if len(found) != 1:
        errors.append(f"[{section}] needs exactly one {key} (has {len(found)})")
        return None
    return found[0]


def check_inf(text, driver_file="procguard.sys"):
    """Every rule violation found in `text` (empty when the INF is good)."""
    sections, errors = parse(text)
    strings = {k: v for k, v in sections.get("strings", []) if k}

    # [Version]
    if "version" not in sections:
        errors.append("no [Version] section")
    signature = single(sections, "version", "signature", errors)
    if signature is not None and signature.strip('"').lower() != "$windows nt$":
        errors.append(f'[Version] Signature must be "$WINDOWS NT$", not {signature}')
    for key in ("provider", "class", "classguid", "catalogfile"):
        single(sections, "version", key, errors)
    guid = (values(sections, "version", "classguid") or [""])[0]
    if guid and not re.fullmatch(r"\{[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\}", guid):
        errors.append(f"[Version] ClassGuid {guid} is not a GUID")
    driver_ver = single(sections, "version", "driverver", errors)
    if driver_ver is not None and not re.fullmatch(r"\d{2}/\d{2}/\d{4},\d+\.\d+\.\d+\.\d+", driver_ver.replace(" ", "")):
        errors.append(f"[Version] DriverVer {driver_ver} is not MM/DD/YYYY,a.b.c.d")
    if values(sections, "version", "pnplockdown") != ["1"]:
        errors.append("[Version] PnpLockdown must be 1")

    # Primitive driver shape.
    if "manufacturer" in sections:
        errors.append("a primitive driver INF has no [Manufacturer] section")
    for name in sections:
        if name == "defaultinstall" or name.startswith("defaultinstall.services") or name == "defaultinstall.nt":
            errors.append(f"[{name}] is not architecture-decorated (use [DefaultInstall.NTamd64...])")
        if name.startswith("defaultuninstall"):
            errors.append(f"[{name}]: a primitive driver has no DefaultUninstall section")
    if ARCH_SECTION not in sections:
        errors.append(f"no [{ARCH_SECTION}] section")

    # Files.
    copy_sections = [s.strip().lower() for v in values(sections, ARCH_SECTION, "copyfiles") for s in v.split(",")]
    if not copy_sections:
        errors.append(f"[{ARCH_SECTION}] copies no files")
    for section in copy_sections:
        if section not in sections:
            errors.append(f"CopyFiles names [{section}], which does not exist")
        elif not any(line.lower() == driver_file for _, line in sections[section]):
            errors.append(f"[{section}] does not copy {driver_file}")
    if values(sections, "destinationdirs", "defaultdestdir") != ["13"]:
        errors.append("DestinationDirs DefaultDestDir must be 13 (the driver store)")
    if not any(k == driver_file for k, _ in sections.get("sourcedisksfiles", [])):
        errors.append(f"[SourceDisksFiles] does not list {driver_file}")

    # Service.
    services = values(sections, ARCH_SECTION + ".services", "addservice")
    if len(services) != 1:
        errors.append(f"[{ARCH_SECTION}.Services] needs exactly one AddService (has {len(services)})")
    else:
        parts = [part.strip() for part in services[0].split(",")]
        install = parts[2].lower() if len(parts) > 2 else ""
        if install not in sections:
            errors.append(f"AddService names [{install}], which does not exist")
        else:
            if values(sections, install, "servicetype") != ["1"]:
                errors.append(f"[{install}] ServiceType must be 1 (SERVICE_KERNEL_DRIVER)")
            start = values(sections, install, "starttype")
            if len(start) != 1 or start[0] not in {"0", "1", "2", "3", "4"}:
                errors.append(f"[{install}] StartType must be one documented value 0-4")
            if len(values(sections, install, "errorcontrol")) != 1:
                errors.append(f"[{install}] needs ErrorControl")
            binary = values(sections, install, "servicebinary")
            if binary != [f"%13%\\{driver_file}"]:
                errors.append(f"[{install}] ServiceBinary must be %13%\\{driver_file}")

    # KMDF.
    kmdf = values(sections, ARCH_SECTION + ".wdf", "kmdfservice")
    if len(kmdf) != 1:
        errors.append(f"[{ARCH_SECTION}.Wdf] needs exactly one KmdfService")
    else:
        parts = [part.strip() for part in kmdf[0].split(",")]
        wdf_section = parts[1].lower() if len(parts) > 1 else ""
        version = values(sections, wdf_section, "kmdflibraryversion")
        if not re.fullmatch(r"1\.\d+", version[0] if len(version) == 1 else ""):
            errors.append(f"[{wdf_section}] needs one KmdfLibraryVersion = 1.N")

    # %strings% all defined.
    for name, entries in sections.items():
        if name == "strings":
            continue
        for key, value in entries:
            for token in re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)%", f"{key or ''}={value}"):
                if token.lower() not in strings:
                    errors.append(f"[{name}] uses %{token}%, which [Strings] does not define")
    return errors
