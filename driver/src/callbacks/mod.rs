//! The kernel's callbacks into the driver: handle requests and process
//! notifications.
//!
//! [`object_callbacks`] registers the pre-operation callbacks and reads the
//! kernel's request; [`handle_decision`] finds the records of target and
//! requester, asks the policy engine, and appends the audit record;
//! [`process_tracking`] handles process creation and exit and keeps the
//! process table current.

pub mod handle_decision;
pub mod object_callbacks;
pub mod process_tracking;
