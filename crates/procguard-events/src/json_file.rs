//! The JSON-lines sink: one `json_line_with_images` object per record (and
//! one `"Event":"records-dropped"` object per loss), appended to a file
//! that rotates by size: when the next line would take the file past
//! `max_bytes`, `PATH.N-1` becomes `PATH.N` (the oldest, `PATH.keep`, is
//! deleted), ..., `PATH` becomes `PATH.1`, and a new `PATH` begins. A line is
//! never split: it goes whole into one file (a line longer than
//! `max_bytes` gets a file of its own). A partial last line that a crash
//! left behind is cut off when the file is opened again. When a rotation
//! fails (a reader holds the file without sharing delete), the line is
//! appended anyway and the next line tries again: records are not lost.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use procguardctl::events::{json_line_with_images, utc_time, ImageLookup};

use crate::drain::{Event, Sink};

/// Rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Largest size of a file, in bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` ... `PATH.keep`); 0 keeps none.
    pub keep: u32,
}

/// A size-rotated file of lines.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    size: u64,
    rotation_failures: u64,
}

/// `PATH.n`.
#[must_use]
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl RotatingFile {
    /// Opens (or creates) `path` for appending; a partial last line is cut.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        let mut this = Self {
            path: path.to_owned(),
            rotation,
            file: None,
            size: 0,
            rotation_failures: 0,
        };
        this.reopen()?;
        Ok(this)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        let mut size = file.metadata()?.len();
        if size > 0 {
            // Cut back to the last newline (a crash mid-line).
            let mut tail = Vec::new();
            let from = size.saturating_sub(64 * 1024);
            file.seek(SeekFrom::Start(from))?;
            file.read_to_end(&mut tail)?;
            if tail.last() != Some(&b'\n') {
                let keep = tail
                    .iter()
                    .rposition(|&byte| byte == b'\n')
                    .map_or(from, |at| from + at as u64 + 1);
                file.set_len(keep)?;
                size = keep;
            }
        }
        file.seek(SeekFrom::Start(size))?;
        self.file = Some(file);
        self.size = size;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.rotation.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let oldest = rotated(&self.path, self.rotation.keep);
            if oldest.exists() {
                fs::remove_file(&oldest)?;
            }
            for n in (1..self.rotation.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.reopen()
    }

    /// Appends `line` and a newline, rotating first if it would not fit.
    ///
    /// # Errors
    /// Writing or rotating failed.
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        let bytes = line.len() as u64 + 1;
        if self.size > 0 && self.size + bytes > self.rotation.max_bytes && self.rotate().is_err() {
            // A reader holding the file without FILE_SHARE_DELETE blocks
            // the renames: keep appending (the next line tries again)
            // rather than lose records.
            self.rotation_failures += 1;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let mut text = String::with_capacity(line.len() + 1);
        text.push_str(line);
        text.push('\n');
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("not open"))?;
        if let Err(error) = file.write_all(text.as_bytes()) {
            // Whatever part was written is cut on the next open.
            self.file = None;
            return Err(error);
        }
        self.size += bytes;
        Ok(())
    }

    /// Rotations that failed (the file then grew past the limit).
    #[must_use]
    pub const fn rotation_failures(&self) -> u64 {
        self.rotation_failures
    }

    /// Flushes to the disk.
    ///
    /// # Errors
    /// The flush failed.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Answers the lookup with images already known.
struct Known<'a>(u32, Option<&'a str>, u32, Option<&'a str>);

impl ImageLookup for Known<'_> {
    fn image(&mut self, pid: u32) -> Option<String> {
        if pid == self.0 {
            self.1.map(str::to_owned)
        } else if pid == self.2 {
            self.3.map(str::to_owned)
        } else {
            None
        }
    }
}

/// The JSON-lines sink.
#[derive(Debug)]
pub struct JsonSink {
    file: RotatingFile,
}

impl JsonSink {
    /// Opens the file.
    ///
    /// # Errors
    /// It cannot be opened.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        Ok(Self {
            file: RotatingFile::open(path, rotation)?,
        })
    }
}

/// A loss as a JSON line.
#[must_use]
pub fn dropped_line(loss: &crate::drain::Loss) -> String {
    let mut reason = String::new();
    for c in loss.reason.chars() {
        if c == '"' || c == '\\' {
            reason.push('\\');
        }
        reason.push(c);
    }
    format!(
        "{{\"UtcTime\":\"{}\",\"Object\":\"service\",\"Event\":\"records-dropped\",\"Count\":{},\"DriverDroppedTotal\":{},\"Reason\":\"{reason}\"}}",
        utc_time(loss.noticed),
        loss.count,
        loss.driver_total
    )
}

impl Sink for JsonSink {
    fn name(&self) -> &'static str {
        "json"
    }

    fn write(&mut self, event: &Event<'_>) -> io::Result<()> {
        match event {
            Event::Record {
                record,
                names,
                images,
            } => {
                let mut known = Known(
                    record.originator_process_id,
                    images.0,
                    record.process_id,
                    images.1,
                );
                self.file
                    .write_line(&json_line_with_images(record, names, &mut known))
            }
            Event::Dropped(loss) => self.file.write_line(&dropped_line(loss)),
            Event::Started { .. } | Event::Stopped { .. } | Event::Unreachable { .. } => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
