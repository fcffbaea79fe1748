//! The drain loop: wait on the driver (`IOCTL_WAIT_EVENTS`, never a poll),
//! read every record it holds, hand each to every sink, wait again.
//!
//! - **Driver restarts.** A failed request (the device is gone, the driver
//!   cancelled the wait while unloading) closes the device; the loop
//!   reopens it with a growing delay (`Backoff`) and reports "driver
//!   unreachable" once per outage. A driver whose sequence numbers went
//!   back, or whose dropped count went down, is a new instance: its records
//!   are counted from its start.
//! - **Its own restarts.** The service holds no record the driver still
//!   has: a record is taken from the ring only by the read that hands it to
//!   the sinks, so after a restart the first read gets whatever the driver
//!   kept meanwhile.
//! - **Loss is never silent.** Two measures of loss: the ring's `dropped`
//!   count (a full ring discards its oldest record, or the new one) and gaps
//!   in the sequence numbers (a discarded oldest record leaves one; so does
//!   another reader). Both usually count the same records, so the loss of a
//!   driver instance is the larger of the two totals, and each increase of
//!   it is one "records dropped" event with the count, before the records
//!   read with it. At the service's first read, what the driver had already
//!   dropped is reported once as dropped before the service started.
//! - **Stop.** [`Stop::request`] makes the loop end at its next look; the
//!   caller also cancels the pended wait while [`Stop::waiting`] says the
//!   loop is in it (the service's stop handler, the console's Ctrl-C: see
//!   `main.rs`), which then fails with `STATUS_CANCELLED`, and the loop
//!   sees the stop and ends. Records the driver still holds stay there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use procguard_policy::decode;
use procguard_protocol::{AuditMode, AuditObject, AuditRecord};
use procguardctl::device::{self, Device, DeviceError, RequestError};
use procguardctl::events::ImageLookup;
use procguardctl::events::RuleNames;

/// Records asked for per `IOCTL_READ_EVENTS`.
pub const RECORDS_PER_READ: usize = 256;

/// How the loop reaches the driver: opens the device (again after a
/// failure).
pub type Open<'a> = dyn FnMut() -> Result<Box<dyn Device>, DeviceError> + 'a;

/// A stop request, shared by the loop and whoever stops it, and whether
/// the loop is in its wait (the only request the stopper may cancel: a
/// cancel elsewhere could fail a sink's write).
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    requested: Mutex<bool>,
    changed: Condvar,
    waiting: AtomicBool,
}

impl Stop {
    /// A stop not yet requested.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the loop (and every [`Stop::sleep`]) to end.
    pub fn request(&self) {
        *self
            .0
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.0.changed.notify_all();
    }

    /// Whether a stop was requested.
    #[must_use]
    pub fn requested(&self) -> bool {
        *self
            .0
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the loop is in (or about to enter) `IOCTL_WAIT_EVENTS`.
    #[must_use]
    pub fn waiting(&self) -> bool {
        self.0.waiting.load(Ordering::SeqCst)
    }

    fn set_waiting(&self, waiting: bool) {
        self.0.waiting.store(waiting, Ordering::SeqCst);
    }

    /// Sleeps `duration` unless a stop comes first; true when stopped.
    #[must_use]
    pub fn sleep(&self, duration: Duration) -> bool {
        let guard = self
            .0
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .0
            .changed
            .wait_timeout_while(guard, duration, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }

    /// Blocks until a stop is requested.
    pub fn wait(&self) {
        let guard = self
            .0
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(
            self.0
                .changed
                .wait_while(guard, |stopped| !*stopped)
                .unwrap_or_else(PoisonError::into_inner),
        );
    }
}

/// Records lost before the service could read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// When the loss was noticed (100 ns since 1601, UTC).
    pub noticed: i64,
    /// Records lost since the last report.
    pub count: u64,
    /// The driver's `dropped` count at the time.
    pub driver_total: u64,
    /// Why, in words.
    pub reason: &'static str,
}

/// Reason: the driver dropped them before the service's first read.
pub const BEFORE_START: &str = "dropped by the driver before the service started reading";
/// Reason: the ring was full.
pub const RING_FULL: &str = "the driver's audit ring was full";
/// Reason: sequence numbers are missing (another reader, or a drop).
pub const SEQUENCE_GAP: &str =
    "sequence numbers missing (another reader took them, or the driver dropped them)";

/// What the loop hands to the sinks.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The service started; the names of its sinks.
    Started {
        /// Sink names, comma separated.
        sinks: &'a str,
    },
    /// The service is stopping.
    Stopped {
        /// Records read from the driver since the start.
        read: u64,
        /// Records lost since the start.
        lost: u64,
    },
    /// The driver cannot be reached (once per outage).
    Unreachable {
        /// Why.
        error: &'a str,
    },
    /// Records were lost.
    Dropped(&'a Loss),
    /// One audit record, with the policy's rule names and the image paths
    /// of its requester and target (`None`: unknown).
    Record {
        /// The record.
        record: &'a AuditRecord,
        /// Rule names of the policy in force when it was read.
        names: &'a RuleNames,
        /// (`SourceImage`, `TargetImage`).
        images: (Option<&'a str>, Option<&'a str>),
    },
}

/// Where records go.
pub trait Sink {
    /// Its name (`eventlog`, `json`, ...), a metrics label.
    fn name(&self) -> &'static str;

    /// Writes one event.
    ///
    /// # Errors
    /// The sink failed; the loop counts it and goes on.
    fn write(&mut self, event: &Event<'_>) -> std::io::Result<()>;

    /// The end of a batch: make what was written durable.
    ///
    /// # Errors
    /// As [`Sink::write`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The service's own counters (the textfile's `procguard_events_*`
/// families), shared with the metrics writer.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records read from the driver.
    pub read: AtomicU64,
    /// Records lost (reported in "records dropped" events).
    pub lost: AtomicU64,
    /// Whether the device is open.
    pub reachable: AtomicBool,
    /// Records written, per sink.
    pub written: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed writes, per sink.
    pub errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    fn add(map: &Mutex<BTreeMap<&'static str, u64>>, sink: &'static str) {
        *map.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(sink)
            .or_default() += 1;
    }

    /// A copy of a per-sink map.
    #[must_use]
    pub fn per_sink(map: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<&'static str, u64> {
        map.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Delays between attempts to reopen the device: doubling from `initial`
/// up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// The current time as a FILETIME.
#[must_use]
pub fn now_filetime() -> i64 {
    const UNIX_EPOCH: i64 = 116_444_736_000_000_000;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH + i64::try_from(since.as_nanos() / 100).unwrap_or(i64::MAX - UNIX_EPOCH)
}

/// What the loop knows of the driver instance it reads.
#[derive(Debug, Default)]
struct Cursor {
    /// Whether anything was read since the service started.
    started: bool,
    /// Sequence of the last record read.
    last_sequence: Option<u64>,
    /// The driver's `dropped` at the last read.
    dropped_seen: u64,
    /// `dropped` when this instance's counting began.
    dropped_base: u64,
    /// Records missing from the sequence, this instance.
    gap_loss: u64,
    /// Loss already reported, this instance.
    reported: u64,
}

/// How a session with one open device ended.
enum SessionEnd {
    Stopped,
    Lost(String),
}

/// The drain loop and what it writes to.
pub struct Drainer {
    /// The sinks, each record to every one.
    pub sinks: Vec<Box<dyn Sink>>,
    /// Image paths of the processes a record names.
    pub images: Box<dyn ImageLookup>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The stop request.
    pub stop: Stop,
    /// Reopen delays.
    pub backoff: Backoff,
    /// Drain what the driver holds, then stop (no wait).
    pub once: bool,
    /// Called after each batch (the metrics writer's cue).
    pub on_batch: Box<dyn FnMut() + Send>,
}

impl Drainer {
    fn emit(&mut self, event: &Event<'_>) {
        for sink in &mut self.sinks {
            let name = sink.name();
            match sink.write(event) {
                Ok(()) => {
                    if matches!(event, Event::Record { .. }) {
                        Stats::add(&self.stats.written, name);
                    }
                }
                Err(_) => Stats::add(&self.stats.errors, name),
            }
        }
    }

    fn flush(&mut self) {
        for sink in &mut self.sinks {
            let name = sink.name();
            if sink.flush().is_err() {
                Stats::add(&self.stats.errors, name);
            }
        }
    }

    /// Runs until stopped: opens the device, drains it, waits, and after a
    /// failure reopens it.
    pub fn run(&mut self, open: &mut Open<'_>) {
        let names: Vec<&str> = self.sinks.iter().map(|sink| sink.name()).collect();
        let sinks = names.join(",");
        self.emit(&Event::Started { sinks: &sinks });
        self.flush();
        let mut cursor = Cursor::default();
        let mut delay = self.backoff.initial;
        let mut outage_reported = false;
        while !self.stop.requested() {
            let error = match open() {
                Ok(mut device) => {
                    self.stats.reachable.store(true, Ordering::SeqCst);
                    outage_reported = false;
                    delay = self.backoff.initial;
                    let end = self.session(device.as_mut(), &mut cursor);
                    self.stats.reachable.store(false, Ordering::SeqCst);
                    match end {
                        SessionEnd::Stopped => break,
                        SessionEnd::Lost(error) => error,
                    }
                }
                Err(error) => error.to_string(),
            };
            if !outage_reported {
                self.emit(&Event::Unreachable { error: &error });
                self.flush();
                outage_reported = true;
            }
            (self.on_batch)();
            if self.once || self.stop.sleep(delay) {
                break;
            }
            delay = (delay * 2).min(self.backoff.max);
        }
        self.emit(&Event::Stopped {
            read: self.stats.read.load(Ordering::SeqCst),
            lost: self.stats.lost.load(Ordering::SeqCst),
        });
        self.flush();
        (self.on_batch)();
    }

    fn stopping(&self, device: &dyn Device) -> bool {
        self.stop.requested() || device.interrupted()
    }

    fn session(&mut self, device: &mut dyn Device, cursor: &mut Cursor) -> SessionEnd {
        let lost = |error: RequestError| SessionEnd::Lost(error.to_string());
        let mut names = match rule_names(device) {
            Ok(names) => names,
            Err(error) => return lost(error),
        };
        loop {
            // Everything the driver holds, then wait.
            loop {
                let batch = match device::read_events(device, RECORDS_PER_READ) {
                    Ok(batch) => batch,
                    Err(_) if self.stopping(device) => return SessionEnd::Stopped,
                    Err(error) => return lost(error),
                };
                self.account(cursor, &batch);
                for record in &batch.records {
                    self.before_record(cursor, record);
                    self.stats.read.fetch_add(1, Ordering::SeqCst);
                    self.write_record(record, &names);
                    // A new policy renames the rules of the records after it.
                    if record.object == AuditObject::Policy
                        && record.mode == AuditMode::PolicyApplied
                    {
                        if let Ok(new) = rule_names(device) {
                            names = new;
                        }
                    }
                }
                self.flush();
                if batch.remaining == 0 || batch.records.is_empty() {
                    break;
                }
            }
            (self.on_batch)();
            if self.once || self.stopping(device) {
                return SessionEnd::Stopped;
            }
            self.stop.set_waiting(true);
            let woken = if self.stopping(device) {
                Ok(0)
            } else {
                device::wait_events(device)
            };
            self.stop.set_waiting(false);
            match woken {
                Ok(_) if self.stopping(device) => return SessionEnd::Stopped,
                Ok(_) => {}
                Err(_) if self.stopping(device) => return SessionEnd::Stopped,
                Err(error) => return lost(error),
            }
        }
    }

    fn write_record(&mut self, record: &AuditRecord, names: &RuleNames) {
        let (source, target) = if record.object == AuditObject::Policy {
            (None, None)
        } else {
            (
                self.images.image(record.originator_process_id),
                self.images.image(record.process_id),
            )
        };
        self.emit(&Event::Record {
            record,
            names,
            images: (source.as_deref(), target.as_deref()),
        });
    }

    /// Counts the batch's `dropped` against the instance it comes from and
    /// reports any increase of the loss (see the module documentation);
    /// gaps are counted record by record ([`Drainer::before_record`]).
    fn account(&mut self, cursor: &mut Cursor, batch: &device::EventBatch) {
        let first = batch.records.first().map(|record| record.sequence);
        let went_back =
            matches!((cursor.last_sequence, first), (Some(last), Some(first)) if first <= last);
        if !cursor.started {
            cursor.started = true;
            cursor.dropped_seen = batch.dropped;
            cursor.dropped_base = batch.dropped;
            if batch.dropped > 0 {
                self.report(batch.dropped, batch.dropped, BEFORE_START);
            }
        } else if went_back || batch.dropped < cursor.dropped_seen {
            // A new driver instance: count from its start. Its records are
            // numbered from 0: any before the first one read are missing.
            *cursor = Cursor {
                started: true,
                gap_loss: first.unwrap_or(0),
                ..Cursor::default()
            };
        }
        cursor.dropped_seen = batch.dropped;
        self.settle(cursor, RING_FULL);
    }

    /// Counts the gap before `record` and reports any increase of the loss
    /// before the record is written.
    fn before_record(&mut self, cursor: &mut Cursor, record: &AuditRecord) {
        if let Some(last) = cursor.last_sequence {
            cursor.gap_loss += record.sequence.saturating_sub(last + 1);
        }
        cursor.last_sequence = Some(record.sequence);
        self.settle(cursor, SEQUENCE_GAP);
    }

    /// Reports the increase of the instance's loss, the larger of the
    /// ring's count and the sequence gaps.
    fn settle(&mut self, cursor: &mut Cursor, reason: &'static str) {
        let counted = cursor.dropped_seen.saturating_sub(cursor.dropped_base);
        let total = counted.max(cursor.gap_loss);
        if total > cursor.reported {
            self.report(total - cursor.reported, cursor.dropped_seen, reason);
            cursor.reported = total;
        }
    }

    fn report(&mut self, count: u64, driver_total: u64, reason: &'static str) {
        self.stats.lost.fetch_add(count, Ordering::SeqCst);
        let loss = Loss {
            noticed: now_filetime(),
            count,
            driver_total,
            reason,
        };
        self.emit(&Event::Dropped(&loss));
    }
}

/// The rule names of the policy in force (none when there is no policy or
/// it does not decode).
///
/// # Errors
/// The driver could not be asked.
pub fn rule_names(device: &mut dyn Device) -> Result<RuleNames, RequestError> {
    let (_, blob) = device::get_policy(device)?;
    if blob.is_empty() {
        return Ok(RuleNames::default());
    }
    Ok(RuleNames(decode(&blob).map_or_else(
        |_| Vec::new(),
        |policy| {
            policy
                .rules
                .iter()
                .map(|rule| rule.name.to_string())
                .collect()
        },
    )))
}

/// No image lookup (other systems than Windows, tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoImages;

impl ImageLookup for NoImages {
    fn image(&mut self, _pid: u32) -> Option<String> {
        None
    }
}
