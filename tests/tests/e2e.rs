//! The end-to-end tests: one module per part, built and linked once as one test binary.
//! (`proxy` is a binary of its own: it installs a process-wide metrics recorder, which
//! would count the other tests' servers too.)

mod common;

mod bench;
mod binary;
mod cli;
mod client;
mod cluster;
mod cluster_clients;
mod cluster_drain;
mod cluster_redis;
mod codecs;
mod compat_form;
mod console_browser;
mod crash;
mod data_limits;
mod hostile;
mod http;
mod limits;
mod log_context;
mod message_ids;
mod metrics;
mod metrics_access;
mod metrics_cluster;
mod offline;
mod packaging;
mod park;
mod protocol_doc;
mod tcp;
mod tls;
mod tls_browser;
mod websocket;
mod xml;
mod xml_2x;
