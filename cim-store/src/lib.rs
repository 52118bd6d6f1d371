//! # cim-store
//!
//! Offline messages for cim-rs: [`SledStore`], the
//! [`MessageStore`](cim_core::engine::MessageStore) on sled, with a configurable
//! [`Durability`].
//!
//! ```
//! use cim_core::engine::MessageStore;
//! use cim_core::Message;
//! use cim_store::{Durability, SledStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = SledStore::open(dir.path(), Durability::Always, 1000)?;
//! let msg = Message { id: 1, receiver: "10000".into(), content: "hi".into(), ..Message::default() };
//! let appended = store.append("10000", &msg).await?; // on disk when this returns
//! let pending = store.pending("10000", 0, 100).await?;
//! assert_eq!(pending[0].message, msg);
//! store.ack("10000", appended.seq).await?;
//! assert_eq!(store.count("10000").await?, 0);
//! # Ok(()) }
//! ```

mod keys;
mod redb_store;
mod sled_store;
mod value;
mod wal;

pub use redb_store::{RedbOpenError, RedbStore};
pub use sled_store::{Durability, OpenError, SledStore};
