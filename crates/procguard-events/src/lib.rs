//! `procguard-events`, procguard's events service: drains the driver's audit
//! ring (waiting on `IOCTL_WAIT_EVENTS`, never polling) into the Windows
//! Event Log (source `procguard`, one event id per kind, see
//! [`messages`]), optionally a size-rotated JSON-lines file
//! ([`json_file`]), and a Prometheus textfile for windows_exporter
//! ([`textfile`]). The loop ([`drain`]) runs against any
//! [`procguardctl::device::Device`], so it is tested on the host against the
//! fake driver; `--replay FILE` ([`replay`]) runs the service without a
//! driver.
//!
//! Installed by `procguardctl service install` (or `Install-ProcGuard.ps1`)
//! as the auto-start service `procguard-events`, whose command line is
//! `procguard-events.exe run [options]`; `run --console` runs it in a
//! console until Ctrl-C.

pub mod drain;
#[cfg(windows)]
pub mod event_log;
pub mod json_file;
pub mod messages;
pub mod replay;
pub mod textfile;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use procguardctl::device::{Device, DeviceError};
use procguardctl::events::ImageLookup;

use drain::{Backoff, Drainer, NoImages, Sink, Stats, Stop};
use json_file::{JsonSink, Rotation};

/// The service's name (service control manager).
pub const SERVICE_NAME: &str = "procguard-events";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "procguard-events",
    version,
    about = "procguard's events service: the driver's audit records into the Windows Event Log, a JSON-lines file and a Prometheus textfile"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run: as the service (started by the service control manager), or
    /// with --console in this console until Ctrl-C.
    Run(Options),
}

/// What the service writes, and where.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Run in this console (until Ctrl-C) instead of as a service.
    #[arg(long)]
    pub console: bool,
    /// Also write each record as one JSON line to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Rotate the JSON file when the next line would make it larger.
    #[arg(long, default_value_t = 10 * 1024 * 1024, value_name = "BYTES")]
    pub json_max_bytes: u64,
    /// Rotated JSON files kept (PATH.1 ... PATH.N).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub json_keep: u32,
    /// Keep a Prometheus text-format file here (windows_exporter's
    /// textfile collector folder, a `.prom` name).
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
    /// Rewrite the textfile at least this often (seconds), even when no
    /// record arrives.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub textfile_interval: u64,
    /// Do not write to the Windows Event Log.
    #[arg(long)]
    pub no_eventlog: bool,
    /// Drain the records the driver holds, then stop (no waiting).
    #[arg(long)]
    pub once: bool,
    /// Diagnostics: read audit records from this file of raw 64-byte
    /// records instead of the driver.
    #[arg(long, value_name = "FILE", hide = true)]
    pub replay: Option<PathBuf>,
}

impl Options {
    /// The options as command-line arguments after `run` (the service's
    /// command line), without `--console`.
    #[must_use]
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(json) = &self.json {
            args.extend([
                "--json".to_owned(),
                json.display().to_string(),
                "--json-max-bytes".to_owned(),
                self.json_max_bytes.to_string(),
                "--json-keep".to_owned(),
                self.json_keep.to_string(),
            ]);
        }
        if let Some(textfile) = &self.textfile {
            args.extend([
                "--textfile".to_owned(),
                textfile.display().to_string(),
                "--textfile-interval".to_owned(),
                self.textfile_interval.to_string(),
            ]);
        }
        if self.no_eventlog {
            args.push("--no-eventlog".to_owned());
        }
        if self.once {
            args.push("--once".to_owned());
        }
        if let Some(replay) = &self.replay {
            args.extend(["--replay".to_owned(), replay.display().to_string()]);
        }
        args
    }
}

fn image_lookup(options: &Options) -> Box<dyn ImageLookup> {
    if options.replay.is_some() {
        // The replayed process ids are not this machine's.
        return Box::new(NoImages);
    }
    #[cfg(windows)]
    {
        Box::new(procguardctl::process_images::ProcessImages)
    }
    #[cfg(not(windows))]
    {
        Box::new(NoImages)
    }
}

fn sinks(options: &Options) -> Result<Vec<Box<dyn Sink>>, String> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    #[cfg(windows)]
    if !options.no_eventlog {
        let log = event_log::EventLogSink::open()
            .map_err(|e| format!("registering event source {}: {e}", messages::SOURCE))?;
        sinks.push(Box::new(log));
    }
    if let Some(path) = &options.json {
        let rotation = Rotation {
            max_bytes: options.json_max_bytes,
            keep: options.json_keep,
        };
        let sink =
            JsonSink::open(path, rotation).map_err(|e| format!("{}: {e}", path.display()))?;
        sinks.push(Box::new(sink));
    }
    Ok(sinks)
}

/// Runs the service's work on this thread until `stop` (or, with
/// `--once`, until the driver's records are drained). The caller cancels
/// the pended wait when it requests the stop.
///
/// # Errors
/// A sink or the replay file cannot be opened.
pub fn serve(options: &Options, stop: &Stop) -> Result<(), String> {
    let records = match &options.replay {
        Some(path) => Some(replay::load(path)?),
        None => None,
    };
    let sinks = sinks(options)?;
    let stats = std::sync::Arc::new(Stats::default());
    let (cue, cued) = mpsc::channel::<()>();
    let metrics = options.textfile.clone().map(|path| {
        let stats = stats.clone();
        let interval = Duration::from_secs(options.textfile_interval.max(1));
        let records = records.clone();
        std::thread::spawn(move || {
            let mut open = move || -> Result<Box<dyn Device>, DeviceError> {
                match &records {
                    Some(records) => Ok(Box::new(replay::fake_with(records, false))),
                    None => procguardctl::open_driver(),
                }
            };
            textfile::run(&path, interval, &mut open, &stats, &cued);
        })
    });
    let mut drainer = Drainer {
        sinks,
        images: image_lookup(options),
        stats,
        stop: stop.clone(),
        backoff: Backoff::default(),
        once: options.once,
        on_batch: Box::new(move || {
            let _ = cue.send(());
        }),
    };
    let mut first = records;
    let replay_stop = stop.clone();
    let replaying = options.replay.is_some();
    let mut open = move || -> Result<Box<dyn Device>, DeviceError> {
        if replaying {
            let records = first.take().unwrap_or_default();
            Ok(Box::new(replay::ReplayDevice::new(
                &records,
                replay_stop.clone(),
            )))
        } else {
            procguardctl::open_driver()
        }
    };
    drainer.run(&mut open);
    // The cue closes: the metrics writer writes once more and ends.
    drop(drainer);
    if let Some(metrics) = metrics {
        let _ = metrics.join();
    }
    Ok(())
}
