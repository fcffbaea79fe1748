//! The driver catalog (`procguard.cat`): a PKCS#7 SignedData whose content is a
//! Microsoft certificate trust list (CTL) listing the hash of every file in the
//! package, the way `inf2cat /os:10_X64` makes one (a SHA-1 catalog).
//!
//! No available tool creates catalogs on Linux, so the DER is written here
//! (structure: `/work/shared/design/TOOLCHAIN.md`, "Driver catalog"); the
//! unsigned catalog is then signed by `osslsigncode`, which signs an existing
//! `.cat` (see [`crate::signing::make_catalog`]).
//!
//! Layout written (CTL, content type `1.3.6.1.4.1.311.10.1`):
//!
//! ```text
//! SEQUENCE {
//!   SEQUENCE { OID 1.3.6.1.4.1.311.12.1.1 }          -- subject usage: catalog list
//!   OCTET STRING (16 bytes)                           -- list identifier
//!   UTCTime                                           -- this update
//!   SEQUENCE { OID 1.3.6.1.4.1.311.12.1.2, NULL }     -- SHA-1 member identifiers
//!   SEQUENCE OF SEQUENCE {                            -- members, sorted by identifier
//!     OCTET STRING  -- uppercase hex hash, UTF-16LE, NUL-terminated
//!     SET OF Attribute { File, OSAttr, member info, indirect data }
//!   }
//!   [0] { SEQUENCE OF Extension { OID 1.3.6.1.4.1.311.12.2.1, OCTET STRING name/value } }
//! }
//! ```

use std::path::Path;

use sha1::{Digest, Sha1};

/// CTL content type (`szOID_CTL`).
pub const OID_CTL: &str = "1.3.6.1.4.1.311.10.1";
/// Subject usage: catalog list (`szOID_CATALOG_LIST`).
const OID_CATALOG_LIST: &str = "1.3.6.1.4.1.311.12.1.1";
/// Member identifiers are SHA-1 hashes (`szOID_CATALOG_LIST_MEMBER`).
const OID_CATALOG_LIST_MEMBER: &str = "1.3.6.1.4.1.311.12.1.2";
/// Catalog name/value attribute (`CAT_NAMEVALUE_OBJID`).
const OID_CAT_NAMEVALUE: &str = "1.3.6.1.4.1.311.12.2.1";
/// Catalog member information (`CAT_MEMBERINFO_OBJID`).
const OID_CAT_MEMBERINFO: &str = "1.3.6.1.4.1.311.12.2.2";
/// Authenticode indirect data (`SPC_INDIRECT_DATA_OBJID`).
const OID_SPC_INDIRECT_DATA: &str = "1.3.6.1.4.1.311.2.1.4";
/// Indirect data for a PE image (`SPC_PE_IMAGE_DATAOBJ`).
const OID_SPC_PE_IMAGE_DATA: &str = "1.3.6.1.4.1.311.2.1.15";
/// Indirect data for a flat file (`SPC_CAB_DATA_OBJID`, what catalogs use).
const OID_SPC_CAB_DATA: &str = "1.3.6.1.4.1.311.2.1.25";
/// SHA-1.
const OID_SHA1: &str = "1.3.14.3.2.26";
/// PKCS#7 signedData.
const OID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";

/// Subject interface package GUID of a PE image.
const GUID_PE: &str = "{C689AAB8-8E78-11D0-8C47-00C04FC295EE}";
/// Subject interface package GUID of a flat file.
const GUID_FLAT: &str = "{DE351A42-8E59-11D0-8C47-00C04FC295EE}";
/// Flags of every name/value attribute inf2cat writes
/// (`CRYPTCAT_ATTR_NAMEASCII | CRYPTCAT_ATTR_DATAASCII | CRYPTCAT_ATTR_AUTHENTICATED`).
const NAMEVALUE_FLAGS: i64 = 0x1001_0001;
/// What Authenticode puts where a link would be.
const OBSOLETE: &str = "<<<Obsolete>>>";

/// A minimal DER writer: each function returns one complete encoding.
pub mod der {
    /// Tag, definite length (short or long form), content.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let length = content.len();
        if length < 0x80 {
            out.push(length as u8);
        } else {
            let bytes = length.to_be_bytes();
            let skip = bytes.iter().take_while(|&&byte| byte == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    /// SEQUENCE of already encoded parts, in order.
    pub fn sequence(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    /// SET OF already encoded parts, sorted by encoding as DER requires.
    pub fn set(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut sorted = parts.to_vec();
        sorted.sort();
        tlv(0x31, &sorted.concat())
    }

    /// OBJECT IDENTIFIER from dotted text.
    pub fn oid(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u64> = dotted
            .split('.')
            .map(|arc| arc.parse().expect("numeric OID arc"))
            .collect();
        assert!(arcs.len() >= 2 && arcs[0] <= 2, "bad OID {dotted}");
        let mut content = Vec::new();
        let mut push_arc = |mut value: u64| {
            let mut groups = vec![(value & 0x7F) as u8];
            value >>= 7;
            while value > 0 {
                groups.push(0x80 | (value & 0x7F) as u8);
                value >>= 7;
            }
            content.extend(groups.iter().rev());
        };
        push_arc(arcs[0] * 40 + arcs[1]);
        for &arc in &arcs[2..] {
            push_arc(arc);
        }
        tlv(0x06, &content)
    }

    /// INTEGER (minimal two's complement).
    pub fn integer(value: i64) -> Vec<u8> {
        let bytes = value.to_be_bytes();
        let mut start = 0;
        while start < 7 {
            let redundant = (bytes[start] == 0x00 && bytes[start + 1] & 0x80 == 0)
                || (bytes[start] == 0xFF && bytes[start + 1] & 0x80 != 0);
            if !redundant {
                break;
            }
            start += 1;
        }
        tlv(0x02, &bytes[start..])
    }

    /// OCTET STRING.
    pub fn octet_string(bytes: &[u8]) -> Vec<u8> {
        tlv(0x04, bytes)
    }

    /// NULL.
    pub fn null() -> Vec<u8> {
        vec![0x05, 0x00]
    }

    /// BIT STRING with no unused bits.
    pub fn bit_string(bytes: &[u8]) -> Vec<u8> {
        let mut content = vec![0];
        content.extend_from_slice(bytes);
        tlv(0x03, &content)
    }

    /// UTCTime from `YYMMDDHHMMSSZ`.
    pub fn utc_time(text: &str) -> Vec<u8> {
        assert!(
            text.len() == 13 && text.ends_with('Z'),
            "bad UTCTime {text}"
        );
        tlv(0x17, text.as_bytes())
    }

    /// BMPString (UTF-16 big-endian).
    pub fn bmp_string(text: &str) -> Vec<u8> {
        tlv(0x1E, &utf16(text, false))
    }

    /// Constructed context-specific tag `[n]` around already encoded parts.
    pub fn context(number: u8, parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0xA0 | number, &parts.concat())
    }

    /// UTF-16 code units of `text`, big- or little-endian.
    pub fn utf16(text: &str, little_endian: bool) -> Vec<u8> {
        text.encode_utf16()
            .flat_map(|unit| {
                if little_endian {
                    unit.to_le_bytes()
                } else {
                    unit.to_be_bytes()
                }
            })
            .collect()
    }
}

/// NUL-terminated UTF-16LE, the form of catalog strings stored in OCTET STRINGs.
fn wide(text: &str) -> Vec<u8> {
    let mut bytes = der::utf16(text, true);
    bytes.extend_from_slice(&[0, 0]);
    bytes
}

/// `CatalogNameValue ::= SEQUENCE { tag BMPString, flags INTEGER, value OCTET STRING }`.
fn name_value(name: &str, value: &str) -> Vec<u8> {
    der::sequence(&[
        der::bmp_string(name),
        der::integer(NAMEVALUE_FLAGS),
        der::octet_string(&wide(value)),
    ])
}

/// `Attribute ::= SEQUENCE { type OID, values SET OF ANY }` with one value.
fn attribute(oid: &str, value: Vec<u8>) -> Vec<u8> {
    der::sequence(&[der::oid(oid), der::set(&[value])])
}

/// `SpcLink` file choice holding the obsolete marker: `[2] { [0] IMPLICIT BMPString }`.
fn obsolete_link() -> Vec<u8> {
    let string = der::tlv(0x80, &der::utf16(OBSOLETE, false));
    der::context(2, &[string])
}

/// What kind of subject a member is (how Windows hashes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A PE image: the Authenticode hash.
    Pe,
    /// Any other file: the hash of its bytes.
    Flat,
}

/// One catalogued file.
#[derive(Clone, Debug)]
pub struct Member {
    /// File name as listed (no directory).
    pub name: String,
    /// How it is hashed.
    pub kind: Kind,
    /// Its SHA-1 (Authenticode for PE images).
    pub sha1: [u8; 20],
}

impl Member {
    /// Hashes `bytes` as a file called `name`; PE images are recognised by content.
    pub fn new(name: &str, bytes: &[u8]) -> Result<Self, String> {
        let (kind, sha1) = if is_pe(bytes) {
            (Kind::Pe, authenticode_sha1(bytes)?)
        } else {
            (Kind::Flat, Sha1::digest(bytes).into())
        };
        Ok(Self {
            name: name.to_string(),
            kind,
            sha1,
        })
    }

    /// Uppercase hex of the hash.
    pub fn hex(&self) -> String {
        self.sha1.iter().map(|byte| format!("{byte:02X}")).collect()
    }

    fn encode(&self) -> Vec<u8> {
        let (guid, data) = match self.kind {
            Kind::Pe => (
                GUID_PE,
                der::sequence(&[
                    der::oid(OID_SPC_PE_IMAGE_DATA),
                    // SpcPeImageData { flags BIT STRING (empty), file [0] SpcLink }
                    der::sequence(&[der::bit_string(&[]), der::context(0, &[obsolete_link()])]),
                ]),
            ),
            Kind::Flat => (
                GUID_FLAT,
                der::sequence(&[der::oid(OID_SPC_CAB_DATA), obsolete_link()]),
            ),
        };
        let indirect = der::sequence(&[
            data,
            der::sequence(&[
                der::sequence(&[der::oid(OID_SHA1), der::null()]),
                der::octet_string(&self.sha1),
            ]),
        ]);
        let member_info = der::sequence(&[der::bmp_string(guid), der::integer(512)]);
        der::sequence(&[
            der::octet_string(&wide(&self.hex())),
            der::set(&[
                attribute(OID_CAT_NAMEVALUE, name_value("File", &self.name)),
                attribute(OID_CAT_NAMEVALUE, name_value("OSAttr", "2:10.0")),
                attribute(OID_CAT_MEMBERINFO, member_info),
                attribute(OID_SPC_INDIRECT_DATA, indirect),
            ]),
        ])
    }
}

fn is_pe(bytes: &[u8]) -> bool {
    bytes.len() > 0x40
        && bytes.starts_with(b"MZ")
        && read_u32(bytes, 0x3C).and_then(|offset| bytes.get(offset as usize..offset as usize + 4))
            == Some(b"PE\0\0".as_slice())
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    bytes
        .get(offset..offset + 4)
        .map(|slice| u32::from_le_bytes(slice.try_into().expect("4 bytes")))
}

/// The Authenticode SHA-1 of a PE image: every byte except the checksum, the
/// certificate-table directory entry and the certificate table itself, the
/// hashed length zero-padded to a multiple of 8 (as Windows and osslsigncode do).
pub fn authenticode_sha1(bytes: &[u8]) -> Result<[u8; 20], String> {
    let e_lfanew = read_u32(bytes, 0x3C).ok_or("PE: truncated DOS header")? as usize;
    let optional = e_lfanew + 24;
    let magic = bytes
        .get(optional..optional + 2)
        .map(|slice| u16::from_le_bytes([slice[0], slice[1]]))
        .ok_or("PE: truncated optional header")?;
    let directories = match magic {
        0x10B => optional + 96,
        0x20B => optional + 112,
        other => return Err(format!("PE: unknown optional header magic {other:#x}")),
    };
    let checksum = optional + 64;
    let security = directories + 4 * 8;
    let cert_offset = read_u32(bytes, security).ok_or("PE: truncated data directories")? as usize;
    let cert_size = read_u32(bytes, security + 4).ok_or("PE: truncated data directories")? as usize;
    let end = if cert_offset == 0 || cert_size == 0 {
        bytes.len()
    } else if cert_offset > bytes.len() || cert_offset + cert_size > bytes.len() {
        return Err("PE: certificate table outside the file".to_string());
    } else {
        cert_offset
    };
    if end < security + 8 {
        return Err("PE: headers outside the file".to_string());
    }
    let mut hasher = Sha1::new();
    hasher.update(&bytes[..checksum]);
    hasher.update(&bytes[checksum + 4..security]);
    hasher.update(&bytes[security + 8..end]);
    let padding = (8 - end % 8) % 8;
    hasher.update(&[0u8; 8][..padding]);
    Ok(hasher.finalize().into())
}

/// `YYMMDDHHMMSSZ` for seconds since the Unix epoch (years 1950–2049).
pub fn utc_time_text(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds = unix_seconds % 86_400;
    // Civil date from a day count (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        year % 100,
        month,
        day,
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The CTL content (`CertificateTrustList`) listing `members` for Windows 10 x64.
pub fn ctl(members: &[Member], unix_seconds: u64) -> Vec<u8> {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(Member::hex);
    // A list identifier derived from the members, so a rebuild of the same
    // files gives the same identifier (inf2cat uses a random one).
    let mut id_hasher = Sha1::new();
    for member in &sorted {
        id_hasher.update(member.name.as_bytes());
        id_hasher.update(member.sha1);
    }
    let id: [u8; 20] = id_hasher.finalize().into();
    let extensions = der::sequence(&[der::sequence(&[
        der::oid(OID_CAT_NAMEVALUE),
        der::octet_string(&name_value("OS", "_v100_X64")),
    ])]);
    der::sequence(&[
        der::sequence(&[der::oid(OID_CATALOG_LIST)]),
        der::octet_string(&id[..16]),
        der::utc_time(&utc_time_text(unix_seconds)),
        der::sequence(&[der::oid(OID_CATALOG_LIST_MEMBER), der::null()]),
        der::sequence(&sorted.iter().map(Member::encode).collect::<Vec<_>>()),
        der::context(0, &[extensions]),
    ])
}

/// The unsigned catalog: `ContentInfo { signedData { version 1, no digest
/// algorithms, CTL content, no signers } }`, what `makecat` writes before
/// signing and what `osslsigncode sign` accepts as a `.cat`.
pub fn unsigned_catalog(members: &[Member], unix_seconds: u64) -> Vec<u8> {
    let signed_data = der::sequence(&[
        der::integer(1),
        der::set(&[]),
        der::sequence(&[
            der::oid(OID_CTL),
            der::context(0, &[ctl(members, unix_seconds)]),
        ]),
        der::set(&[]),
    ]);
    der::sequence(&[der::oid(OID_SIGNED_DATA), der::context(0, &[signed_data])])
}

/// Writes the unsigned catalog of `files` to `out`.
pub fn write_unsigned(files: &[&Path], out: &Path) -> Result<(), String> {
    let mut members = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).map_err(|error| format!("{}: {error}", file.display()))?;
        let name = file
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| format!("{}: no file name", file.display()))?;
        members.push(Member::new(name, &bytes)?);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|error| format!("clock: {error}"))?
        .as_secs();
    std::fs::write(out, unsigned_catalog(&members, now))
        .map_err(|error| format!("{}: {error}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_form_lengths() {
        assert_eq!(der::octet_string(&[7; 3]), [0x04, 3, 7, 7, 7]);
        assert_eq!(der::octet_string(&[0; 127])[..2], [0x04, 0x7F]);
        let long = der::octet_string(&[0; 128]);
        assert_eq!(long[..3], [0x04, 0x81, 0x80]);
        assert_eq!(long.len(), 3 + 128);
        assert_eq!(der::octet_string(&[0; 255])[..3], [0x04, 0x81, 0xFF]);
        let longer = der::octet_string(&[0; 256]);
        assert_eq!(longer[..4], [0x04, 0x82, 0x01, 0x00]);
        assert_eq!(longer.len(), 4 + 256);
        assert_eq!(
            der::octet_string(&[0; 70_000])[..5],
            [0x04, 0x83, 0x01, 0x11, 0x70]
        );
    }

    #[test]
    fn oids_with_large_arcs() {
        assert_eq!(
            der::oid("1.3.6.1.4.1.311.10.1"),
            [0x06, 0x09, 0x2B, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x0A, 0x01]
        );
        assert_eq!(
            der::oid("1.3.14.3.2.26"),
            [0x06, 0x05, 0x2B, 0x0E, 0x03, 0x02, 0x1A]
        );
        assert_eq!(
            der::oid("1.2.840.113549.1.7.2"),
            [0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02]
        );
        assert_eq!(der::oid("2.999.128"), [0x06, 0x04, 0x88, 0x37, 0x81, 0x00]);
    }

    #[test]
    fn integers_are_minimal() {
        assert_eq!(der::integer(0), [0x02, 1, 0]);
        assert_eq!(der::integer(127), [0x02, 1, 0x7F]);
        assert_eq!(der::integer(128), [0x02, 2, 0x00, 0x80]);
        assert_eq!(der::integer(512), [0x02, 2, 0x02, 0x00]);
        assert_eq!(der::integer(-1), [0x02, 1, 0xFF]);
        assert_eq!(der::integer(-129), [0x02, 2, 0xFF, 0x7F]);
        assert_eq!(der::integer(0x1001_0001), [0x02, 4, 0x10, 0x01, 0x00, 0x01]);
    }

    #[test]
    fn sets_are_sorted_and_sequences_are_not() {
        let parts = [der::integer(5), der::bmp_string("A"), der::integer(2)];
        assert_eq!(
            der::set(&parts),
            [0x31, 10, 0x02, 1, 2, 0x02, 1, 5, 0x1E, 2, 0, b'A']
        );
        assert_eq!(
            der::sequence(&parts),
            [0x30, 10, 0x02, 1, 5, 0x1E, 2, 0, b'A', 0x02, 1, 2]
        );
        assert_eq!(der::set(&[]), [0x31, 0]);
    }

    #[test]
    fn strings_and_times() {
        assert_eq!(der::bmp_string("OS"), [0x1E, 4, 0, b'O', 0, b'S']);
        assert_eq!(wide("A1"), [b'A', 0, b'1', 0, 0, 0]);
        assert_eq!(utc_time_text(0), "700101000000Z");
        assert_eq!(utc_time_text(951_782_400), "000229000000Z");
        assert_eq!(utc_time_text(1_798_761_599), "261231235959Z");
    }

    #[test]
    fn members_are_sorted_by_identifier() {
        let a = Member::new("b.inf", b"first").unwrap();
        let b = Member::new("a.inf", b"second").unwrap();
        let content = ctl(&[a.clone(), b.clone()], 0);
        let position = |member: &Member| {
            let id = wide(&member.hex());
            content
                .windows(id.len())
                .position(|window| window == id.as_slice())
                .unwrap()
        };
        let (first, second) = if a.hex() < b.hex() {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert!(position(first) < position(second));
        assert_eq!(a.kind, Kind::Flat);
        assert_eq!(a.hex(), "E0996A37C13D44C3B06074939D43FA3759BD32C1");
    }

    /// A minimal PE32+ header: enough for the Authenticode ranges.
    fn tiny_pe(len: usize) -> Vec<u8> {
        let mut image = vec![0u8; len];
        image[..2].copy_from_slice(b"MZ");
        image[0x3C] = 0x40;
        image[0x40..0x44].copy_from_slice(b"PE\0\0");
        image[0x58..0x5A].copy_from_slice(&0x20Bu16.to_le_bytes());
        for (index, byte) in image.iter_mut().enumerate().skip(0x200) {
            *byte = index as u8 | 1;
        }
        image
    }

    #[test]
    fn authenticode_hash_pads_and_skips_checksum_and_signature() {
        let odd = tiny_pe(0x403);
        assert!(is_pe(&odd));
        let mut padded = odd.clone();
        padded.resize(0x408, 0);
        let hash = authenticode_sha1(&odd).unwrap();
        assert_eq!(authenticode_sha1(&padded).unwrap(), hash);
        assert_eq!(Member::new("x.sys", &odd).unwrap().kind, Kind::Pe);

        // Checksum (optional header + 64) and the security directory entry
        // (optional header + 112 + 32) are excluded; so is the table itself.
        let optional = 0x58;
        let mut signed = padded.clone();
        signed[optional + 64] = 0x55;
        let table = signed.len() as u32;
        signed[optional + 144..optional + 148].copy_from_slice(&table.to_le_bytes());
        signed[optional + 148..optional + 152].copy_from_slice(&16u32.to_le_bytes());
        signed.extend_from_slice(&[0xEE; 16]);
        assert_eq!(authenticode_sha1(&signed).unwrap(), hash);

        let mut changed = odd.clone();
        changed[0x300] ^= 1;
        assert_ne!(authenticode_sha1(&changed).unwrap(), hash);
    }
}
