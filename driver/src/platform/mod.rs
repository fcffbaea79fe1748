//! Thin kernel adapters: locks and IRQL scopes, pool allocation, debug
//! output and wide strings.

pub mod kernel_sync;
pub mod manual_queue;
pub mod pool;
pub mod trace;
pub mod wide_string;
