//! The JSON-lines rotation and the Prometheus textfile.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use procguard_events::drain::{Event, Loss, Sink, Stats};
use procguard_events::json_file::{rotated, JsonSink, RotatingFile, Rotation};
use procguard_events::textfile::{self, temporary, write_atomically};
use procguard_protocol::{AuditMode, AuditObject, AuditRecord};
use procguardctl::device::{Device, DeviceError};
use procguardctl::events::RuleNames;
use procguardctl::fake_device::FakeDevice;

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("procguard-events-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn rotation_keeps_n_files_under_the_size_and_never_splits_a_line() {
    let dir = tempdir("rotation");
    let path = dir.join("events.jsonl");
    let rotation = Rotation {
        max_bytes: 100,
        keep: 3,
    };
    let mut file = RotatingFile::open(&path, rotation).unwrap();
    // Lines of 30 bytes with the newline: 3 per file.
    let lines: Vec<String> = (0..20)
        .map(|n| format!("{{\"n\":{n:02},\"pad\":\"xxxxxxxxxxxx\"}}"))
        .collect();
    assert_eq!(lines[0].len() + 1, 30);
    for line in &lines {
        file.write_line(line).unwrap();
    }
    file.flush().unwrap();
    // 20 lines: files of 3, the newest holds the last 2 (18, 19).
    let current = read(&path);
    assert_eq!(current, format!("{}\n{}\n", lines[18], lines[19]));
    for (n, first) in [(1, 15), (2, 12), (3, 9)] {
        let text = read(&rotated(&path, n));
        assert_eq!(
            text,
            format!(
                "{}\n{}\n{}\n",
                lines[first],
                lines[first + 1],
                lines[first + 2]
            ),
            "{}",
            rotated(&path, n).display()
        );
        assert!(text.len() as u64 <= rotation.max_bytes);
    }
    assert!(!rotated(&path, 4).exists(), "only 3 rotated files are kept");
    // A line longer than the limit gets a file of its own, whole.
    let long = "y".repeat(250);
    file.write_line(&long).unwrap();
    file.write_line(&lines[0]).unwrap();
    assert_eq!(read(&rotated(&path, 1)), format!("{long}\n"));
    assert_eq!(read(&path), format!("{}\n", lines[0]));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn keep_zero_starts_over_and_a_partial_last_line_is_cut_on_open() {
    let dir = tempdir("partial");
    let path = dir.join("events.jsonl");
    fs::write(&path, "{\"whole\":1}\n{\"cut\":").unwrap();
    let mut file = RotatingFile::open(
        &path,
        Rotation {
            max_bytes: 30,
            keep: 0,
        },
    )
    .unwrap();
    assert_eq!(read(&path), "{\"whole\":1}\n");
    file.write_line("{\"next\":2}").unwrap();
    assert_eq!(read(&path), "{\"whole\":1}\n{\"next\":2}\n");
    file.write_line("{\"third\":3}").unwrap();
    assert_eq!(read(&path), "{\"third\":3}\n");
    assert!(!rotated(&path, 1).exists());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_json_sink_writes_records_with_images_and_losses_as_json() {
    let dir = tempdir("sink");
    let path = dir.join("events.jsonl");
    let mut sink = JsonSink::open(
        &path,
        Rotation {
            max_bytes: 1 << 20,
            keep: 1,
        },
    )
    .unwrap();
    let record = AuditRecord {
        sequence: 4,
        timestamp: 0,
        object: AuditObject::Process,
        duplication: false,
        process_id: 4242,
        thread_id: 0,
        originator_process_id: 5150,
        originator_thread_id: 1,
        source_process_id: 0,
        target_process_id: 0,
        original_desired_access: 0x1F_FFFF,
        desired_access: 0x1000,
        result_code: 0,
        rule_id: 0,
        mode: AuditMode::Enforce,
        ask_outcome: None,
        ask_wait_us: 0,
    };
    let names = RuleNames(vec!["protect-agent".into()]);
    sink.write(&Event::Started { sinks: "json" }).unwrap();
    sink.write(&Event::Record {
        record: &record,
        names: &names,
        images: (Some("C:\\tools\\t.exe"), None),
    })
    .unwrap();
    sink.write(&Event::Dropped(&Loss {
        noticed: 0,
        count: 3,
        driver_total: 9,
        reason: "the \"ring\"",
    }))
    .unwrap();
    sink.flush().unwrap();
    let text = read(&path);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["Rule"], "protect-agent");
    assert_eq!(lines[0]["SourceImage"], "C:\\tools\\t.exe");
    assert_eq!(lines[0]["TargetImage"], serde_json::Value::Null);
    assert_eq!(lines[0]["Sequence"], 4);
    assert_eq!(lines[1]["Event"], "records-dropped");
    assert_eq!(lines[1]["Count"], 3);
    assert_eq!(lines[1]["DriverDroppedTotal"], 9);
    assert_eq!(lines[1]["Reason"], "the \"ring\"");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_textfile_is_replaced_by_a_rename_never_written_in_place() {
    let dir = tempdir("atomic");
    let path = dir.join("procguard.prom");
    fs::write(&path, "old\n").unwrap();
    // Hard link to the old file: an in-place write would change it too; a
    // rename leaves it alone.
    let link = dir.join("old-link");
    fs::hard_link(&path, &link).unwrap();
    write_atomically(&path, "new 1\n").unwrap();
    assert_eq!(read(&path), "new 1\n");
    assert_eq!(read(&link), "old\n");
    assert!(!temporary(&path).exists());
    assert_eq!(temporary(&path), dir.join("procguard.prom.tmp"));
    // A folder where the temporary file cannot be made: the old file stays.
    let missing = dir.join("no-such-folder").join("x.prom");
    assert!(write_atomically(&missing, "x").is_err());
    let _ = fs::remove_dir_all(&dir);
}

/// Checks Prometheus text format line by line: `# HELP`/`# TYPE` before a
/// family's samples, names and label syntax, numeric values.
fn parse_prometheus(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').unwrap().to_owned()),
            None => (series, String::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(typed.contains(name), "{name} has no # TYPE");
        samples.push((name.to_owned(), labels, value.parse::<f64>().unwrap()));
    }
    samples
}

#[test]
fn the_textfile_has_the_driver_and_service_families_and_parses() {
    let dir = tempdir("textfile");
    let path = dir.join("procguard.prom");
    let stats = Stats::default();
    stats.read.store(7, Ordering::SeqCst);
    stats.lost.store(2, Ordering::SeqCst);
    stats.reachable.store(true, Ordering::SeqCst);
    stats.written.lock().unwrap().insert("json", 7);
    stats.written.lock().unwrap().insert("eventlog", 6);
    stats.errors.lock().unwrap().insert("eventlog", 1);
    let (cue, cued) = mpsc::channel();
    cue.send(()).unwrap();
    drop(cue);
    let mut open = || -> Result<Box<dyn Device>, DeviceError> {
        let device = FakeDevice::default();
        device.driver.state.borrow_mut().dropped = 5;
        Ok(Box::new(device))
    };
    textfile::run(&path, Duration::from_secs(60), &mut open, &stats, &cued);
    let text = read(&path);
    let samples = parse_prometheus(&text);
    let value = |name: &str, labels: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
            .2
    };
    assert_eq!(value("procguard_events_records_read_total", ""), 7.0);
    assert_eq!(value("procguard_events_records_lost_total", ""), 2.0);
    assert_eq!(value("procguard_events_driver_reachable", ""), 1.0);
    assert_eq!(
        value("procguard_events_records_written_total", "sink=\"json\""),
        7.0
    );
    assert_eq!(
        value(
            "procguard_events_records_written_total",
            "sink=\"eventlog\""
        ),
        6.0
    );
    assert_eq!(
        value("procguard_events_write_errors_total", "sink=\"eventlog\""),
        1.0
    );
    // The driver's families, from its status (metrics::render).
    assert!(
        samples
            .iter()
            .any(|(name, _, _)| name.starts_with("procguard_")
                && !name.starts_with("procguard_events_")),
        "{text}"
    );
    // Without a driver: the service's families alone.
    let (cue, cued) = mpsc::channel::<()>();
    drop(cue);
    let mut unreachable =
        || -> Result<Box<dyn Device>, DeviceError> { Err(DeviceError::NotInstalled) };
    stats.reachable.store(false, Ordering::SeqCst);
    textfile::run(
        &path,
        Duration::from_secs(60),
        &mut unreachable,
        &stats,
        &cued,
    );
    let samples = parse_prometheus(&read(&path));
    assert!(samples
        .iter()
        .all(|(name, _, _)| name.starts_with("procguard_events_")));
    assert!(samples.contains(&(
        "procguard_events_driver_reachable".into(),
        String::new(),
        0.0
    )));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_textfile_is_rewritten_at_least_every_interval() {
    let dir = tempdir("interval");
    let path = dir.join("procguard.prom");
    let stats = std::sync::Arc::new(Stats::default());
    let (cue, cued) = mpsc::channel::<()>();
    let writer_stats = stats.clone();
    let writer_path = path.clone();
    let writer = std::thread::spawn(move || {
        let mut open =
            || -> Result<Box<dyn Device>, DeviceError> { Err(DeviceError::NotInstalled) };
        textfile::run(
            &writer_path,
            Duration::from_millis(100),
            &mut open,
            &writer_stats,
            &cued,
        );
    });
    std::thread::sleep(Duration::from_millis(50));
    stats.read.store(42, Ordering::SeqCst);
    // No cue: the interval alone brings the new value.
    std::thread::sleep(Duration::from_millis(300));
    assert!(read(&path).contains("procguard_events_records_read_total 42"));
    drop(cue);
    writer.join().unwrap();
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_rotation_keeps_appending_instead_of_losing_lines() {
    let dir = tempdir("blocked");
    let path = dir.join("events.jsonl");
    let mut file = RotatingFile::open(
        &path,
        Rotation {
            max_bytes: 10,
            keep: 1,
        },
    )
    .unwrap();
    file.write_line("{\"a\":1}").unwrap();
    // PATH.1 is a folder with a file in it: neither deleted nor replaced,
    // so the rotation fails (as when a reader holds the file on Windows).
    fs::create_dir(rotated(&path, 1)).unwrap();
    fs::write(rotated(&path, 1).join("x"), "").unwrap();
    file.write_line("{\"b\":2}").unwrap();
    assert_eq!(read(&path), "{\"a\":1}\n{\"b\":2}\n");
    assert_eq!(file.rotation_failures(), 1);
    // Unblocked: the next line rotates.
    fs::remove_dir_all(rotated(&path, 1)).unwrap();
    file.write_line("{\"c\":3}").unwrap();
    assert_eq!(read(&rotated(&path, 1)), "{\"a\":1}\n{\"b\":2}\n");
    assert_eq!(read(&path), "{\"c\":3}\n");
    let _ = fs::remove_dir_all(&dir);
}
