//! The drain loop against the fake driver (procguardctl's `FakeDevice`):
//! records in order to every sink, loss reported with its count, driver
//! restarts, the service's own restart, stop.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procguard_events::drain::{
    Backoff, Drainer, Event, NoImages, Sink, Stats, Stop, BEFORE_START, RING_FULL, SEQUENCE_GAP,
};
use procguard_protocol::ask::{IOCTL_WAIT_EVENTS, STATUS_CANCELLED};
use procguard_protocol::{AuditMode, AuditObject, AuditRecord};
use procguardctl::device::{Device, DeviceError};
use procguardctl::fake_device::FakeDevice;

/// What a sink saw, as text: `record N`, `dropped COUNT (REASON)`,
/// `started`, `stopped READ LOST`, `unreachable`.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Recorder {
    name: &'static str,
    log: Log,
    fail: bool,
}

impl Sink for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn write(&mut self, event: &Event<'_>) -> std::io::Result<()> {
        let line = match event {
            Event::Started { sinks } => format!("started {sinks}"),
            Event::Stopped { read, lost } => format!("stopped {read} {lost}"),
            Event::Unreachable { .. } => "unreachable".to_owned(),
            Event::Dropped(loss) => format!("dropped {} ({})", loss.count, loss.reason),
            Event::Record { record, names, .. } => {
                let rule = if record.object == AuditObject::Policy {
                    "-"
                } else {
                    names.get(record.rule_id).unwrap_or("-")
                };
                format!("record {} {rule}", record.sequence)
            }
        };
        self.log.0.lock().unwrap().push(line);
        if self.fail {
            return Err(std::io::Error::other("full disk"));
        }
        Ok(())
    }
}

fn record(sequence: u64) -> AuditRecord {
    AuditRecord {
        sequence,
        timestamp: 133_000_000_000_000_000,
        object: AuditObject::Process,
        duplication: false,
        process_id: 4242,
        thread_id: 0,
        originator_process_id: 5150,
        originator_thread_id: 5151,
        source_process_id: 0,
        target_process_id: 0,
        original_desired_access: 0x1F_FFFF,
        desired_access: 0x1000,
        result_code: 0,
        rule_id: 0,
        mode: AuditMode::Enforce,
        ask_outcome: None,
        ask_wait_us: 0,
    }
}

fn records(sequences: impl IntoIterator<Item = u64>) -> Vec<AuditRecord> {
    sequences.into_iter().map(record).collect()
}

/// A fake driver holding `queued` and receiving `arrivals` one batch per
/// wait; `dropped` is its ring's count.
fn fake(queued: Vec<AuditRecord>, arrivals: Vec<Vec<AuditRecord>>, dropped: u64) -> FakeDevice {
    let device = FakeDevice::default();
    {
        let mut state = device.driver.state.borrow_mut();
        state.events.extend(queued);
        state.arrivals = arrivals.into();
        state.dropped = dropped;
    }
    device
}

/// A driver that goes away (unloads) when its arrivals run out: the
/// pended wait is cancelled, but nobody pressed Ctrl-C.
struct Unloading(FakeDevice);

impl Device for Unloading {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        let result = self.0.ioctl(code, input, output);
        if code == IOCTL_WAIT_EVENTS && result == Err(DeviceError::Driver(STATUS_CANCELLED)) {
            // The fake thought Ctrl-C: here it is the driver unloading.
            self.0.driver.state.borrow_mut().interrupted = false;
        }
        result
    }
}

struct Run {
    a: Log,
    b: Log,
    stats: Arc<Stats>,
    batches: usize,
    opens: usize,
}

/// Runs the loop with two sinks over the devices `open` hands out in turn
/// (an error when none is left).
fn run_with(devices: Vec<Result<Box<dyn Device>, DeviceError>>, once: bool, fail_b: bool) -> Run {
    let a = Log::default();
    let b = Log::default();
    let stats = Arc::new(Stats::default());
    let batches = Arc::new(Mutex::new(0usize));
    let counted = batches.clone();
    let stop = Stop::new();
    let mut drainer = Drainer {
        sinks: vec![
            Box::new(Recorder {
                name: "a",
                log: a.clone(),
                fail: false,
            }),
            Box::new(Recorder {
                name: "b",
                log: b.clone(),
                fail: fail_b,
            }),
        ],
        images: Box::new(NoImages),
        stats: stats.clone(),
        stop: stop.clone(),
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
        },
        once,
        on_batch: Box::new(move || *counted.lock().unwrap() += 1),
    };
    let mut devices: VecDeque<_> = devices.into();
    let opens = Rc::new(RefCell::new(0));
    let opened = opens.clone();
    let mut open = move || {
        *opened.borrow_mut() += 1;
        devices.pop_front().unwrap_or_else(|| {
            // Nothing left: the test is over.
            stop.request();
            Err(DeviceError::NotInstalled)
        })
    };
    drainer.run(&mut open);
    let batches = *batches.lock().unwrap();
    let opens = *opens.borrow();
    Run {
        a,
        b,
        stats,
        batches,
        opens,
    }
}

fn lines(expected: &[&str]) -> Vec<String> {
    expected.iter().map(|line| (*line).to_owned()).collect()
}

#[test]
fn records_go_in_order_to_every_sink_until_ctrl_c() {
    let device = fake(records(0..3), vec![records(3..5), records(5..6)], 0);
    let run = run_with(vec![Ok(Box::new(device))], false, false);
    let expected = lines(&[
        "started a,b",
        "record 0 -",
        "record 1 -",
        "record 2 -",
        "record 3 -",
        "record 4 -",
        "record 5 -",
        "stopped 6 0",
    ]);
    assert_eq!(run.a.lines(), expected);
    assert_eq!(run.b.lines(), expected);
    assert_eq!(run.opens, 1, "Ctrl-C ends the loop without reopening");
    assert_eq!(Stats::per_sink(&run.stats.written)["a"], 6);
    assert_eq!(run.stats.read.load(Ordering::SeqCst), 6);
    // A batch cue after each drain (3) and one at the end.
    assert_eq!(run.batches, 4);
}

#[test]
fn waits_never_poll_and_reads_drain_everything_first() {
    // 600 records: three reads (256 per read) before the first wait.
    let device = fake(records(0..600), vec![], 0);
    let requests = Rc::new(RefCell::new(Vec::new()));
    struct Spy(FakeDevice, Rc<RefCell<Vec<u32>>>);
    impl Device for Spy {
        fn ioctl(&mut self, code: u32, i: &[u8], o: &mut [u8]) -> Result<usize, DeviceError> {
            self.1.borrow_mut().push(code);
            self.0.ioctl(code, i, o)
        }
        fn interrupted(&self) -> bool {
            self.0.interrupted()
        }
    }
    let run = run_with(
        vec![Ok(Box::new(Spy(device, requests.clone())))],
        false,
        false,
    );
    assert_eq!(run.stats.read.load(Ordering::SeqCst), 600);
    let codes = requests.borrow();
    let reads = codes
        .iter()
        .filter(|&&code| code == procguard_protocol::ioctl::IOCTL_READ_EVENTS)
        .count();
    let waits = codes
        .iter()
        .filter(|&&code| code == IOCTL_WAIT_EVENTS)
        .count();
    assert_eq!(reads, 3, "{codes:x?}");
    assert_eq!(waits, 1, "one wait, ended by Ctrl-C: {codes:x?}");
    assert_eq!(*codes.last().unwrap(), IOCTL_WAIT_EVENTS);
}

#[test]
fn what_the_driver_dropped_before_the_start_is_reported_once() {
    let device = fake(records(7..9), vec![], 7);
    let run = run_with(vec![Ok(Box::new(device))], false, false);
    assert_eq!(
        run.a.lines(),
        lines(&[
            "started a,b",
            &format!("dropped 7 ({BEFORE_START})"),
            "record 7 -",
            "record 8 -",
            "stopped 2 7",
        ])
    );
    assert_eq!(run.stats.lost.load(Ordering::SeqCst), 7);
}

#[test]
fn a_full_ring_reports_the_loss_before_the_records_after_it() {
    // Capacity 4: 10 records arrive while the service waits; the 6 oldest
    // are discarded (dropped 6, and a sequence gap of 6: one loss of 6).
    let device = fake(records(0..2), vec![records(2..12)], 0);
    device.driver.state.borrow_mut().capacity = 4;
    let run = run_with(vec![Ok(Box::new(device))], false, false);
    assert_eq!(
        run.a.lines(),
        lines(&[
            "started a,b",
            "record 0 -",
            "record 1 -",
            &format!("dropped 6 ({RING_FULL})"),
            "record 8 -",
            "record 9 -",
            "record 10 -",
            "record 11 -",
            "stopped 6 6",
        ])
    );
}

#[test]
fn a_sequence_gap_without_a_drop_count_is_reported() {
    // Another reader took 3..5: the ring counted nothing.
    let device = fake(records(0..3), vec![records(5..7)], 0);
    let run = run_with(vec![Ok(Box::new(device))], false, false);
    assert_eq!(
        run.a.lines()[4..6],
        lines(&[&format!("dropped 2 ({SEQUENCE_GAP})"), "record 5 -"])
    );
    assert_eq!(run.stats.lost.load(Ordering::SeqCst), 2);
}

#[test]
fn a_restarted_driver_is_reopened_and_read_from_its_start() {
    // The first instance unloads after 0..3; the device is gone twice;
    // the new instance numbers from 0 again and kept 0..2 meanwhile.
    let first = Unloading(fake(records(0..3), vec![], 0));
    let second = fake(records(0..2), vec![records(2..3)], 0);
    let run = run_with(
        vec![
            Ok(Box::new(first)),
            Err(DeviceError::NotRunning {
                state: "stopped".into(),
            }),
            Err(DeviceError::NotRunning {
                state: "start pending".into(),
            }),
            Ok(Box::new(second)),
        ],
        false,
        false,
    );
    assert_eq!(
        run.a.lines(),
        lines(&[
            "started a,b",
            "record 0 -",
            "record 1 -",
            "record 2 -",
            "unreachable",
            "record 0 -",
            "record 1 -",
            "record 2 -",
            "stopped 6 0",
        ]),
        "one unreachable event per outage, no loss: the new instance's records are all read"
    );
    assert_eq!(run.opens, 4);
}

#[test]
fn a_restarted_driver_that_lost_records_is_reported() {
    // The new instance's first record read is number 3, and it dropped 3.
    let first = Unloading(fake(records(0..5), vec![], 0));
    let second = fake(records(3..4), vec![], 3);
    let run = run_with(
        vec![Ok(Box::new(first)), Ok(Box::new(second))],
        false,
        false,
    );
    let log = run.a.lines();
    assert_eq!(
        log[6..9],
        lines(&[
            "unreachable",
            &format!("dropped 3 ({RING_FULL})"),
            "record 3 -"
        ]),
        "{log:?}"
    );
}

#[test]
fn after_its_own_restart_the_service_reads_what_the_driver_kept() {
    // First run: drain once (--once), the driver keeps receiving.
    let device = fake(records(0..2), vec![], 0);
    let first = run_with(vec![Ok(Box::new(device))], true, false);
    assert_eq!(first.stats.read.load(Ordering::SeqCst), 2);
    // The service is down while 2..5 arrive; the next one reads them, with
    // no loss reported (the driver dropped nothing).
    let device = fake(records(2..5), vec![], 0);
    let second = run_with(vec![Ok(Box::new(device))], true, false);
    assert_eq!(
        second.a.lines(),
        lines(&[
            "started a,b",
            "record 2 -",
            "record 3 -",
            "record 4 -",
            "stopped 3 0"
        ])
    );
}

#[test]
fn a_failing_sink_is_counted_and_the_others_still_get_everything() {
    let device = fake(records(0..3), vec![], 0);
    let run = run_with(vec![Ok(Box::new(device))], false, true);
    assert_eq!(run.a.lines().len(), 5);
    assert_eq!(Stats::per_sink(&run.stats.written)["a"], 3);
    assert!(!Stats::per_sink(&run.stats.written).contains_key("b"));
    assert_eq!(Stats::per_sink(&run.stats.errors)["b"], 5);
}

#[test]
fn stop_ends_a_blocked_wait() {
    // The replay device blocks in its wait until the stop.
    let stop = Stop::new();
    let device = procguard_events::replay::ReplayDevice::new(&records(0..2), stop.clone());
    let log = Log::default();
    let mut drainer = Drainer {
        sinks: vec![Box::new(Recorder {
            name: "a",
            log: log.clone(),
            fail: false,
        })],
        images: Box::new(NoImages),
        stats: Arc::new(Stats::default()),
        stop: stop.clone(),
        backoff: Backoff::default(),
        once: false,
        on_batch: Box::new(|| {}),
    };
    let stopper = std::thread::spawn(move || {
        // The loop says when it is in its wait (when the service may cancel
        // its request): only after both records were written.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !stop.waiting() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let waited = stop.waiting();
        stop.request();
        waited
    });
    let started = std::time::Instant::now();
    let mut device = Some(device);
    let mut open = || -> Result<Box<dyn Device>, DeviceError> {
        device
            .take()
            .map(|d| Box::new(d) as Box<dyn Device>)
            .ok_or(DeviceError::NotInstalled)
    };
    drainer.run(&mut open);
    assert!(stopper.join().unwrap(), "the loop never said it waits");
    assert!(!drainer.stop.waiting(), "out of the wait once stopped");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        log.lines(),
        lines(&["started a", "record 0 -", "record 1 -", "stopped 2 0"])
    );
}

#[test]
fn a_gap_inside_one_batch_is_reported_right_before_the_record_after_it() {
    let device = fake(vec![record(0), record(1), record(4), record(5)], vec![], 0);
    let run = run_with(vec![Ok(Box::new(device))], false, false);
    assert_eq!(
        run.a.lines(),
        lines(&[
            "started a,b",
            "record 0 -",
            "record 1 -",
            &format!("dropped 2 ({SEQUENCE_GAP})"),
            "record 4 -",
            "record 5 -",
            "stopped 4 2",
        ])
    );
}

/// Applies `blob` as the driver's policy right after the read that returned
/// a policy-applied record (what happened in the driver before it queued
/// the record).
struct ApplyingOnRead(FakeDevice, Option<Vec<u8>>);

impl Device for ApplyingOnRead {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        let result = self.0.ioctl(code, input, output);
        if code == procguard_protocol::ioctl::IOCTL_READ_EVENTS {
            if let Some(blob) = self.1.take() {
                use procguard_protocol::dispatch::ControlTarget;
                assert!(self.0.driver.set_policy(&blob, false).is_ok());
            }
        }
        result
    }

    fn interrupted(&self) -> bool {
        self.0.interrupted()
    }
}

#[test]
fn a_new_policy_renames_the_rules_of_the_records_after_it() {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../procguardctl/examples/protect-agent.toml"
    ))
    .unwrap();
    let old = procguard_policy::toml::parse_policy(&source).unwrap();
    let mut new = old.clone();
    new.rules[0].name = "renamed".into();
    let device = FakeDevice::with_policy(&procguard_policy::encode(&old));
    let applied = AuditRecord {
        sequence: 1,
        ..AuditRecord::policy_event(
            0,
            procguard_protocol::PolicySource::Control,
            Ok(()),
            1,
            1,
            (9, 10),
        )
    };
    device
        .driver
        .state
        .borrow_mut()
        .events
        .extend([record(0), applied, record(2)]);
    let device = ApplyingOnRead(device, Some(procguard_policy::encode(&new)));
    let run = run_with(vec![Ok(Box::new(device))], false, false);
    let old_name = old.rules[0].name.to_string();
    assert_ne!(old_name, "renamed");
    assert_eq!(
        run.a.lines()[1..4],
        lines(&[
            &format!("record 0 {old_name}"),
            "record 1 -",
            "record 2 renamed"
        ])
    );
}
