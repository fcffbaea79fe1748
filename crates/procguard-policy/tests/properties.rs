//! Property tests. Case counts are fixed here (not taken from PROPTEST_CASES) so the
//! report can state them:
//! - `compiled_decision_equals_reference`: 1,500 policies x 8 processes x 8 requests
//! - `many_requester_entries_use_every_table_chunk`: 100 policies of 50-63 requester-dependent rules x 10 processes x 8 requests
//! - `decode_inverts_encode`: 1,000 policies
//! - `decode_of_arbitrary_bytes_errs_or_reencodes_identically`: 20,000 byte strings
//! - `decode_of_mutated_blobs_errs_or_reencodes_identically`: 5,000 blobs

mod support;

use proptest::prelude::*;

use procguard_policy::blob::{blob_checksum, decode, encode};
use procguard_policy::reference::evaluate;
use procguard_policy::CompiledPolicy;

use support::*;

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
            b[4..6].copy_from_slice(&1u16.to_le_bytes());
            b[6..8].copy_from_slice(&40u16.to_le_bytes());
            let len = b.len() as u32;
            b[8..12].copy_from_slice(&len.to_le_bytes());
            let c = blob_checksum(&b);
            b[12..16].copy_from_slice(&c.to_le_bytes());
        }
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
        if let Ok(q) = decode(&b) {
            prop_assert_eq!(encode(&q), b);
        }
    }
}
