//! The in-memory session manager passes the session manager conformance suite.
#![allow(missing_docs)]

use cim_core::LocalSessionManager;

#[tokio::test]
async fn local_session_manager_conforms() {
    cim_core::testing::sessions::conformance(LocalSessionManager::new).await;
}

#[tokio::test]
async fn local_session_manager_with_one_shard_conforms() {
    cim_core::testing::sessions::conformance(|| LocalSessionManager::with_shards(1)).await;
}
