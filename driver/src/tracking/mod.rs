//! Which processes run, and what each one is to the policy.
//!
//! [`process_table`] maps a pid to its record (lock-free reads);
//! [`process_identity`] finds a process's id, creation key and image path;
//! [`pending_classification`] holds the processes a callback met without a
//! record until the next notification classifies them (no I/O in the
//! callbacks).

pub mod pending_classification;
pub mod process_identity;
pub mod process_table;
