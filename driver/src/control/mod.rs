//! The control plane: `\Device\ProcGuard`, its IOCTLs and the registry.
//!
//! [`policy_apply`] puts a policy in force from any source (start, IOCTL,
//! registry change), counting and recording it;
//! [`control_device`] creates the device and its queue; [`control_target`]
//! carries out what the IOCTLs ask; [`parameters`] reads and writes the
//! service's `Parameters` key; [`altitude`] validates the configured
//! altitude and chooses the retries after a collision.

pub mod altitude;
pub mod control_device;
pub mod control_target;
pub mod events_wait;
pub mod parameters;
pub mod policy_apply;
pub mod registry_callback;
pub mod registry_watch;
