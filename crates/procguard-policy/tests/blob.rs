//! The blob codec: round trip, one test per malformation, and the Python encoder of
//! FORMAT.md producing the same bytes.

use procguard_policy::blob::{blob_checksum, decode, encode, DecodeError, HEADER_SIZE};
use procguard_policy::toml::parse_policy;
use procguard_policy::{Policy, PolicyError, RuleError};

fn example() -> Policy {
    parse_policy(include_str!("../examples/policy.toml")).unwrap()
}

/// Rewrites the checksum so a mutation is not caught by it.
fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let c = blob_checksum(&b);
    b[12..16].copy_from_slice(&c.to_le_bytes());
    b
}

fn put(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn rules_offset(b: &[u8]) -> usize {
    let n = u32::from_le_bytes(b[20..24].try_into().unwrap()) as usize;
    let d = u32::from_le_bytes(b[28..32].try_into().unwrap()) as usize;
    (HEADER_SIZE + 8 * n + d).div_ceil(4) * 4
}

#[test]
fn round_trip_example() {
    let p = example();
    let b = encode(&p);
    assert_eq!(decode(&b).unwrap(), p);
    assert_eq!(encode(&decode(&b).unwrap()), b);
}

#[test]
fn strings_are_stored_once() {
    let p = example();
    let b = encode(&p);
    let count = b
        .windows(b"acme-agent.exe".len())
        .filter(|w| *w == b"acme-agent.exe")
        .count();
    assert_eq!(
        count, 1,
        "acme-agent.exe is used by two rules but stored once"
    );
}

#[test]
fn header_errors() {
    let b = encode(&example());
    assert_eq!(decode(&b[..10]), Err(DecodeError::TooShort { len: 10 }));
    let mut m = b.clone();
    m[0] = b'X';
    assert_eq!(decode(&m), Err(DecodeError::BadMagic));
    // Version 1 (before ask rules) and anything newer are refused.
    for version in [0u8, 1, 3] {
        let mut m = b.clone();
        m[4] = version;
        assert_eq!(
            decode(&m),
            Err(DecodeError::UnsupportedVersion {
                version: version.into()
            })
        );
    }
    let mut m = b.clone();
    m[6] = 41;
    assert_eq!(decode(&m), Err(DecodeError::BadHeaderSize { size: 41 }));
    let mut m = b.clone();
    m.push(0);
    assert_eq!(
        decode(&m),
        Err(DecodeError::LengthMismatch {
            declared: b.len() as u32,
            actual: b.len() + 1
        })
    );
    let big = vec![0u8; procguard_policy::blob::MAX_BLOB_SIZE + 1];
    assert!(matches!(decode(&big), Err(DecodeError::TooLarge { .. })));
}

#[test]
fn any_flipped_bit_is_caught() {
    let b = encode(&example());
    for i in 16..b.len() {
        let mut m = b.clone();
        m[i] ^= 0x10;
        assert!(
            matches!(decode(&m), Err(DecodeError::ChecksumMismatch { .. })),
            "byte {i}"
        );
    }
}

#[test]
fn reserved_bits_are_rejected() {
    let b = encode(&example());
    let mut m = b.clone();
    put(&mut m, 16, 8 | 7);
    assert_eq!(
        decode(&reseal(m)),
        Err(DecodeError::ReservedBits {
            field: "settings",
            offset: 16
        })
    );
    let mut m = b.clone();
    put(&mut m, 36, 1);
    assert_eq!(
        decode(&reseal(m)),
        Err(DecodeError::ReservedBits {
            field: "reserved header word",
            offset: 36
        })
    );
    let mut m = b.clone();
    let r = rules_offset(&b);
    m[r + 4] |= 4;
    assert_eq!(
        decode(&reseal(m)),
        Err(DecodeError::ReservedBits {
            field: "objects",
            offset: r + 4
        })
    );
}

#[test]
fn bad_enums_are_rejected() {
    let b = encode(&example());
    let r = rules_offset(&b);
    for value in [4u8, 0xFF] {
        let mut m = b.clone();
        m[r + 6] = value;
        assert_eq!(
            decode(&reseal(m)),
            Err(DecodeError::BadEnum {
                field: "mode",
                offset: r + 6,
                value
            })
        );
    }
    let mut m = b.clone();
    m[r + 7] = 3;
    assert_eq!(
        decode(&reseal(m)),
        Err(DecodeError::BadEnum {
            field: "requester kind",
            offset: r + 7,
            value: 3
        })
    );
}

#[test]
fn ask_timeout_is_the_header_word_at_32_and_bounded() {
    use procguard_policy::blob::ASK_TIMEOUT_OFFSET;
    use procguard_policy::{CompiledPolicy, PolicyFault};
    assert_eq!(ASK_TIMEOUT_OFFSET, 32);
    let mut p = example();
    let b = encode(&p);
    assert_eq!(
        b[32..36],
        250u32.to_le_bytes(),
        "the default is always written"
    );
    p.settings.ask_timeout_ms = 4321;
    let b = encode(&p);
    assert_eq!(b[32..36], 4321u32.to_le_bytes());
    assert_eq!(decode(&b).unwrap().settings.ask_timeout_ms, 4321);
    for ms in [1u32, 5000] {
        let mut m = b.clone();
        put(&mut m, 32, ms);
        assert_eq!(decode(&reseal(m)).unwrap().settings.ask_timeout_ms, ms);
    }
    for ms in [0u32, 5001, u32::MAX] {
        let mut m = b.clone();
        put(&mut m, 32, ms);
        let m = reseal(m);
        assert_eq!(
            decode(&m),
            Err(DecodeError::InvalidPolicy(
                PolicyError::AskTimeoutOutOfRange(ms)
            ))
        );
        assert_eq!(
            CompiledPolicy::from_blob(&m).err(),
            Some(DecodeError::Invalid(PolicyFault::AskTimeoutOutOfRange(ms)))
        );
    }
}

#[test]
fn ask_modes_are_bytes_2_and_3() {
    use procguard_policy::{Mode, OnTimeout};
    let b = encode(&example());
    let r = rules_offset(&b);
    for (byte, on_timeout) in [(2u8, OnTimeout::Strip), (3, OnTimeout::Allow)] {
        let mut m = b.clone();
        m[r + 6] = byte;
        let p = decode(&reseal(m)).unwrap();
        assert_eq!(p.rules[0].mode, Mode::Ask { on_timeout });
        assert_eq!(encode(&p)[r + 6], byte);
    }
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    let b = encode(&example());
    let mut m = b.clone();
    put(&mut m, 20, u32::MAX);
    assert_eq!(
        decode(&reseal(m)),
        Err(DecodeError::CountTooLarge {
            what: "string",
            count: u32::MAX
        })
    );
    let mut m = b.clone();
    put(&mut m, 24, 0x1000_0000);
    assert_eq!(
        decode(&reseal(m)),
        Err(DecodeError::CountTooLarge {
            what: "rule",
            count: 0x1000_0000
        })
    );
    let mut m = b.clone();
    put(&mut m, 28, 0x7FFF_FFFF);
    assert!(matches!(
        decode(&reseal(m)),
        Err(DecodeError::CountTooLarge {
            what: "string byte",
            ..
        })
    ));
    let mut m = b.clone();
    let r = rules_offset(&b);
    put(&mut m, r + 16, 0x4000_0000);
    assert!(matches!(
        decode(&reseal(m)),
        Err(DecodeError::CountTooLarge {
            what: "selector entry",
            ..
        })
    ));
}

#[test]
fn string_errors() {
    let b = encode(&example());
    let mut m = b.clone();
    put(&mut m, HEADER_SIZE + 4, 0xFFFF); // length of string 0
    assert_eq!(
        decode(&reseal(m)),
        Err(DecodeError::StringOutOfBounds { index: 0 })
    );
    let n = u32::from_le_bytes(b[20..24].try_into().unwrap()) as usize;
    let mut m = b.clone();
    m[HEADER_SIZE + 8 * n] = 0xFF; // first byte of string 0
    assert_eq!(
        decode(&reseal(m)),
        Err(DecodeError::StringNotUtf8 { index: 0 })
    );
    let mut m = b.clone();
    let r = rules_offset(&b);
    put(&mut m, r, 999);
    assert_eq!(
        decode(&reseal(m)),
        Err(DecodeError::BadStringIndex {
            offset: r,
            index: 999
        })
    );
}

#[test]
fn padding_truncation_and_trailing_bytes() {
    let b = encode(&example());
    let r = rules_offset(&b);
    let n = u32::from_le_bytes(b[20..24].try_into().unwrap()) as usize;
    let d = u32::from_le_bytes(b[28..32].try_into().unwrap()) as usize;
    let pad_at = HEADER_SIZE + 8 * n + d;
    if pad_at < r {
        let mut m = b.clone();
        m[pad_at] = 1;
        assert_eq!(decode(&reseal(m)), Err(DecodeError::BadPadding));
    }
    // One rule fewer declared: the last rule's bytes become trailing bytes.
    let mut m = b.clone();
    put(&mut m, 24, 2);
    assert!(matches!(
        decode(&reseal(m)),
        Err(DecodeError::TrailingBytes { .. })
    ));
    // One rule more declared than present: truncated.
    let mut m = b.clone();
    put(&mut m, 24, 4);
    let e = decode(&reseal(m)).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Truncated { .. } | DecodeError::CountTooLarge { .. }
        ),
        "{e:?}"
    );
}

#[test]
fn non_canonical_string_layout_is_rejected() {
    // Swap the order of the first two strings in the directory: offsets no longer
    // follow directory order.
    let b = encode(&example());
    let mut m = b.clone();
    let (e0, e1) = (HEADER_SIZE, HEADER_SIZE + 8);
    let first: Vec<u8> = m[e0..e0 + 8].to_vec();
    let second: Vec<u8> = m[e1..e1 + 8].to_vec();
    m[e0..e0 + 8].copy_from_slice(&second);
    m[e1..e1 + 8].copy_from_slice(&first);
    assert_eq!(decode(&reseal(m)), Err(DecodeError::NonCanonical));
}

#[test]
fn invalid_policy_in_well_formed_blob_is_rejected() {
    let mut p = example();
    p.rules[1].strip_process = 0;
    let b = encode(&p);
    assert_eq!(
        decode(&b),
        Err(DecodeError::InvalidPolicy(PolicyError::Rule {
            index: 1,
            error: RuleError::StripsNothing
        }))
    );
    let mut p = example();
    p.rules[1].name = p.rules[0].name.clone();
    assert!(matches!(
        decode(&encode(&p)),
        Err(DecodeError::InvalidPolicy(
            PolicyError::DuplicateRuleName { .. }
        ))
    ));
}

#[test]
fn python_encoder_in_format_md_produces_identical_bytes() {
    let doc = include_str!("../FORMAT.md");
    let start = doc.find("```python\n").unwrap() + "```python\n".len();
    let code = &doc[start..start + doc[start..].find("```").unwrap()];
    let script = format!(
        r#"{code}
rules = [
  dict(name="agent-no-tamper", objects=3, operations=3, mode=0, kind=2, strip_p={sp}, strip_t={st},
       target=(["acme-agent.exe"], [r"\Device\HarddiskVolume*\Program Files\Acme\**\*.exe"], []),
       requester=([], [r"\Device\HarddiskVolume*\Program Files\Acme\acme-updater.exe"], [])),
  dict(name="agent-no-read-audit", objects=1, operations=3, mode=1, kind=0, strip_p=0x10, strip_t=0,
       target=(["acme-agent.exe"], [], []), requester=None),
  dict(name="kiosk-no-debug", objects=3, operations=3, mode=0, kind=1, strip_p={kp}, strip_t={kt},
       target=([], [r"\Device\HarddiskVolume*\Kiosk\kiosk.exe"], []),
       requester=(["msedge.exe", "msedgewebview2.exe"], [], [])),
]
print(encode(7, rules).hex())
"#,
        sp = example().rules[0].strip_process,
        st = example().rules[0].strip_thread,
        kp = example().rules[2].strip_process,
        kt = example().rules[2].strip_thread,
    );
    let out = match std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            eprintln!("python3 not available; skipping");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex: String = encode(&example())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex);
}

#[test]
fn python_encoder_writes_ask_rules_and_the_timeout() {
    let src = r#"
[settings]
ask_timeout_ms = 40

[[rule]]
name = "ask-kill"
target = { name = "agent.exe" }
strip = ["PROCESS_TERMINATE", "THREAD_TERMINATE"]
mode = "ask"

[[rule]]
name = "ask-read"
target = { name = "agent.exe" }
requester = { name = "tool.exe" }
objects = "process"
strip = ["PROCESS_VM_READ"]
mode = "ask"
on_timeout = "allow"
"#;
    let p = parse_policy(src).unwrap();
    let doc = include_str!("../FORMAT.md");
    let start = doc.find("```python\n").unwrap() + "```python\n".len();
    let code = &doc[start..start + doc[start..].find("```").unwrap()];
    let script = format!(
        r#"{code}
rules = [
  dict(name="ask-kill", objects=3, operations=3, mode=2, kind=0, strip_p=1, strip_t=1,
       target=(["agent.exe"], [], []), requester=None),
  dict(name="ask-read", objects=1, operations=3, mode=3, kind=1, strip_p=0x10, strip_t=0,
       target=(["agent.exe"], [], []), requester=(["tool.exe"], [], [])),
]
print(encode(7, rules, ask_timeout_ms=40).hex())
"#
    );
    let Ok(out) = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
    else {
        eprintln!("python3 not available; skipping");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex: String = encode(&p).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex);
}

#[test]
fn empty_policy_is_the_compiled_empty_blob() {
    use procguard_policy::{CompiledPolicy, HandleRequest, ObjectKind, Operation, ProcessIdentity};
    let e = CompiledPolicy::empty();
    let c = CompiledPolicy::from_blob(&encode(&Policy::default())).unwrap();
    assert_eq!(e.policy_id(), c.policy_id());
    assert_eq!(
        e.policy_id(),
        procguard_policy::blob::policy_id_of(&Policy::default())
    );
    assert_eq!(e.settings(), procguard_policy::Settings::default());
    assert_eq!((e.rule_count(), c.rule_count()), (0, 0));
    let id = ProcessIdentity {
        pid: 1234,
        image_path: "\\Device\\HarddiskVolume3\\x.exe",
    };
    let rec = e.classify(&id);
    assert_eq!(rec, c.classify(&id));
    assert!(!rec.is_protected());
    assert_eq!(
        e.unknown_process_record(),
        procguard_policy::ProcessRecord::EMPTY
    );
    let q = HandleRequest {
        object: ObjectKind::Process,
        operation: Operation::Create,
        desired_access: 0x1F_FFFF,
        kernel_handle: false,
        same_process: false,
    };
    assert_eq!(e.decide(&rec, &rec, &q).access, 0x1F_FFFF);
}

#[test]
fn too_many_requester_entries_is_rejected_by_both_paths() {
    use procguard_policy::{CompiledPolicy, PolicyFault, Requester, Selector};
    let mut p = example();
    let template = p.rules[0].clone();
    p.rules.clear();
    for i in 0..64u32 {
        let mut r = template.clone();
        r.name = format!("r{i}").as_str().into();
        r.target = Selector {
            pids: vec![5000 + i],
            ..Selector::default()
        };
        r.requester = Requester::AnyExcept(Selector {
            pids: vec![7],
            ..Selector::default()
        });
        p.rules.push(r);
    }
    let b = encode(&p);
    assert_eq!(
        decode(&b),
        Err(DecodeError::InvalidPolicy(
            PolicyError::TooManyRequesterEntries(64)
        ))
    );
    assert_eq!(
        CompiledPolicy::from_blob(&b).err(),
        Some(DecodeError::Invalid(PolicyFault::TooManyRequesterEntries(
            64
        )))
    );
    p.rules.pop();
    let c = CompiledPolicy::from_blob(&encode(&p)).unwrap();
    assert_eq!(c.rule_count(), 63);
    assert_eq!(c.unknown_process_record().to_words()[7], (1u64 << 63) - 1);
}
