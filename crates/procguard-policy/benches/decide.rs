//! Phase 2 (compiled vs reference evaluator) at 10, 1,000 and 10,000 rules, and
//! phase 1 at 1,000 rules, on the same inputs.
//!
//! Quick run: `cargo bench -p procguard-policy --bench decide -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use procguard_policy::reference::evaluate;
use procguard_policy::rights::{self, *};
use procguard_policy::{
    CompiledPolicy, HandleRequest, Mode, ObjectKind, Objects, OnTimeout, Operation, Operations,
    Policy, ProcessIdentity, ProcessRecord, Requester, Rule, Selector, Settings,
};

fn sel_name(n: String) -> Selector {
    Selector {
        names: vec![Arc::from(n.as_str())],
        ..Selector::default()
    }
}

/// A deterministic policy of `n` rules: image-name rules (4 per app), one path
/// pattern every 25 rules, a requester-dependent rule every 20 rules (at most 40),
/// an audit rule every 7.
fn policy(n: usize) -> Policy {
    let sets = rights::RIGHT_SETS;
    let mut rules = Vec::with_capacity(n);
    for i in 0..n {
        let mut target = sel_name(format!("app{}.exe", i / 4));
        if i % 25 == 3 {
            target.paths.push(Arc::from(
                format!(
                    "\\Device\\HarddiskVolume*\\Program Files\\Vendor{}\\*.exe",
                    (i / 4) % 10
                )
                .as_str(),
            ));
        }
        let requester = if i % 20 == 0 && i / 20 < 40 {
            if (i / 20) % 2 == 0 {
                Requester::Only(sel_name(format!("tool{}.exe", (i / 20) % 4)))
            } else {
                Requester::AnyExcept(sel_name(format!("tool{}.exe", (i / 20) % 4)))
            }
        } else {
            Requester::Any
        };
        let set = sets[i % sets.len()];
        rules.push(Rule {
            name: Arc::from(format!("rule-{i}").as_str()),
            target,
            requester,
            objects: Objects {
                process: true,
                thread: true,
            },
            operations: Operations {
                create: true,
                duplicate: i % 3 != 0,
            },
            strip_process: set.process,
            strip_thread: set.thread,
            mode: if i % 7 == 6 {
                Mode::Audit
            } else {
                Mode::Enforce
            },
        });
    }
    Policy {
        settings: Settings::default(),
        rules,
    }
}

struct Inputs {
    targets: Vec<String>,
    requesters: Vec<String>,
    requests: Vec<HandleRequest>,
}

fn inputs() -> Inputs {
    // Apps 0..2 exist in every policy size (the 10-rule policy has apps 0, 1, 2).
    let targets = (0..8)
        .map(|k| {
            format!(
                "\\Device\\HarddiskVolume3\\Program Files\\Vendor{}\\app{}.exe",
                k % 3,
                k % 3
            )
        })
        .collect();
    let requesters = (0..8)
        .map(|k| format!("\\Device\\HarddiskVolume3\\Tools\\tool{}.exe", k % 5))
        .collect();
    let desired = [
        PROCESS_TERMINATE,
        0x001F_FFFF,
        PROCESS_VM_READ | PROCESS_VM_WRITE,
        PROCESS_QUERY_LIMITED_INFORMATION,
    ];
    let mut requests = Vec::new();
    for d in &desired {
        for (object, operation) in [
            (ObjectKind::Process, Operation::Create),
            (ObjectKind::Thread, Operation::Duplicate),
        ] {
            requests.push(HandleRequest {
                object,
                operation,
                desired_access: *d,
                kernel_handle: false,
                same_process: false,
            });
        }
    }
    Inputs {
        targets,
        requesters,
        requests,
    }
}

fn id(pid: usize, path: &str) -> ProcessIdentity<'_> {
    ProcessIdentity {
        pid: 10_000 + pid as u32,
        image_path: path,
    }
}

fn phase2(c: &mut Criterion) {
    let inp = inputs();
    let mut g = c.benchmark_group("phase2");
    for n in [10usize, 1_000, 10_000] {
        let p = policy(n);
        let cp = CompiledPolicy::new(&p).expect("valid");
        let t: Vec<ProcessRecord> = inp
            .targets
            .iter()
            .enumerate()
            .map(|(i, s)| cp.classify(&id(i, s)))
            .collect();
        let r: Vec<ProcessRecord> = inp
            .requesters
            .iter()
            .enumerate()
            .map(|(i, s)| cp.classify(&id(100 + i, s)))
            .collect();
        // Sanity: the inputs are protected, and some request is actually changed.
        assert!(t.iter().all(ProcessRecord::is_protected));
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("compiled", n), &n, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let (tt, rr, q) = (
                    &t[i % 8],
                    &r[(i / 8) % 8],
                    &inp.requests[(i / 3) % inp.requests.len()],
                );
                black_box(cp.decide(black_box(tt), black_box(rr), black_box(q)))
            })
        });
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("reference", n), &n, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let (ti, ri) = (i % 8, (i / 8) % 8);
                let q = &inp.requests[(i / 3) % inp.requests.len()];
                black_box(evaluate(
                    black_box(&p),
                    &id(ti, &inp.targets[ti]),
                    &id(100 + ri, &inp.requesters[ri]),
                    black_box(q),
                ))
            })
        });
    }
    g.finish();
}

/// The documented worst case of phase 2: 63 requester-dependent entries that all
/// apply, so all 8 byte tables are read.
fn phase2_worst_case(c: &mut Criterion) {
    let rules = (0..63)
        .map(|i| Rule {
            name: Arc::from(format!("dep-{i}").as_str()),
            target: sel_name("victim.exe".to_string()),
            requester: Requester::AnyExcept(sel_name(format!("friend{i}.exe"))),
            objects: Objects {
                process: true,
                thread: true,
            },
            operations: Operations {
                create: true,
                duplicate: true,
            },
            strip_process: 1 << (i % 14),
            strip_thread: 1 << (i % 13),
            mode: Mode::Enforce,
        })
        .collect();
    let p = Policy {
        settings: Settings::default(),
        rules,
    };
    let cp = CompiledPolicy::new(&p).expect("valid");
    let t = cp.classify(&id(1, "\\Device\\HarddiskVolume3\\victim.exe"));
    let r = cp.classify(&id(2, "\\Device\\HarddiskVolume3\\stranger.exe"));
    let q = HandleRequest {
        object: ObjectKind::Process,
        operation: Operation::Create,
        desired_access: 0x001F_FFFF,
        kernel_handle: false,
        same_process: false,
    };
    assert_eq!(cp.decide(&t, &r, &q).access, 0x001F_FFFF & !0x3FFF);
    c.bench_function("phase2/compiled-worst-case/63-entries", |b| {
        b.iter(|| black_box(cp.decide(black_box(&t), black_box(&r), black_box(&q))))
    });
}

/// An asked request: the 1,000-rule policy plus two ask rules on one target
/// (one for any requester, one for a single requester), both applying.
fn phase2_ask(c: &mut Criterion) {
    let mut p = policy(1_000);
    for (i, requester) in [
        Requester::Any,
        Requester::Only(sel_name("tool1.exe".to_string())),
    ]
    .into_iter()
    .enumerate()
    {
        p.rules.push(Rule {
            name: Arc::from(format!("ask-{i}").as_str()),
            target: sel_name("victim.exe".to_string()),
            requester,
            objects: Objects {
                process: true,
                thread: true,
            },
            operations: Operations {
                create: true,
                duplicate: true,
            },
            strip_process: PROCESS_TERMINATE << i,
            strip_thread: THREAD_TERMINATE,
            mode: Mode::Ask {
                on_timeout: if i == 0 {
                    OnTimeout::Strip
                } else {
                    OnTimeout::Allow
                },
            },
        });
    }
    let cp = CompiledPolicy::new(&p).expect("valid");
    let t = cp.classify(&id(1, "\\Device\\HarddiskVolume3\\victim.exe"));
    let r = cp.classify(&id(2, "\\Device\\HarddiskVolume3\\Tools\\tool1.exe"));
    let q = HandleRequest {
        object: ObjectKind::Process,
        operation: Operation::Create,
        desired_access: 0x001F_FFFF,
        kernel_handle: false,
        same_process: false,
    };
    assert_eq!(
        cp.decide(&t, &r, &q).ask.rights,
        PROCESS_TERMINATE | PROCESS_TERMINATE << 1
    );
    c.bench_function("phase2/compiled-ask/1000", |b| {
        b.iter(|| black_box(cp.decide(black_box(&t), black_box(&r), black_box(&q))))
    });
}

fn phase1(c: &mut Criterion) {
    let inp = inputs();
    let p = policy(1_000);
    let cp = CompiledPolicy::new(&p).expect("valid");
    let all: Vec<&String> = inp.targets.iter().chain(inp.requesters.iter()).collect();
    let mut i = 0usize;
    c.bench_function("phase1/classify/1000", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let k = i % all.len();
            black_box(cp.classify(black_box(&id(k, all[k]))))
        })
    });
}

criterion_group!(benches, phase2, phase2_worst_case, phase2_ask, phase1);
criterion_main!(benches);
