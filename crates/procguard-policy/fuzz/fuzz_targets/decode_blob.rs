//! Fuzzes the blob decoder: it must never panic, and whatever it accepts must
//! re-encode to the same bytes, compile, and decide within the request.
//!
//! Each input is decoded twice: as given (exercises the header and checksum
//! checks) and with its checksum field recomputed (so mutations reach everything
//! the checksum guards).
#![no_main]

use libfuzzer_sys::fuzz_target;
use procguard_policy::blob::blob_checksum;
use procguard_policy::{decode, encode, CompiledPolicy, HandleRequest, ObjectKind, Operation, ProcessIdentity};

fn check(data: &[u8]) {
    // The kernel path (no infallible allocation) fails exactly like decode.
    let kernel = CompiledPolicy::from_blob(data);
    let decoded = decode(data);
    assert_eq!(
        kernel.as_ref().err(),
        decoded.as_ref().err().map(|e| e.without_strings()).as_ref(),
        "from_blob and decode disagree"
    );
    let Ok(policy) = decoded else { return };
    assert_eq!(encode(&policy), data, "accepted blob is not canonical");
    let compiled = kernel.expect("decoded blobs compile");
    let ids = [
        ProcessIdentity { pid: 1234, image_path: "\\Device\\HarddiskVolume3\\Program Files\\Acme\\acme-agent.exe" },
        ProcessIdentity { pid: 4, image_path: "" },
        ProcessIdentity { pid: 77, image_path: "\\Device\\HarddiskVolume3\\Kiosk\\kiosk.exe" },
    ];
    let records: Vec<_> = ids.iter().map(|i| compiled.classify(i)).collect();
    for t in &records {
        for r in records.iter().chain([&compiled.unknown_process_record()]) {
            for (object, operation) in [(ObjectKind::Process, Operation::Create), (ObjectKind::Thread, Operation::Duplicate)] {
                let req = HandleRequest { object, operation, desired_access: 0x001F_FFFF, kernel_handle: false, same_process: false };
                let d = compiled.decide(t, r, &req);
                assert_eq!(d.access & !req.desired_access, 0, "decision added bits");
                assert_eq!(d.ask.rights & !d.access, 0, "asked about a right the request lost");
                assert_eq!(d.ask.fallback_strip & !d.ask.rights, 0, "fallback beyond the asked rights");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 16 {
        let mut sealed = data.to_vec();
        let crc = blob_checksum(&sealed);
        sealed[12..16].copy_from_slice(&crc.to_le_bytes());
        check(&sealed);
    }
});
