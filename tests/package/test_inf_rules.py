"""The stamped INF passes the primitive-driver rules, and each rule catches
the defect it is for (tests/package/inf_rules.py)."""

import re
from pathlib import Path

import pytest

from inf_rules import check_inf

PACKAGE = Path(__file__).resolve().parents[2] / "package"


@pytest.fixture(scope="module")
def inf():
    return (PACKAGE / "procguard.inf").read_bytes().decode("ascii")


def test_the_stamped_inf_passes_every_rule(inf):
    assert check_inf(inf) == []


BROKEN = {
    "manufacturer-section": (lambda t: t + "\r\n[Manufacturer]\r\n%ProviderName% = Models,NTamd64\r\n", "no [Manufacturer]"),
    "undecorated-defaultinstall": (lambda t: t.replace("[DefaultInstall.NTamd64]", "[DefaultInstall]"), "not architecture-decorated"),
    "defaultuninstall": (lambda t: t + "\r\n[DefaultUninstall.NTamd64]\r\nDelFiles = procguard.DriverFiles\r\n", "no DefaultUninstall"),
    "no-provider": (lambda t: re.sub(r"Provider\s*=.*\r\n", "", t), "exactly one provider"),
    "no-classguid": (lambda t: re.sub(r"ClassGuid\s*=.*\r\n", "", t), "exactly one classguid"),
    "bad-classguid": (lambda t: re.sub(r"ClassGuid\s*=.*\r\n", "ClassGuid = {not-a-guid}\r\n", t), "is not a GUID"),
    "no-catalog": (lambda t: re.sub(r"CatalogFile\s*=.*\r\n", "", t), "exactly one catalogfile"),
    "bad-driverver": (lambda t: re.sub(r"DriverVer\s*=.*\r\n", "DriverVer = 2026-11-27,1.0\r\n", t), "DriverVer"),
    "no-pnplockdown": (lambda t: re.sub(r"PnpLockdown\s*=.*\r\n", "", t), "PnpLockdown"),
    "destination-not-13": (lambda t: t.replace("DefaultDestDir = 13", "DefaultDestDir = 12"), "DefaultDestDir must be 13"),
    "user-mode-service": (lambda t: re.sub(r"ServiceType\s*=\s*1", "ServiceType    = 16", t), "ServiceType must be 1"),
    "bad-start-type": (lambda t: re.sub(r"StartType\s*=\s*1", "StartType      = 9", t), "StartType"),
    "binary-elsewhere": (lambda t: t.replace("%13%\\procguard.sys", "%12%\\procguard.sys"), "ServiceBinary"),
    "no-kmdf-version": (lambda t: re.sub(r"KmdfLibraryVersion\s*=.*\r\n", "", t), "KmdfLibraryVersion"),
    "missing-copy-section": (lambda t: t.replace("[procguard.DriverFiles]", "[other.Files]"), "does not exist"),
    "undefined-string": (lambda t: t.replace("%ServiceName%", "%NoSuchString%"), "does not define"),
    "file-not-in-source-disks": (lambda t: re.sub(r"procguard\.sys\s*=\s*1,,", "other.sys = 1,,", t), "SourceDisksFiles"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_rule_catches_a_broken_copy(inf, name):
    mutate, expected = BROKEN[name]
    broken = mutate(inf)
    assert broken != inf, f"the mutation {name} changed nothing"
    problems = check_inf(broken)
    assert any(expected.lower() in problem.lower() for problem in problems), problems
