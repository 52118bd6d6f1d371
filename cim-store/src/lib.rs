//! # cim-store
//!
//! Offline messages for cim-rs: two [`MessageStore`](cim_core::engine::MessageStore)s on
//! disk, with a configurable [`Durability`] and a per-account cap. Each is a feature (`redb`,
//! `sled`; both on by default), so a build that needs one compiles only that database.
//!
//! - [`RedbStore`] (the server's default): redb, one writer thread that commits queued
//!   operations in batches, and under [`Durability::Always`] a write-ahead log so that concurrent
//!   appends share one `fdatasync`; the log holds every delete too (acks, the cap's drops,
//!   expiry), so a crash undoes nothing that was answered. Expiry reads an index ordered by
//!   storage time, so it costs what expires; reads run on the runtime's blocking threads. Its
//!   file stays small under an append-and-delete churn.
//! - [`SledStore`]: sled 0.34. Kept for those who ask for it; it keeps dead space after deletes
//!   (see `BENCHMARKS.md`).
//!
//! Both pass `cim_core::testing::store::conformance`, including a reopen in the middle.
//!
//! ```
//! use cim_core::engine::MessageStore;
//! use cim_core::Message;
//! use cim_store::{Durability, RedbStore, StoreOptions};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = RedbStore::open(dir.path(), StoreOptions::new(Durability::Always, 1000))?;
//! let msg = Message { id: 1, receiver: "10000".into(), content: "hi".into(), ..Message::default() };
//! let appended = store.append("10000", &msg).await?; // on disk when this returns
//! let pending = store.pending("10000", 0, 100).await?;
//! assert_eq!(pending[0].message, msg);
//! store.ack("10000", appended.seq).await?;
//! assert_eq!(store.count("10000").await?, 0);
//! # Ok(()) }
//! ```

#[cfg(feature = "sled")]
mod keys;
mod options;
#[cfg(feature = "redb")]
mod redb_store;
#[cfg(feature = "sled")]
mod sled_store;
#[cfg_attr(not(any(feature = "redb", feature = "sled")), allow(dead_code))]
mod value;
#[cfg(feature = "redb")]
mod wal;

pub use options::{Durability, StoreOptions};
#[cfg(feature = "redb")]
pub use redb_store::{RedbOpenError, RedbStore};
#[cfg(feature = "sled")]
pub use sled_store::{OpenError, SledStore};
