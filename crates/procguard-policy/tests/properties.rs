//! Property tests. Case counts are fixed here (not taken from PROPTEST_CASES) so the
//! report can state them:
//! - `compiled_decision_equals_reference`: 1,500 policies x 8 processes x 8 requests
//!   (ask rules of both `on_timeout`s among the generated rules; every decision is
//!   also checked against the ask invariants of [`ask_invariants`])
//! - `many_requester_entries_use_every_table_chunk`: 100 policies of 50-63 requester-dependent rules x 10 processes x 8 requests
//! - `decode_inverts_encode`: 1,000 policies
//! - `decode_of_arbitrary_bytes_errs_or_reencodes_identically`: 20,000 byte strings
//! - `decode_of_mutated_blobs_errs_or_reencodes_identically`: 5,000 blobs
//! - `from_blob_fails_like_decode_on_invalid_policies`: 3,000 possibly invalid policies
//! - `record_words_round_trip_and_any_words_are_safe`: 1,000 policies x 8 processes
//!   x 8 arbitrary word arrays x 8 requests
//!
//! The two byte-level decode properties also check that `CompiledPolicy::from_blob`
//! fails exactly when `decode` does, with the same error (in its string-free form).

mod support;

use proptest::prelude::*;

use procguard_policy::blob::{blob_checksum, decode, encode};
use procguard_policy::reference::evaluate;
use std::sync::Arc;

use procguard_policy::{
    CompiledPolicy, Mode, ProcessRecord, Requester, RequesterPart, TargetPart, RECORD_WORDS,
};

use support::*;

/// The kernel path (`from_blob`: view, validation and canonical check without
/// infallible allocation) accepts and rejects exactly what `decode` does.
fn same_outcome(b: &[u8]) -> Result<(), TestCaseError> {
    let kernel = CompiledPolicy::from_blob(b).err();
    let user = decode(b).err().map(|e| e.without_strings());
    prop_assert_eq!(kernel, user);
    Ok(())
}

/// The ask invariants, computed from the rules directly (not through the
/// reference evaluator's accumulation):
/// - an ask never adds a bit: for any answer `a`, `access & a` is within the
///   desired access, and so is the fallback;
/// - `ask.rights` = what the enforce rules left & the union of the applicable ask
///   rules' strips; `ask.fallback_strip` = the same for the `on_timeout = strip`
///   ones (so the fallback is exactly `access & !fallback_strip`); `ask.rule` the
///   lowest applicable ask rule; `askable` = not a kernel handle, not a critical
///   requester;
/// - under an exemption no ask rule applies.
fn ask_invariants(
    p: &procguard_policy::Policy,
    t: &Ident,
    r: &Ident,
    q: &procguard_policy::HandleRequest,
    got: &procguard_policy::Decision,
    answers: &[u32],
) -> Result<(), TestCaseError> {
    use procguard_policy::reference::{requester_restricted, selector_matches};
    use procguard_policy::{is_critical_system_process, AskPlan, OnTimeout};
    let desired = q.desired_access;
    for a in answers
        .iter()
        .chain(&[0, u32::MAX, got.ask.rights, !got.ask.rights])
    {
        prop_assert_eq!(got.access & a & !desired, 0, "an answer added bits");
    }
    prop_assert_eq!(got.ask.fallback_access(got.access) & !desired, 0);
    let st = &p.settings;
    let critical = is_critical_system_process(&r.id());
    let exempt = (q.kernel_handle && st.exempt_kernel_handles)
        || (q.same_process && st.exempt_self)
        || (critical && st.exempt_critical_requesters);
    if exempt {
        prop_assert_eq!(
            got.ask,
            AskPlan::NONE,
            "an ask rule applied under an exemption"
        );
        prop_assert_eq!(got.access, desired);
        return Ok(());
    }
    let (mut enforce, mut ask, mut fallback, mut rule) = (0u32, 0u32, 0u32, None);
    for (i, rl) in p.rules.iter().enumerate() {
        let strip = rl.strip_for(q.object, q.operation);
        if strip == 0
            || !selector_matches(&rl.target, &t.id())
            || !requester_restricted(&rl.requester, &r.id())
        {
            continue;
        }
        match rl.mode {
            Mode::Enforce => enforce |= strip,
            Mode::Audit => {}
            Mode::Ask { on_timeout } => {
                ask |= strip;
                if on_timeout == OnTimeout::Strip {
                    fallback |= strip;
                }
                rule = rule.or(Some(i as u16));
            }
        }
    }
    let access = desired & !enforce;
    prop_assert_eq!(got.access, access);
    if access & ask == 0 {
        prop_assert_eq!(got.ask, AskPlan::NONE);
    } else {
        prop_assert_eq!(
            got.ask,
            AskPlan {
                rights: access & ask,
                fallback_strip: access & fallback,
                rule,
                askable: !q.kernel_handle && !critical,
            }
        );
        prop_assert!(got.audit, "an asked request is audited");
        prop_assert_eq!(
            got.ask.fallback_access(got.access),
            access & !(access & fallback)
        );
    }
    Ok(())
}

fn check_all(
    p: &procguard_policy::Policy,
    idents: &[Ident],
    reqs: &[procguard_policy::HandleRequest],
) -> Result<(), TestCaseError> {
    let c = CompiledPolicy::new(p).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let records: Vec<_> = idents.iter().map(|i| c.classify(&i.id())).collect();
    for (ti, t) in idents.iter().enumerate() {
        for (ri, r) in idents.iter().enumerate() {
            for q in reqs {
                let got = c.decide(&records[ti], &records[ri], q);
                prop_assert_eq!(got.access & !q.desired_access, 0, "decision added bits");
                let want = evaluate(p, &t.id(), &r.id(), q).decision;
                ask_invariants(p, t, r, q, &got, &[q.desired_access ^ 0x11, 0x1])?;
                prop_assert_eq!(
                    got,
                    want,
                    "target {:?} requester {:?} request {:?}",
                    t,
                    r,
                    q
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]
    #[test]
    fn compiled_decision_equals_reference(
        p in policy(1, 12),
        idents in prop::collection::vec(ident(), 8),
        reqs in prop::collection::vec(request(), 8),
    ) {
        check_all(&p, &idents, &reqs)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]
    #[test]
    fn many_requester_entries_use_every_table_chunk(
        p in dependent_policy(50, 64),
        idents in prop::collection::vec(ident(), 10),
        reqs in prop::collection::vec(request(), 8),
    ) {
        check_all(&p, &idents, &reqs)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn decode_inverts_encode(p in policy(0, 20)) {
        let b = encode(&p);
        prop_assert_eq!(decode(&b), Ok(p));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]
    #[test]
    fn decode_of_arbitrary_bytes_errs_or_reencodes_identically(
        mut b in prop::collection::vec(any::<u8>(), 0..400),
        fix_header in any::<bool>(),
    ) {
        if fix_header && b.len() >= 40 {
            // Give random bytes a valid magic, version, size, length and checksum so
            // the decoder's later checks are exercised too.
            b[..4].copy_from_slice(b"PGPB");
            b[4..6].copy_from_slice(&procguard_policy::blob::VERSION.to_le_bytes());
            b[6..8].copy_from_slice(&40u16.to_le_bytes());
            let len = b.len() as u32;
            b[8..12].copy_from_slice(&len.to_le_bytes());
            let c = blob_checksum(&b);
            b[12..16].copy_from_slice(&c.to_le_bytes());
        }
        same_outcome(&b)?;
        if let Ok(p) = decode(&b) {
            prop_assert_eq!(encode(&p), b);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]
    #[test]
    fn decode_of_mutated_blobs_errs_or_reencodes_identically(
        p in policy(1, 6),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut b = encode(&p);
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        let c = blob_checksum(&b);
        b[12..16].copy_from_slice(&c.to_le_bytes());
        same_outcome(&b)?;
        if let Ok(q) = decode(&b) {
            prop_assert_eq!(encode(&q), b);
        }
    }
}

/// Breaks a valid policy in one of many ways (or not at all).
fn break_policy(p: &mut procguard_policy::Policy, rule: usize, how: u8, other: usize) {
    let n = p.rules.len();
    match how {
        20 => p.settings.ask_timeout_ms = 0,
        21 => p.settings.ask_timeout_ms = 5001,
        _ => {}
    }
    if how == 1 {
        let name = p.rules[other % n].name.clone();
        p.rules[rule % n].name = name;
        return;
    }
    let r = &mut p.rules[rule % n];
    let s = |x: &str| -> Arc<str> { Arc::from(x) };
    match how {
        0 => r.name = s(""),
        2 => r.target.names.push(s("a\\b.exe")),
        3 => r.target.paths.push(s("C:\\x.exe")),
        4 => r.target.paths.push(s("\\a\\\\b")),
        5 => r.target.paths.push(s("\\a**\\b")),
        6 => r.requester = Requester::Only(procguard_policy::Selector::default()),
        7 => {
            r.requester = Requester::Only(procguard_policy::Selector {
                names: vec![s("CSRSS.EXE")],
                ..Default::default()
            })
        }
        8 => {
            r.requester = Requester::Only(procguard_policy::Selector {
                paths: vec![s("**\\lsass.exe")],
                ..Default::default()
            })
        }
        9 => {
            r.requester = Requester::Only(procguard_policy::Selector {
                pids: vec![4],
                ..Default::default()
            })
        }
        10 => {
            r.requester = Requester::AnyExcept(procguard_policy::Selector {
                pids: vec![0],
                ..Default::default()
            })
        }
        11 => {
            r.strip_process = 0;
            r.strip_thread = 0;
        }
        12 => r.strip_process |= 0x8000_0000,
        13 => r.objects.process = false,
        14 => {
            r.operations = procguard_policy::Operations {
                create: false,
                duplicate: false,
            }
        }
        15 => r.target = procguard_policy::Selector::default(),
        16 => r.mode = Mode::Audit,
        19 => {
            r.mode = Mode::Ask {
                on_timeout: procguard_policy::OnTimeout::Allow,
            }
        }

        17 => r.target.names.push(s("")),
        18 => r.target.paths.push(s("\\a\\*.exe\\")),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn from_blob_fails_like_decode_on_invalid_policies(
        mut p in policy(1, 8),
        breaks in prop::collection::vec((any::<usize>(), 0u8..25, any::<usize>()), 0..3),
        settings in settings(),
    ) {
        p.settings = settings;
        for (rule, how, other) in breaks {
            break_policy(&mut p, rule, how, other);
        }
        let b = encode(&p);
        same_outcome(&b)?;
        prop_assert_eq!(decode(&b).is_ok(), p.validate().is_ok());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn record_words_round_trip_and_any_words_are_safe(
        p in prop_oneof![policy(1, 12), dependent_policy(1, 20)],
        idents in prop::collection::vec(ident(), 8),
        words in prop::collection::vec(any::<[u64; RECORD_WORDS]>(), 8),
        reqs in prop::collection::vec(request(), 8),
    ) {
        let c = CompiledPolicy::new(&p).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        for i in &idents {
            let rec = c.classify(&i.id());
            prop_assert_eq!(ProcessRecord::from_words(rec.to_words()), rec);
        }
        let unknown = c.unknown_process_record();
        prop_assert_eq!(ProcessRecord::from_words(unknown.to_words()), unknown);
        for w in &words {
            // Every word array is the image of exactly one record.
            prop_assert_eq!(ProcessRecord::from_words(*w).to_words(), *w);
        }
        // Arbitrary records (entry bits beyond the policy's entries, any rule ids,
        // the critical bit) as target and requester: decide must not panic and never
        // adds access.
        let records: Vec<_> = words
            .iter()
            .map(|w| ProcessRecord::from_words(*w))
            .chain([ProcessRecord::from_words([u64::MAX; RECORD_WORDS])])
            .collect();
        for t in &records {
            for r in &records {
                for q in &reqs {
                    let d = c.decide(t, r, q);
                    prop_assert_eq!(d.access & !q.desired_access, 0);
                    prop_assert_eq!(d.would_strip & !q.desired_access, 0);
                }
            }
        }
    }
}

/// The words a reader copies for one decision (`ProcessRecord::target_words`
/// of the target, `REQUESTER_WORD` of the requester) decide exactly as the
/// whole records do, for every kind of request: the driver copies only those.
fn partial_records_decide_as_whole(
    c: &CompiledPolicy,
    target: &ProcessRecord,
    requester: &ProcessRecord,
    q: &procguard_policy::HandleRequest,
) -> Result<(), TestCaseError> {
    let target_words = target.to_words();
    let indices = ProcessRecord::target_words(q.object, q.operation);
    let target_part =
        TargetPart::from_words(q.object, q.operation, indices.map(|i| target_words[i]));
    let requester_part =
        RequesterPart::from_word(requester.to_words()[ProcessRecord::REQUESTER_WORD]);
    prop_assert_eq!(target_part, target.target_part(q.object, q.operation));
    prop_assert_eq!(requester_part, requester.requester_part());
    prop_assert_eq!(
        c.decide_parts(target_part, requester_part, q),
        c.decide(target, requester, q)
    );
    // The partial target is protected exactly when this kind of request can
    // be touched by a rule: if it is not, the whole record decides nothing.
    if !target_part.is_protected() {
        prop_assert_eq!(c.decide(target, requester, q).access, q.desired_access);
        prop_assert_eq!(c.decide(target, requester, q).rule, None);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn decisions_read_only_the_words_they_name(
        p in prop_oneof![policy(1, 12), dependent_policy(1, 20)],
        idents in prop::collection::vec(ident(), 6),
        words in prop::collection::vec(any::<[u64; RECORD_WORDS]>(), 3),
        reqs in prop::collection::vec(request(), 8),
    ) {
        let c = CompiledPolicy::new(&p).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let records: Vec<_> = idents
            .iter()
            .map(|i| c.classify(&i.id()))
            .chain([c.unknown_process_record()])
            .chain(words.iter().map(|w| ProcessRecord::from_words(*w)))
            .collect();
        for t in &records {
            for r in &records {
                for q in &reqs {
                    partial_records_decide_as_whole(&c, t, r, q)?;
                }
            }
        }
    }
}
