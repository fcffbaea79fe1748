"""The driver catalog (`procguard.cat`) that `cargo xtask package` writes.

The catalog DER is written by crates/xtask/src/catalog.rs; these tests check it
with tools that share none of that code: osslsigncode (recomputes the
Authenticode hash of the .sys and looks it up; verifies the signature),
sha1sum (the .inf member hash), openssl (parses the PKCS#7; verifies the RSA
signature over the authenticated attributes) and a small DER reader and
Authenticode hash written here. Each check is also shown to fail on a broken
copy.
"""

import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(os.environ.get("PROCGUARD_PACKAGE", REPO / "package"))
CAT = PACKAGE / "procguard.cat"
SYS = PACKAGE / "procguard.sys"
INF = PACKAGE / "procguard.inf"

OID_CTL = "1.3.6.1.4.1.311.10.1"


def run(*args):
    return subprocess.run([str(arg) for arg in args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def cert_pem(tmp_path_factory):
    pem = tmp_path_factory.mktemp("cert") / "cert.pem"
    subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(PACKAGE / "procguard.cer"), "-out", str(pem)], check=True
    )
    return pem


@pytest.fixture(scope="module")
def other_pem(tmp_path_factory):
    """A different self-signed code-signing certificate with the same subject."""
    folder = tmp_path_factory.mktemp("other")
    pem = folder / "other.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(folder / "other.key"), "-out", str(pem),
         "-subj", "/CN=procguard Test Signing", "-addext", "extendedKeyUsage=codeSigning"],
        check=True, capture_output=True,
    )
    return pem


# --- a minimal DER reader (independent of the Rust writer) -------------------


def tlv(data, offset):
    """(tag, content start, content end) of the element at offset."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        assert 1 <= count <= 4, "indefinite or huge length"
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    assert end <= len(data), "element runs past its parent"
    return tag, start, end


def children(data, start, end):
    out = []
    while start < end:
        tag, content, stop = tlv(data, start)
        out.append((tag, start, content, stop))
        start = stop
    assert start == end
    return out


def oid_text(raw):
    arcs, value = [], 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first] + arcs[1:])


def signed_data(data):
    tag, start, end = tlv(data, 0)
    assert tag == 0x30
    (oid_tag, _, oid_start, oid_end), (explicit, _, inner_start, inner_end) = children(data, start, end)
    assert oid_tag == 0x06 and oid_text(data[oid_start:oid_end]) == "1.2.840.113549.1.7.2"
    assert explicit == 0xA0
    (sd_tag, _, sd_start, sd_end), = children(data, inner_start, inner_end)
    assert sd_tag == 0x30
    return children(data, sd_start, sd_end)


def ctl_parts(data):
    """The CTL's (outer element, content start, content end) and its fields."""
    parts = signed_data(data)
    _, _, ci_start, ci_end = parts[2]
    (oid_tag, _, oid_start, oid_end), (_, _, inner_start, inner_end) = children(data, ci_start, ci_end)
    assert oid_text(data[oid_start:oid_end]) == OID_CTL
    (ctl_tag, ctl_offset, ctl_start, ctl_end), = children(data, inner_start, inner_end)
    assert ctl_tag == 0x30
    return (ctl_offset, ctl_start, ctl_end), children(data, ctl_start, ctl_end)


def members(data):
    """{uppercase hex identifier: (File name, digest in the indirect data)}."""
    _, fields = ctl_parts(data)
    sequence = [field for field in fields if field[0] == 0x30][2]  # usage, algorithm, members
    found = {}
    for _, _, start, end in children(data, sequence[2], sequence[3]):
        (_, _, id_start, id_end), (set_tag, _, set_start, set_end) = children(data, start, end)
        identifier = data[id_start:id_end].decode("utf-16-le").rstrip("\0")
        assert set_tag == 0x31
        name, digest = None, None
        for _, _, a_start, a_end in children(data, set_start, set_end):
            (_, _, o_start, o_end), (_, _, v_start, v_end) = children(data, a_start, a_end)
            oid = oid_text(data[o_start:o_end])
            (_, _, value_start, value_end), = children(data, v_start, v_end)
            value = children(data, value_start, value_end)
            if oid == "1.3.6.1.4.1.311.12.2.1":
                tag_name = data[value[0][2] : value[0][3]].decode("utf-16-be")
                text = data[value[2][2] : value[2][3]].decode("utf-16-le").rstrip("\0")
                if tag_name == "File":
                    name = text
            elif oid == "1.3.6.1.4.1.311.2.1.4":
                _, _, di_start, di_end = value[1]
                digest = data[children(data, di_start, di_end)[1][2] : di_end].hex().upper()
        found[identifier] = (name, digest)
    return found


def authenticode_sha1(image):
    """Authenticode SHA-1 of a PE32+ image, written from the PE/COFF spec."""
    optional = struct.unpack_from("<I", image, 0x3C)[0] + 24
    assert struct.unpack_from("<H", image, optional)[0] == 0x20B
    checksum = optional + 64
    security = optional + 112 + 4 * 8
    table, size = struct.unpack_from("<II", image, security)
    end = table if table and size else len(image)
    digest = hashlib.sha1()
    digest.update(image[:checksum])
    digest.update(image[checksum + 4 : security])
    digest.update(image[security + 8 : end])
    digest.update(b"\0" * (-end % 8))
    return digest.hexdigest().upper()


def in_catalog(data, hex_hash):
    return (hex_hash.upper() + "\0").encode("utf-16-le") in data


# --- the tests -----------------------------------------------------------------


def test_openssl_parses_the_catalog_as_pkcs7_with_ctl_content():
    printed = run("openssl", "pkcs7", "-inform", "DER", "-in", CAT, "-print", "-noout")
    assert printed.returncode == 0, printed.stderr
    assert "pkcs7-signedData" in printed.stdout and OID_CTL in printed.stdout
    parsed = run("openssl", "asn1parse", "-inform", "DER", "-in", CAT)
    assert parsed.returncode == 0, parsed.stderr
    for oid in ("1.3.6.1.4.1.311.12.1.1", "1.3.6.1.4.1.311.12.1.2", "1.3.6.1.4.1.311.12.2.1",
                "1.3.6.1.4.1.311.12.2.2", "1.3.6.1.4.1.311.2.1.4", "1.3.6.1.4.1.311.2.1.15",
                "1.3.6.1.4.1.311.2.1.25"):
        assert oid in parsed.stdout, oid
    assert "UTCTIME" in parsed.stdout


def test_catalog_lists_the_sys_and_the_inf_sorted_with_windows_10_x64_attributes():
    data = CAT.read_bytes()
    listed = members(data)
    assert sorted(name for name, _ in listed.values()) == ["procguard.inf", "procguard.sys"]
    assert list(listed) == sorted(listed)
    for identifier, (_, digest) in listed.items():
        assert identifier == digest and len(identifier) == 40
    assert "_v100_X64\0".encode("utf-16-le") in data
    assert "2:10.0\0".encode("utf-16-le") in data
    assert "{C689AAB8-8E78-11D0-8C47-00C04FC295EE}".encode("utf-16-be") in data
    assert "{DE351A42-8E59-11D0-8C47-00C04FC295EE}".encode("utf-16-be") in data
    (_, fields) = ctl_parts(data)
    assert data[fields[1][2] : fields[1][3]].__len__() == 16  # ListIdentifier
    assert fields[-1][0] == 0xA0  # catalog attributes


def test_inf_member_hash_is_its_sha1sum_and_sys_member_is_its_authenticode_hash():
    data = CAT.read_bytes()
    listed = members(data)
    sha1sum = run("sha1sum", INF).stdout.split()[0].upper()
    assert listed[sha1sum][0] == "procguard.inf"
    pe_hash = authenticode_sha1(SYS.read_bytes())
    assert listed[pe_hash][0] == "procguard.sys"


def test_osslsigncode_finds_the_sys_authenticode_hash_in_the_catalog(cert_pem, tmp_path):
    result = run("osslsigncode", "verify", "-CAfile", cert_pem, "-catalog", CAT, "-in", SYS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Signature verification: ok" in result.stdout
    pe_hash = authenticode_sha1(SYS.read_bytes())
    assert f"Calculated message digest : {pe_hash}" in result.stdout

    # A copy with one code byte changed is not in the catalog.
    image = bytearray(SYS.read_bytes())
    image[0x1010] ^= 0xFF
    broken = tmp_path / "procguard.sys"
    broken.write_bytes(bytes(image))
    bad = run("osslsigncode", "verify", "-CAfile", cert_pem, "-catalog", CAT, "-in", broken)
    assert bad.returncode != 0
    assert "Catalog verification: failed" in bad.stdout + bad.stderr


def test_a_changed_inf_no_longer_matches_the_catalog(tmp_path):
    data = CAT.read_bytes()
    assert in_catalog(data, hashlib.sha1(INF.read_bytes()).hexdigest())
    inf = bytearray(INF.read_bytes())
    inf[len(inf) // 2] ^= 0x01
    broken = tmp_path / "procguard.inf"
    broken.write_bytes(bytes(inf))
    sha1sum = run("sha1sum", broken).stdout.split()[0]
    assert not in_catalog(data, sha1sum)
    assert sha1sum.upper() not in members(data)


def test_signature_verifies_against_the_test_certificate_only(cert_pem, other_pem):
    good = run("osslsigncode", "verify", "-CAfile", cert_pem, "-in", CAT)
    assert good.returncode == 0 and "Signature verification: ok" in good.stdout, good.stdout + good.stderr
    system = run("osslsigncode", "verify", "-in", CAT)
    assert system.returncode != 0
    other = run("osslsigncode", "verify", "-CAfile", other_pem, "-in", CAT)
    assert other.returncode != 0


def test_openssl_verifies_the_rsa_signature_over_the_ctl_content(tmp_path, cert_pem):
    """Authenticode-style: the message digest covers the CTL without its
    outer SEQUENCE header; the signature covers the authenticated attributes
    re-tagged as a SET."""
    data = CAT.read_bytes()
    (_, ctl_start, ctl_end), _ = ctl_parts(data)
    content_digest = hashlib.sha256(data[ctl_start:ctl_end]).digest()

    parts = signed_data(data)
    signer_set = parts[-1]
    assert signer_set[0] == 0x31
    (_, _, si_start, si_end), = children(data, signer_set[2], signer_set[3])
    signer = children(data, si_start, si_end)
    attrs = next(part for part in signer if part[0] == 0xA0)
    signature = signer[-1] if signer[-1][0] == 0x04 else next(p for p in signer if p[0] == 0x04)
    assert content_digest in data[attrs[2] : attrs[3]], "messageDigest is not the SHA-256 of the CTL content"

    attrs_der = b"\x31" + data[attrs[1] + 1 : attrs[3]]
    (tmp_path / "attrs.der").write_bytes(attrs_der)
    (tmp_path / "sig.bin").write_bytes(data[signature[2] : signature[3]])
    subprocess.run(["openssl", "x509", "-in", str(cert_pem), "-pubkey", "-noout", "-out", str(tmp_path / "pub.pem")], check=True)
    verify = ["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature", str(tmp_path / "sig.bin")]
    good = run(*verify, tmp_path / "attrs.der")
    assert good.returncode == 0 and "Verified OK" in good.stdout, good.stdout + good.stderr

    tampered = bytearray(attrs_der)
    tampered[-1] ^= 0x01
    (tmp_path / "tampered.der").write_bytes(bytes(tampered))
    assert run(*verify, tmp_path / "tampered.der").returncode != 0
