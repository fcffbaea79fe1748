//! What readers see without locks: policy generations and audit records.
//!
//! [`policy_state`] publishes policy generations that the callbacks read
//! lock-free, freed after a [`grace_period`]; [`audit_ring`] queues the
//! audit records.

pub mod audit_ring;
pub mod grace_period;
pub mod policy_state;
