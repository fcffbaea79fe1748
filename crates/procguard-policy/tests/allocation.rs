//! Allocation behaviour of the kernel entry points, measured with a counting global
//! allocator that can be told to fail the Nth allocation:
//!
//! - `from_blob` survives the failure of *each* of its allocations, one at a time,
//!   and reports `DecodeError::OutOfMemory` (never a panic);
//! - `classify`, `decide`, `unknown_process_record`, `policy_id`, `rule_count`,
//!   `settings` and `empty` allocate nothing at all;
//! - decoding and compiling allocate in proportion to the blob, even for blobs built
//!   to amplify (one long string referenced many times).
//!
//! A note on what "no panic" means here: with `std`, an *infallible* allocation
//! (`Vec::push` growing, `Box::new`, `format!`...) whose allocator returns null calls
//! `std::alloc::handle_alloc_error`, which by default prints "memory allocation of N
//! bytes failed" and **aborts the whole test process** (it does not unwind, so
//! `catch_unwind` cannot see it). So if the engine still had an infallible
//! allocation on these paths, this binary would die with SIGABRT and `cargo test`
//! would fail; `catch_unwind` additionally turns any ordinary panic into a test
//! failure with the failing allocation's number.
//!
//! Counting and failing are per thread (thread-local state, const-initialised, so
//! reading it never allocates): the test harness may run these tests in parallel.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use procguard_policy::blob::{blob_checksum, decode, encode};
use procguard_policy::{
    CompiledPolicy, DecodeError, HandleRequest, Mode, ObjectKind, Objects, Operation, Operations,
    Policy, ProcessIdentity, Requester, Rule, Selector, Settings,
};

struct Counting;

const NEVER: usize = usize::MAX;

thread_local! {
    /// Whether this thread's allocations are being counted.
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    /// Allocations (alloc, alloc_zeroed, realloc) since tracking started.
    static COUNT: Cell<usize> = const { Cell::new(0) };
    /// Number of the allocation to fail (0-based); `NEVER` for none.
    static FAIL_AT: Cell<usize> = const { Cell::new(NEVER) };
    /// Set when an allocation was failed on purpose.
    static FAILED: Cell<bool> = const { Cell::new(false) };
    /// Live bytes and their peak while tracking.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// Counts one allocation of `size` bytes; `false` if it must fail.
fn on_alloc(size: usize) -> bool {
    TRACKING.with(|t| {
        if !t.get() {
            return true;
        }
        let n = COUNT.with(|c| {
            let n = c.get();
            c.set(n + 1);
            n
        });
        if n == FAIL_AT.with(Cell::get) {
            FAILED.with(|f| f.set(true));
            return false;
        }
        let live = LIVE.with(|l| {
            l.set(l.get() + size);
            l.get()
        });
        PEAK.with(|p| p.set(p.get().max(live)));
        true
    })
}

fn on_dealloc(size: usize) {
    if TRACKING.with(Cell::get) {
        LIVE.with(|l| l.set(l.get().saturating_sub(size)));
    }
}

// SAFETY: forwards every call unchanged to the system allocator, except that it may
// return null from `alloc`/`alloc_zeroed`/`realloc` (allowed: it means failure; a
// failed `realloc` leaves the old block untouched).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !on_alloc(new_size) {
            return std::ptr::null_mut();
        }
        on_dealloc(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_dealloc(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` on this thread with allocation `fail_at` (0-based) failing; returns its
/// result, the number of allocations attempted, whether the failure was triggered,
/// and the peak of live bytes above the start.
fn tracked<T>(fail_at: usize, f: impl FnOnce() -> T) -> (T, usize, bool, usize) {
    COUNT.with(|c| c.set(0));
    FAIL_AT.with(|c| c.set(fail_at));
    FAILED.with(|c| c.set(false));
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (
        out,
        COUNT.with(Cell::get),
        FAILED.with(Cell::get),
        PEAK.with(Cell::get),
    )
}

fn example_blob() -> Vec<u8> {
    let src = include_str!("../examples/policy.toml");
    encode(&procguard_policy::toml::parse_policy(src).expect("example parses"))
}

fn selector(names: &[&str], paths: &[&str], pids: &[u32]) -> Selector {
    Selector {
        names: names.iter().map(|s| Arc::from(*s)).collect(),
        paths: paths.iter().map(|s| Arc::from(*s)).collect(),
        pids: pids.to_vec(),
    }
}

/// 300 rules: names (some differing only in case), PIDs, 60 distinct patterns,
/// 40 requester-dependent entries (`only` and `any except`, names, patterns, PIDs),
/// audit and enforce rules, so every table of the compiled form is non-trivial.
fn rich_policy() -> Policy {
    let rules = (0..300u32)
        .map(|i| {
            let name = format!("app{}.exe", i % 70);
            let upper = name.to_uppercase();
            let path = format!("\\Device\\HarddiskVolume*\\Vendor{}\\**\\*.exe", i % 60);
            let exact = format!("\\Device\\HarddiskVolume3\\Apps\\tool{}.exe", i % 13);
            let target = match i % 4 {
                0 => selector(&[&name], &[], &[]),
                1 => selector(&[&upper], &[&path], &[]),
                2 => selector(&[], &[&path, &exact], &[1000 + i % 17]),
                _ => selector(&[&name], &[], &[2000 + i]),
            };
            let req_name = format!("req{}.exe", i % 5);
            let req_path = format!("**\\Req{}\\*.exe", i % 3);
            let requester = if i % 7 == 0 && i < 150 {
                Requester::Only(selector(&[&req_name], &[&req_path], &[3000 + i % 4]))
            } else if i % 7 == 1 && i < 150 {
                Requester::AnyExcept(selector(&[&req_name, "svc.exe"], &[], &[]))
            } else {
                Requester::Any
            };
            Rule {
                name: Arc::from(format!("rule-{i}").as_str()),
                target,
                requester,
                objects: Objects {
                    process: true,
                    thread: i % 3 == 0,
                },
                operations: Operations {
                    create: true,
                    duplicate: i % 2 == 0,
                },
                strip_process: 1 << (i % 14),
                strip_thread: if i % 3 == 0 { 1 << (i % 13) } else { 0 },
                mode: if i % 5 == 0 {
                    Mode::Audit
                } else {
                    Mode::Enforce
                },
            }
        })
        .collect();
    let p = Policy {
        settings: Settings::default(),
        rules,
    };
    p.validate().expect("rich policy is valid");
    p
}

const IDENTITIES: &[ProcessIdentity<'static>] = &[
    ProcessIdentity {
        pid: 1234,
        image_path: "\\Device\\HarddiskVolume3\\Program Files\\Acme\\acme-agent.exe",
    },
    ProcessIdentity {
        pid: 77,
        image_path: "\\Device\\HarddiskVolume3\\Kiosk\\kiosk.exe",
    },
    ProcessIdentity {
        pid: 4,
        image_path: "",
    },
    ProcessIdentity {
        pid: 600,
        image_path: "\\SystemRoot\\System32\\csrss.exe",
    },
    ProcessIdentity {
        pid: 1003,
        image_path: "\\Device\\HarddiskVolume2\\Vendor7\\x\\y\\APP7.EXE",
    },
    ProcessIdentity {
        pid: 3001,
        image_path: "\\Device\\HarddiskVolume3\\Req1\\req1.exe",
    },
    ProcessIdentity {
        pid: 2010,
        image_path: "\\Device\\HarddiskVolume3\\Apps\\tool4.exe",
    },
    ProcessIdentity {
        pid: 9,
        image_path: "\\Device\\HarddiskVolume3\\Ünïcödé\\ǅ\\straße.exe",
    },
];

/// For every allocation `from_blob` makes on success, a run where exactly that one
/// fails: it must return `OutOfMemory` and not panic (nor abort: see the module doc).
/// Returns how many allocation numbers were checked.
fn every_allocation_failure_is_an_error(blob: &[u8]) -> usize {
    let (ok, count, failed, _) = tracked(NEVER, || CompiledPolicy::from_blob(blob));
    assert!(ok.is_ok(), "{:?}", ok.err());
    assert!(!failed);
    assert!(count > 0);
    for n in 0..count {
        let (r, _, failed, _) = tracked(n, || {
            catch_unwind(AssertUnwindSafe(|| CompiledPolicy::from_blob(blob)))
        });
        let r = r.unwrap_or_else(|_| panic!("from_blob panicked when allocation {n} failed"));
        assert!(failed, "allocation {n} of {count} was not attempted");
        assert_eq!(
            r.err(),
            Some(DecodeError::OutOfMemory),
            "allocation {n} of {count} failed"
        );
    }
    // The failures left no state behind.
    let (again, count2, _, _) = tracked(NEVER, || CompiledPolicy::from_blob(blob));
    assert!(again.is_ok());
    assert_eq!(count, count2);
    count
}

#[test]
fn from_blob_reports_every_allocation_failure_as_out_of_memory() {
    let example = every_allocation_failure_is_an_error(&example_blob());
    let rich = every_allocation_failure_is_an_error(&encode(&rich_policy()));
    println!("allocation failures checked: example policy {example}, rich policy {rich}");
    assert!(
        rich > 100,
        "the rich policy should exercise many allocations"
    );
}

#[test]
fn invalid_blobs_fail_cleanly_under_allocation_failure() {
    // The error paths allocate nothing infallibly either: an invalid policy or a
    // non-canonical blob with each allocation failed is OutOfMemory or its error.
    let mut p = rich_policy();
    p.rules[250].strip_process = 0;
    p.rules[250].strip_thread = 0;
    let mut dup = rich_policy();
    dup.rules[299].name = dup.rules[3].name.clone();
    for blob in [encode(&p), encode(&dup)] {
        let (err, count, _, _) = tracked(NEVER, || CompiledPolicy::from_blob(&blob).err());
        let err = err.expect("invalid");
        assert!(matches!(err, DecodeError::Invalid(_)), "{err:?}");
        assert_eq!(
            Some(err.clone()),
            decode(&blob).err().map(|e| e.without_strings())
        );
        for n in 0..count {
            let (r, _, _, _) = tracked(n, || {
                catch_unwind(AssertUnwindSafe(|| CompiledPolicy::from_blob(&blob).err()))
            });
            let r = r.unwrap_or_else(|_| panic!("panicked when allocation {n} failed"));
            assert!(
                r == Some(DecodeError::OutOfMemory) || r == Some(err.clone()),
                "{r:?}"
            );
        }
    }
}

#[test]
fn classify_decide_and_accessors_allocate_nothing() {
    let requests = [
        (ObjectKind::Process, Operation::Create),
        (ObjectKind::Process, Operation::Duplicate),
        (ObjectKind::Thread, Operation::Create),
        (ObjectKind::Thread, Operation::Duplicate),
    ]
    .map(|(object, operation)| HandleRequest {
        object,
        operation,
        desired_access: 0x001F_FFFF,
        kernel_handle: false,
        same_process: false,
    });
    let rich = encode(&rich_policy());
    let mut protected = 0;
    for blob in [example_blob(), rich] {
        let c = CompiledPolicy::from_blob(&blob).expect("valid");
        // Every allocation would fail (fail_at = 0): none may be attempted.
        let ((records, unknown, misc), count, failed, _) = tracked(0, || {
            let mut records = [procguard_policy::ProcessRecord::EMPTY; 8];
            for (r, id) in records.iter_mut().zip(IDENTITIES) {
                *r = c.classify(id);
            }
            let unknown = c.unknown_process_record();
            let misc = (c.policy_id(), c.rule_count(), c.settings());
            let mut any = false;
            for t in &records {
                for r in records.iter().chain([&unknown]) {
                    for q in &requests {
                        let d = c.decide(t, r, q);
                        any |= d.access != q.desired_access;
                    }
                }
            }
            assert!(any, "some request should be restricted");
            (records, unknown, misc)
        });
        assert_eq!(count, 0, "classify/decide/accessors allocated");
        assert!(!failed);
        assert_eq!(misc.1, c.rule_count());
        protected += records.iter().filter(|r| r.is_protected()).count();
        let _ = unknown;
    }
    assert!(
        protected >= 4,
        "the identities should hit rules ({protected})"
    );
    let (e, count, _, _) = tracked(0, CompiledPolicy::empty);
    assert_eq!(count, 0, "empty() allocated");
    assert_eq!(e.rule_count(), 0);
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
    let (decoded, _, _, decode_peak) = tracked(NEVER, || decode(&blob));
    assert_eq!(decoded.as_ref(), Ok(&p));
    let (compiled, _, _, compile_peak) = tracked(NEVER, || CompiledPolicy::from_blob(&blob));
    assert!(compiled.is_ok());
    let len = blob.len();
    println!("blob {len} bytes, decode peak {decode_peak} bytes, compile (from_blob) peak {compile_peak} bytes");
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
    let (r, _, _, peak) = tracked(NEVER, || decode(&b));
    assert!(r.is_err());
    assert!(
        peak <= 1024,
        "peak {peak} while rejecting a {}-byte blob",
        b.len()
    );
}
