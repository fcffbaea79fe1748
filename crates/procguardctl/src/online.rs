//! The commands that talk to the driver: `apply`, `status`, `policy show`,
//! `events`, `counters`. Each takes the device as `&mut dyn Device`.

use std::io::Write;
use std::time::Duration;

use procguard_policy::model::{Mode, OnTimeout, Policy};
use procguard_policy::toml::render_policy;
use procguard_policy::{decode, policy_id as blob_policy_id};
use procguard_protocol::ask::STATUS_CANCELLED;
use procguard_protocol::dispatch::{STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER};
use procguard_protocol::ioctl::{Status, PROTOCOL_VERSION};

use crate::device::{self, Device, DeviceError, RequestError};
use crate::events::{table_row, RuleNames, TABLE_HEADER};
use crate::offline::{describe_rules, CompiledFile};
use crate::{Failure, Output};

/// Records asked for per `IOCTL_READ_EVENTS`.
const EVENTS_PER_READ: usize = 256;

/// `apply`: sends the compiled policy, then reads the status back to confirm
/// the driver runs it.
///
/// # Errors
/// [`Failure`] with the driver's refusal or an unreachable driver.
pub fn apply(
    device: &mut dyn Device,
    file: &CompiledFile,
    persist: bool,
    output: &mut Output<'_>,
) -> Result<(), Failure> {
    match device::set_policy(device, &file.blob, persist) {
        Ok(()) => {}
        Err(RequestError::Device {
            error: DeviceError::Driver(STATUS_INVALID_PARAMETER),
            ..
        }) => {
            return Err(Failure::error(
                "the driver refused the policy (STATUS_INVALID_PARAMETER): it validates every blob \
                 and keeps the policy it had; is procguardctl older or newer than the driver?",
            ));
        }
        Err(error) => return Err(error.into()),
    }
    let status = device::get_status(device)?;
    if status.policy_id != file.policy_id {
        return Err(Failure::error(format!(
            "the driver accepted the policy but reports policy id {:#010x}, not {:#010x}: \
             another policy was applied meanwhile?",
            status.policy_id, file.policy_id
        )));
    }
    describe_rules(&file.policy, output.out)?;
    writeln!(
        output.out,
        "applied: policy id {:#010x}, {} rules in force{}",
        file.policy_id,
        status.rule_count,
        if persist {
            ", persisted (in force from boot)"
        } else {
            " (not persisted: the driver loads its stored policy at the next start)"
        }
    )?;
    Ok(())
}

fn version(version: u32) -> String {
    format!(
        "{}.{}.{}",
        version >> 16,
        (version >> 8) & 0xFF,
        version & 0xFF
    )
}

fn altitude(status: &Status) -> String {
    let units = status
        .altitude
        .get(..usize::from(status.altitude_len))
        .unwrap_or_default();
    String::from_utf16_lossy(units)
}

/// The `"PolicyUpdates"` object of `status --json`.
fn policy_updates_json(status: &Status) -> String {
    let updates = &status.policy_updates;
    let source = updates.source.map_or_else(
        || "null".to_owned(),
        |source| format!("\"{}\"", source.name()),
    );
    format!(
        "{{\"Applied\":{},\"Rejected\":{},\"LastRejectedStatus\":\"{}\",\"Source\":{source}}}",
        updates.applied,
        updates.rejected,
        crate::events::status_hex(updates.last_rejected_status),
    )
}

fn status_json(status: &Status) -> String {
    let c = &status.counters;
    let ask = &status.ask;
    let a = &ask.counters;
    let last_error = if status.last_error == 0 {
        "null".to_owned()
    } else {
        format!("\"{}\"", device::describe_ntstatus(status.last_error))
    };
    format!(
        "{{\"ProtocolVersion\":{},\"DriverVersion\":\"{}\",\"CallbacksRegistered\":{},\
         \"ProcessNotifyRegistered\":{},\"Altitude\":\"{}\",\"PolicyId\":\"{:#010x}\",\"RuleCount\":{},\
         \"TrackedProcesses\":{},\"LastError\":{last_error},\"AuditCapacity\":{},\"Counters\":{{\
         \"Seen\":{},\"Modified\":{},\"Audited\":{},\"SkippedKernel\":{},\"SkippedSelf\":{},\
         \"Exempt\":{},\"Unclassified\":{},\"EventsDropped\":{},\"EventsPending\":{}}},\
         \"Ask\":{{\"HandlerConnected\":{},\"HandlerProcessId\":{},\"TimeoutMs\":{},\"Slots\":{},\
         \"InFlight\":{},\"WorkersWaiting\":{},\"Counters\":{{\"Asked\":{},\"Answered\":{},\
         \"TimedOut\":{},\"NoHandler\":{},\"PoolFull\":{},\"Unaskable\":{},\"Cancelled\":{},\
         \"LateReplies\":{}}}}},\"PolicyUpdates\":{}}}",
        status.protocol_version,
        version(status.driver_version),
        status.callbacks_registered,
        status.notify_registered,
        altitude(status).escape_default(),
        status.policy_id,
        status.rule_count,
        status.tracked_processes,
        status.audit_capacity,
        c.seen,
        c.modified,
        c.audited,
        c.skipped_kernel,
        c.skipped_self,
        c.exempt,
        c.unclassified,
        c.events_dropped,
        c.events_pending,
        ask.handler_pid != 0,
        ask.handler_pid,
        ask.timeout_ms,
        ask.slots,
        ask.in_flight,
        ask.workers_waiting,
        a.asked,
        a.answered,
        a.timed_out,
        a.no_handler,
        a.pool_full,
        a.unaskable,
        a.cancelled,
        a.late_replies,
        policy_updates_json(status),
    )
}

fn write_counters(status: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    let c = &status.counters;
    let a = &status.ask.counters;
    for (label, value) in [
        ("requests seen", c.seen),
        ("access reduced", c.modified),
        ("audited", c.audited),
        ("kernel handles passed", c.skipped_kernel),
        ("self-opens passed", c.skipped_self),
        ("exempted", c.exempt),
        ("unclassified lookups", c.unclassified),
        ("audit records pending", c.events_pending),
        ("audit records dropped", c.events_dropped),
        ("asked", a.asked),
        ("ask answered", a.answered),
        ("ask timed out", a.timed_out),
        ("ask without handler", a.no_handler),
        ("ask pool full", a.pool_full),
        ("ask unaskable", a.unaskable),
        ("ask cancelled", a.cancelled),
        ("ask late replies", a.late_replies),
    ] {
        writeln!(out, "  {label:<24}{value}")?;
    }
    Ok(())
}

/// `status`.
///
/// # Errors
/// [`Failure`].
pub fn status(device: &mut dyn Device, json: bool, output: &mut Output<'_>) -> Result<(), Failure> {
    let status = device::get_status(device)?;
    if status.protocol_version != PROTOCOL_VERSION {
        writeln!(
            output.err,
            "warning: the driver speaks protocol {}, procguardctl protocol {PROTOCOL_VERSION}",
            status.protocol_version
        )?;
    }
    if json {
        writeln!(output.out, "{}", status_json(&status))?;
        return Ok(());
    }
    let yes_no = |flag: bool| if flag { "registered" } else { "NOT registered" };
    let out = &mut *output.out;
    writeln!(
        out,
        "procguard driver {} (protocol {})",
        version(status.driver_version),
        status.protocol_version
    )?;
    writeln!(
        out,
        "  object callbacks        {} (altitude {})",
        yes_no(status.callbacks_registered),
        if status.altitude_len == 0 {
            "none".to_owned()
        } else {
            altitude(&status)
        }
    )?;
    writeln!(
        out,
        "  process notify          {}",
        yes_no(status.notify_registered)
    )?;
    if status.rule_count == 0 && status.policy_id == 0 {
        writeln!(out, "  policy                  none (no rules in force)")?;
    } else {
        writeln!(
            out,
            "  policy                  {:#010x}, {} rules",
            status.policy_id, status.rule_count
        )?;
    }
    let updates = &status.policy_updates;
    writeln!(
        out,
        "  policy updates          {} applied, {} rejected{}{}",
        updates.applied,
        updates.rejected,
        if updates.rejected == 0 {
            String::new()
        } else {
            format!(
                " (last: {})",
                device::describe_ntstatus(updates.last_rejected_status)
            )
        },
        updates.source.map_or_else(String::new, |source| format!(
            "; in force from {}",
            source.name()
        )),
    )?;
    writeln!(
        out,
        "  tracked processes       {}",
        status.tracked_processes
    )?;
    writeln!(
        out,
        "  audit ring              {} records",
        status.audit_capacity
    )?;
    writeln!(
        out,
        "  last error              {}",
        if status.last_error == 0 {
            "none".to_owned()
        } else {
            device::describe_ntstatus(status.last_error)
        }
    )?;
    write_ask(&status, out)?;
    write_counters(&status, out)?;
    Ok(())
}

/// The ask path's state: the handler connection and the slot pool.
fn write_ask(status: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    let ask = &status.ask;
    if ask.handler_pid == 0 {
        writeln!(
            out,
            "  ask handler             not connected (asked requests get their fallback)"
        )?;
    } else {
        writeln!(
            out,
            "  ask handler             connected (pid {}), {} idle {}",
            ask.handler_pid,
            ask.workers_waiting,
            if ask.workers_waiting == 1 {
                "worker"
            } else {
                "workers"
            }
        )?;
    }
    writeln!(
        out,
        "  ask slots               {} in flight of {}, timeout {} ms",
        ask.in_flight, ask.slots, ask.timeout_ms
    )
}

/// The policy in force and its id; `None` (and a note on `err`) when the
/// blob does not decode, or no policy is in force.
fn active_policy(
    device: &mut dyn Device,
    err: &mut dyn Write,
) -> Result<(u32, Option<Policy>), Failure> {
    let (id, blob) = device::get_policy(device)?;
    if blob.is_empty() {
        return Ok((id, None));
    }
    match decode(&blob) {
        Ok(policy) => Ok((id, Some(policy))),
        Err(error) => {
            writeln!(
                err,
                "warning: the driver's policy blob does not decode ({error}): rules are shown by id"
            )?;
            Ok((id, None))
        }
    }
}

/// The rule names of the policy in force, and its id; empty names when the
/// blob does not decode.
fn active_rule_names(
    device: &mut dyn Device,
    err: &mut dyn Write,
) -> Result<(u32, RuleNames), Failure> {
    let (id, policy) = active_policy(device, err)?;
    Ok((id, rule_names(policy.as_ref())))
}

fn rule_names(policy: Option<&Policy>) -> RuleNames {
    RuleNames(policy.map_or_else(Vec::new, |policy| {
        policy.rules.iter().map(|r| r.name.to_string()).collect()
    }))
}

/// A rule's mode as `counters` shows it, and for an ask rule what its
/// requests get when no answer comes (shown after the name).
fn rule_mode_word(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::Enforce | Mode::Audit => (mode.name(), ""),
        Mode::Ask {
            on_timeout: OnTimeout::Strip,
        } => ("ask", " (on timeout: strip)"),
        Mode::Ask {
            on_timeout: OnTimeout::Allow,
        } => ("ask", " (on timeout: allow)"),
    }
}

/// `policy show`.
///
/// # Errors
/// [`Failure`], also when the driver's blob does not decode.
pub fn policy_show(device: &mut dyn Device, output: &mut Output<'_>) -> Result<(), Failure> {
    let (id, blob) = device::get_policy(device)?;
    if blob.is_empty() {
        writeln!(
            output.out,
            "# No policy in force: the driver runs with no rules."
        )?;
        return Ok(());
    }
    if blob_policy_id(&blob) != Some(id) {
        return Err(Failure::error(format!(
            "get policy: the header says policy id {id:#010x}, the blob is {}",
            blob_policy_id(&blob).map_or_else(|| "too short".to_owned(), |b| format!("{b:#010x}"))
        )));
    }
    let policy = decode(&blob).map_err(|error| {
        Failure::error(format!(
            "the driver's policy blob ({} bytes) does not decode: {error}",
            blob.len()
        ))
    })?;
    let text = render_policy(&policy).map_err(|error| {
        Failure::error(format!(
            "the driver's policy cannot be shown as TOML: {error}"
        ))
    })?;
    writeln!(
        output.out,
        "# Policy in force: id {id:#010x}, {} rules, {} bytes (procguardctl policy show)",
        policy.rules.len(),
        blob.len()
    )?;
    write!(output.out, "{text}")?;
    Ok(())
}

fn records(count: u64) -> String {
    if count == 1 {
        "1 audit record".to_owned()
    } else {
        format!("{count} audit records")
    }
}

/// How `events` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventOptions {
    /// Keep reading new records until Ctrl-C.
    pub follow: bool,
    /// JSON lines.
    pub json: bool,
    /// Stop after this many records.
    pub max: Option<u64>,
    /// With `follow`, against a driver without `IOCTL_WAIT_EVENTS` (older
    /// than protocol 2) only: the pause between polls.
    pub interval: Duration,
}

/// How `--follow` waits for the next records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// `IOCTL_WAIT_EVENTS`: the driver completes it when records arrive.
    Driver,
    /// The driver refused the wait (an older one): poll.
    Poll,
}

/// Why `--follow` stopped waiting.
enum Woken {
    /// Records may be waiting.
    Records,
    /// Ctrl-C.
    Interrupted,
}

/// Waits for records the way `waiting` says; switches to polling (with a
/// note) when the driver does not know the wait.
fn wait_for_records(
    device: &mut dyn Device,
    waiting: &mut Waiting,
    interval: Duration,
    err: &mut dyn Write,
) -> Result<Woken, Failure> {
    if device.interrupted() {
        return Ok(Woken::Interrupted);
    }
    if *waiting == Waiting::Driver {
        match device::wait_events(device) {
            Ok(_) => return Ok(Woken::Records),
            Err(RequestError::Device {
                error: DeviceError::Driver(STATUS_INVALID_DEVICE_REQUEST),
                ..
            }) => {
                writeln!(
                    err,
                    "note: the driver does not know IOCTL_WAIT_EVENTS (it is older than procguardctl): \
                     polling every {} ms",
                    interval.as_millis()
                )?;
                *waiting = Waiting::Poll;
            }
            Err(RequestError::Device {
                error: DeviceError::Driver(STATUS_CANCELLED),
                ..
            }) if device.interrupted() => return Ok(Woken::Interrupted),
            Err(RequestError::Device {
                error: DeviceError::Driver(STATUS_CANCELLED),
                ..
            }) => {
                return Err(Failure::error(
                    "wait for events: the driver cancelled the wait (is it stopping?)",
                ))
            }
            Err(error) => return Err(error.into()),
        }
    }
    std::thread::sleep(interval);
    Ok(if device.interrupted() {
        Woken::Interrupted
    } else {
        Woken::Records
    })
}

/// `events`: drains the driver's audit records, oldest first, and prints
/// them; with `follow`, waits for new ones (`IOCTL_WAIT_EVENTS`; polling
/// only when an older driver refuses it) until Ctrl-C (or `max` records).
///
/// # Errors
/// [`Failure`], also when a response is malformed.
pub fn events(
    device: &mut dyn Device,
    options: &EventOptions,
    output: &mut Output<'_>,
) -> Result<(), Failure> {
    let (mut policy_id, mut names) = active_rule_names(device, output.err)?;
    let mut waiting = Waiting::Driver;
    if options.follow {
        device.cancel_on_ctrl_c();
    }
    let mut printed: u64 = 0;
    let mut dropped_seen: Option<u64> = None;
    let mut header_written = false;
    loop {
        let room = options.max.map_or(EVENTS_PER_READ, |max| {
            usize::try_from(max.saturating_sub(printed))
                .unwrap_or(usize::MAX)
                .min(EVENTS_PER_READ)
        });
        if room == 0 {
            break;
        }
        let batch = device::read_events(device, room)?;
        match dropped_seen {
            Some(before) if batch.dropped > before => writeln!(
                output.err,
                "warning: the driver dropped {} (its ring was full)",
                records(batch.dropped - before)
            )?,
            None if batch.dropped > 0 => writeln!(
                output.err,
                "note: the driver has dropped {} since it started (ring full)",
                records(batch.dropped)
            )?,
            _ => {}
        }
        dropped_seen = Some(batch.dropped);
        for record in &batch.records {
            if options.json {
                // On Windows with SourceImage/TargetImage, looked up now.
                #[cfg(windows)]
                let line = crate::events::json_line_with_images(
                    record,
                    &names,
                    &mut crate::process_images::ProcessImages,
                );
                #[cfg(not(windows))]
                let line = crate::events::json_line(record, &names);
                writeln!(output.out, "{line}")?;
            } else {
                if !header_written {
                    writeln!(output.out, "{TABLE_HEADER}")?;
                    header_written = true;
                }
                writeln!(output.out, "{}", table_row(record, &names))?;
            }
            printed += 1;
        }
        output.out.flush()?;
        if batch.remaining > 0 && !batch.records.is_empty() {
            continue;
        }
        if !options.follow {
            break;
        }
        match wait_for_records(device, &mut waiting, options.interval, output.err)? {
            Woken::Records => {}
            Woken::Interrupted => break,
        }
        // A new policy renames the rules of the records that follow.
        let status = device::get_status(device)?;
        if status.policy_id != policy_id {
            (policy_id, names) = active_rule_names(device, output.err)?;
        }
    }
    if printed == 0 && !options.json {
        writeln!(output.err, "no audit records waiting")?;
    }
    Ok(())
}

/// `counters`.
///
/// # Errors
/// [`Failure`].
pub fn counters(
    device: &mut dyn Device,
    reset: bool,
    output: &mut Output<'_>,
) -> Result<(), Failure> {
    let status = device::get_status(device)?;
    let (rules_id, rules) = device::get_rule_counters(device, status.rule_count as usize)?;
    let (policy_id, policy) = active_policy(device, output.err)?;
    // Names and modes only when the counters are the policy's.
    let policy = policy.filter(|_| policy_id == rules_id);
    let names = rule_names(policy.as_ref());
    writeln!(output.out, "requests")?;
    write_counters(&status, output.out)?;
    if rules.is_empty() {
        writeln!(output.out, "no rules in force")?;
    } else {
        writeln!(output.out, "rules of policy {rules_id:#010x}")?;
        writeln!(
            output.out,
            "  {:<6}{:<9}{:<12}{:<12}NAME",
            "RULE", "MODE", "HITS", "STRIPS"
        )?;
        for (index, (hits, strips)) in rules.iter().enumerate() {
            let name = u32::try_from(index)
                .ok()
                .and_then(|id| names.get(id))
                .unwrap_or("?");
            let (mode, fallback) = policy
                .as_ref()
                .and_then(|policy| policy.rules.get(index))
                .map_or(("?", ""), |rule| rule_mode_word(rule.mode));
            writeln!(
                output.out,
                "  {index:<6}{mode:<9}{hits:<12}{strips:<12}{name}{fallback}"
            )?;
        }
    }
    if reset {
        device::reset_counters(device)?;
        writeln!(output.out, "counters reset")?;
    }
    Ok(())
}
