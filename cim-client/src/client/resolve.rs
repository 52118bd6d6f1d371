//! Where an attempt connects: the fixed endpoint, the node dispatch names, or the last good
//! address when dispatch cannot be asked.

use tracing::{debug, warn};

use super::task::Task;
use crate::config::{Endpoint, Target};
use crate::dispatch::DispatchUrl;

/// Where an attempt connects, and why there.
pub(super) struct Resolved {
    pub(super) endpoint: Endpoint,
    /// The node dispatch named.
    pub(super) node: Option<String>,
    /// The dispatch URL that named it.
    pub(super) asked: Option<DispatchUrl>,
    /// Why dispatch could not be asked, when this is the last good address instead.
    pub(super) fallback: Option<String>,
}

impl Resolved {
    /// A failed attempt's reason, saying where it went when dispatch chose (or failed to).
    pub(super) fn explain(&self, reason: String) -> String {
        match (&self.fallback, &self.node) {
            (Some(why), _) => format!("{why}; the last good address {}: {reason}", self.endpoint),
            (None, Some(node)) => format!("node {node} at {}: {reason}", self.endpoint),
            (None, None) => reason,
        }
    }
}

impl Task {
    /// Where to connect now: the fixed endpoint; or, following dispatch, the address it names
    /// for the protocol — or, when it cannot be asked, the last address a bind succeeded on.
    /// `Err` (retried with back-off) when there is neither.
    pub(super) async fn resolve(&mut self) -> std::result::Result<Resolved, String> {
        let (urls, protocol) = match &self.config.target {
            Target::Endpoint(e) => {
                return Ok(Resolved {
                    endpoint: e.clone(),
                    node: None,
                    asked: None,
                    fallback: None,
                });
            }
            Target::Dispatch { urls, protocol } => (urls, protocol),
        };
        let limit = self.config.connect_timeout;
        let mut whys = Vec::new();
        for k in 0..urls.len() {
            let i = (self.dispatch_from + k) % urls.len();
            let Some(url) = urls.get(i) else { continue };
            let asked = tokio::time::timeout(
                limit,
                crate::dispatch::ask_avoiding(
                    url,
                    self.avoid.as_deref(),
                    self.config.ca_file.as_deref(),
                    self.config.max_frame,
                ),
            )
            .await;
            whys.push(match asked {
                Ok(Ok(node)) => {
                    let addr = protocol.address_in(&node);
                    if !addr.is_empty() {
                        debug!(node = %node.node, %addr, %url, "dispatch named a node");
                        self.dispatch_from = i;
                        return Ok(Resolved {
                            endpoint: protocol.at(addr),
                            node: Some(node.node.clone()),
                            asked: Some(url.clone()),
                            fallback: None,
                        });
                    }
                    format!(
                        "dispatch {url} named node {:?}, which has no {} address",
                        node.node,
                        protocol.listener()
                    )
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("dispatch {url}: no answer within {limit:?} (connect_timeout)"),
            });
        }
        let why = if whys.is_empty() {
            "no dispatch URL is configured".to_owned()
        } else {
            whys.join("; ")
        };
        match &self.last_good {
            Some(last) => {
                warn!(reason = %why, fallback = %last, "dispatch failed; trying the last good address");
                Ok(Resolved {
                    endpoint: last.clone(),
                    node: None,
                    asked: None,
                    fallback: Some(why),
                })
            }
            None => Err(why),
        }
    }

    /// Asks dispatch to pass over `node` next time (when a node dispatch named is the one that
    /// failed; a failed fallback to the last good address keeps what was asked before).
    pub(super) fn pass_over(&mut self, node: &Option<String>) {
        if node.is_some() {
            self.avoid.clone_from(node);
        }
    }
}
