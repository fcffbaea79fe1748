//! The Prometheus textfile for windows_exporter's textfile collector: the
//! driver's families (`procguardctl::metrics::render`, the same text as
//! `procguardctl metrics`) and the service's own (`procguard_events_*`),
//! rewritten after each batch and at least every `interval`. The collector
//! may read at any moment, so the file is replaced whole: the text goes to
//! `PATH.tmp` in the same folder (not a `.prom` name, which the collector
//! would read), then a rename puts it in place.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use procguardctl::device::{Device, DeviceError};
use procguardctl::metrics::{escape_label, family, render, single, snapshot};

use crate::drain::Stats;

/// `PATH.tmp`.
#[must_use]
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `text` to `path` atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over `path`.
///
/// # Errors
/// Writing or renaming failed (the old file stays).
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let temporary = temporary(path);
    let mut file = fs::File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)
}

/// The service's own families.
#[must_use]
pub fn service_families(stats: &Stats) -> String {
    let mut out = String::new();
    single(
        &mut out,
        "procguard_events_records_read_total",
        "counter",
        "Audit records the events service read from the driver.",
        stats.read.load(Ordering::SeqCst),
    );
    single(
        &mut out,
        "procguard_events_records_lost_total",
        "counter",
        "Audit records lost before the events service could read them (reported as records-dropped events).",
        stats.lost.load(Ordering::SeqCst),
    );
    single(
        &mut out,
        "procguard_events_driver_reachable",
        "gauge",
        "1 while the events service has the driver's device open.",
        u64::from(stats.reachable.load(Ordering::SeqCst)),
    );
    for (name, help, map) in [
        (
            "procguard_events_records_written_total",
            "Audit records written, per sink.",
            Stats::per_sink(&stats.written),
        ),
        (
            "procguard_events_write_errors_total",
            "Failed writes, per sink.",
            Stats::per_sink(&stats.errors),
        ),
    ] {
        family(&mut out, name, "counter", help);
        for (sink, value) in map {
            out.push_str(&format!(
                "{name}{{sink=\"{}\"}} {value}\n",
                escape_label(sink)
            ));
        }
    }
    out
}

/// The whole file: the driver's families when `device` answers, then the
/// service's.
pub fn content(device: Option<&mut dyn Device>, stats: &Stats) -> String {
    let mut text = device
        .and_then(|device| snapshot(device).ok())
        .map(|snapshot| render(&snapshot))
        .unwrap_or_default();
    text.push_str(&service_families(stats));
    text
}

/// The driver's families, opening the device when it is not open; closes
/// it again when it does not answer (the driver may have restarted).
fn driver_text(
    device: &mut Option<Box<dyn Device>>,
    open: &mut dyn FnMut() -> Result<Box<dyn Device>, DeviceError>,
) -> String {
    if device.is_none() {
        *device = open().ok();
    }
    let text = match device {
        Some(device) => snapshot(device.as_mut()).map_or_else(|_| String::new(), |s| render(&s)),
        None => String::new(),
    };
    if text.is_empty() {
        *device = None;
    }
    text
}

/// The metrics writer (its own thread, its own device handle): rewrites the
/// file whenever the drain loop signals a batch, and at least every
/// `interval`, until the loop's end closes `cue`.
pub fn run(
    path: &Path,
    interval: Duration,
    open: &mut dyn FnMut() -> Result<Box<dyn Device>, DeviceError>,
    stats: &Stats,
    cue: &Receiver<()>,
) {
    let mut device: Option<Box<dyn Device>> = None;
    loop {
        let text = driver_text(&mut device, open) + &service_families(stats);
        // A failed write is retried at the next cue.
        let _ = write_atomically(path, &text);
        match cue.recv_timeout(interval) {
            Ok(()) => while cue.try_recv().is_ok() {},
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let text = driver_text(&mut device, open) + &service_families(stats);
                let _ = write_atomically(path, &text);
                return;
            }
        }
    }
}
