//! Decoding and compiling allocate in proportion to the blob, even for blobs built
//! to amplify (one long string referenced many times). Measured with a counting
//! global allocator; one test in this binary so no other thread allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use procguard_policy::blob::{blob_checksum, decode, encode};
use procguard_policy::{
    CompiledPolicy, Mode, Objects, Operations, Policy, Requester, Rule, Selector, Settings,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak bytes allocated (above what was live before) while running `f`.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn amplifying_policy() -> Policy {
    // 200 distinct 2,000-byte image names, each referenced by all 60 requester
    // selectors (60 distinct targets): 12,000 references to 400 KB of strings.
    let names: Vec<Arc<str>> = (0..200)
        .map(|i| Arc::from(format!("{i:04}{}.exe", "x".repeat(1992)).as_str()))
        .collect();
    let rules = (0..60)
        .map(|i| Rule {
            name: Arc::from(format!("r{i}").as_str()),
            target: Selector {
                pids: vec![1000 + i],
                ..Selector::default()
            },
            requester: Requester::Only(Selector {
                names: names.clone(),
                ..Selector::default()
            }),
            objects: Objects {
                process: true,
                thread: false,
            },
            operations: Operations {
                create: true,
                duplicate: true,
            },
            strip_process: 1,
            strip_thread: 0,
            mode: Mode::Enforce,
        })
        .collect();
    Policy {
        settings: Settings::default(),
        rules,
    }
}

#[test]
fn decode_and_compile_allocate_in_proportion_to_the_blob() {
    let p = amplifying_policy();
    let blob = encode(&p);
    let (decoded, decode_peak) = peak_during(|| decode(&blob));
    assert_eq!(decoded.as_ref(), Ok(&p));
    let (compiled, compile_peak) = peak_during(|| CompiledPolicy::from_blob(&blob));
    assert!(compiled.is_ok());
    let len = blob.len();
    println!("blob {len} bytes, decode peak {decode_peak} bytes, decode+compile peak {compile_peak} bytes");
    assert!(
        decode_peak <= 16 * len,
        "decode peak {decode_peak} for a {len}-byte blob"
    );
    assert!(
        compile_peak <= 24 * len,
        "compile peak {compile_peak} for a {len}-byte blob"
    );

    // Huge counts in a short blob: rejected before allocating for them.
    let mut b = encode(&Policy::default());
    b[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    let c = blob_checksum(&b);
    b[12..16].copy_from_slice(&c.to_le_bytes());
    let (r, peak) = peak_during(|| decode(&b));
    assert!(r.is_err());
    assert!(
        peak <= 1024,
        "peak {peak} while rejecting a {}-byte blob",
        b.len()
    );
}
