//! The in-memory session manager passes the session manager conformance suite.
#![allow(missing_docs)]

use std::sync::Arc;

use cim_core::LocalSessionManager;
use cim_core::testing::sessions::{Node, conformance};

#[tokio::test]
async fn local_session_manager_conforms() {
    conformance(|| async { vec![Node::local("node-0", Arc::new(LocalSessionManager::new()))] })
        .await;
}

#[tokio::test]
async fn local_session_manager_with_one_shard_conforms() {
    conformance(|| async {
        vec![Node::local(
            "node-0",
            Arc::new(LocalSessionManager::with_shards(1)),
        )]
    })
    .await;
}

#[tokio::test]
async fn memory_store_conforms() {
    use cim_core::engine::MemoryStore;
    cim_core::testing::store::conformance(
        || async { MemoryStore::new(5) },
        None::<fn(MemoryStore) -> std::future::Ready<MemoryStore>>,
        5,
    )
    .await;
}
