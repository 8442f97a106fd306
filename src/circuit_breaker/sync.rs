//! The atomics and lock of the breaker's state machine and windows: loom's in the crate's own
//! model checks (`--cfg rampart_loom`, see `loom_tests.rs`), the standard ones otherwise. Only
//! the crate's unit tests switch, so no downstream build ever gets loom atomics.

#[cfg(all(test, rampart_loom))]
pub(crate) use loom::{
    hint::spin_loop,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU8, AtomicU32, AtomicU64, fence},
    },
};
#[cfg(not(all(test, rampart_loom)))]
pub(crate) use std::{
    hint::spin_loop,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU8, AtomicU32, AtomicU64, fence},
    },
};
