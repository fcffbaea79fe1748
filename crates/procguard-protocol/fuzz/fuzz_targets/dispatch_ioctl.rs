//! Arbitrary IOCTLs into the driver's dispatcher (over the in-memory target):
//! it must never panic, never report more bytes than the output buffer
//! holds, and a refused request must change nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procguard_protocol::dispatch::{dispatch, STATUS_BUFFER_OVERFLOW};
use procguard_protocol::ioctl::ALL_IOCTLS;
use procguard_protocol::memory_target::MemoryTarget;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Some((length, input)) = rest.split_first_chunk::<2>() else { return };
    // Mostly real codes, sometimes arbitrary ones.
    let code = match ALL_IOCTLS.get(usize::from(selector % 8)) {
        Some((code, _, _)) => *code,
        None => u32::from(selector).wrapping_mul(0x0101_0101),
    };
    let target = MemoryTarget::default();
    target.state.borrow_mut().policy = b"PGPB-initial".to_vec();
    target.state.borrow_mut().rule_counters = vec![(1, 2); usize::from(selector % 4)];
    let before = target.state.borrow().clone();
    let mut output = vec![0u8; usize::from(u16::from_le_bytes(*length)) % 4096];
    let completion = dispatch(&target, code, input, &mut output);
    assert!(completion.information <= output.len());
    if completion.status < 0 && completion.status != STATUS_BUFFER_OVERFLOW {
        let after = target.state.borrow();
        assert_eq!(after.mutations, before.mutations, "a refused request changed state");
        assert_eq!(after.policy, before.policy);
        assert_eq!(completion.information, 0);
    }
});
