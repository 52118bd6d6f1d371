//! The command line: the options every scenario shares and the scenarios.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cim-bench",
    version,
    about = "A load generator for cim-rs servers"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Args)]
pub struct Common {
    /// The server binary to start (default: cim-server beside this program).
    #[arg(long, global = true, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Measure a running server at this TCP address instead of starting one.
    #[arg(long, global = true, value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
    /// The running server's HTTP API address (broadcast, push --via http).
    #[arg(long, global = true, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// The running server's pid, for its memory and CPU figures.
    #[arg(long, global = true)]
    pub pid: Option<u32>,
    /// Source addresses 127.0.0.1 … 127.0.0.K to spread connections over (0: one per 25 000
    /// connections).
    #[arg(long, global = true, default_value_t = 0)]
    pub sources: u8,
    /// Connections being set up at once.
    #[arg(long, global = true, default_value_t = 200)]
    pub concurrency: usize,
    /// Print one JSON object with the results (and no progress bars).
    #[arg(long, global = true)]
    pub json: bool,
    /// Generator processes sharing the connections of `connect` and `idle` (each process may
    /// open only as many sockets as its open-file limit allows).
    #[arg(long, global = true, default_value_t = 1)]
    pub procs: usize,
    /// Server processes to start, the connections of `connect` and `idle` spread over them
    /// round robin (independent servers: for runs larger than one process's open-file limit).
    #[arg(long, global = true, default_value_t = 1)]
    pub servers: usize,
    /// Every connection over TLS: a server started here gets a certificate made for the run
    /// (its TCP port speaking TLS); a server given by --addr needs --ca.
    #[arg(long, global = true)]
    pub tls: bool,
    /// With --tls and --addr: the CA certificates (PEM) to trust; the certificate must be
    /// valid for the address's IP.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Run across a cluster of this many nodes (a, b, c, …) on a redis-server that cim-bench
    /// starts (a free port of 127.0.0.1, append-only file fsynced at every write): push (the
    /// publisher on node a, the subscribers on the others), failover and storm (clients of the
    /// SDK bound through dispatch; the last node killed with kill -9).
    #[arg(long, global = true, value_name = "NODES")]
    pub cluster: Option<usize>,
    /// With --cluster: the nodes' cluster.heartbeat_ms.
    #[arg(long, global = true, default_value_t = 1000)]
    pub cluster_heartbeat_ms: u64,
    /// With --cluster: the nodes' cluster.node_deadline_ms.
    #[arg(long, global = true, default_value_t = 5000)]
    pub cluster_deadline_ms: u64,
}

#[derive(Subcommand)]
pub enum Scenario {
    /// N clients connect and bind: time until all are bound, binds per second.
    Connect {
        /// Clients.
        #[arg(short, long, default_value_t = 10_000)]
        n: usize,
    },
    /// N bound clients held open: the server's resident memory per connection.
    Idle {
        /// Clients held open.
        #[arg(short, long, default_value_t = 10_000)]
        n: usize,
        /// Seconds to hold the connections before measuring.
        #[arg(long, default_value_t = 2)]
        hold: u64,
    },
    /// N subscribers, one publisher sending M messages round robin.
    Push {
        /// Subscribers (accounts s0 … s{N-1}).
        #[arg(short, long, default_value_t = 1_000)]
        n: usize,
        /// Messages in all.
        #[arg(short, long, default_value_t = 1_000_000)]
        m: u64,
        /// Messages per second (0: as fast as the server takes them).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Content bytes per message (at least 20: the send time).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// How the publisher sends.
        #[arg(long, value_enum, default_value_t = Via::Socket)]
        via: Via,
        /// Keep-alive HTTP connections for --via http.
        #[arg(long, default_value_t = 8)]
        http_conns: usize,
        /// Messages per HTTP request for --via http (more than 1: the batch endpoint).
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// One message to all N connected clients, COUNT times: deliveries per second.
    Broadcast {
        /// Connected clients.
        #[arg(short, long, default_value_t = 10_000)]
        n: usize,
        /// Rounds, one after the other.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// Broadcasts per round, sent back to back without waiting for their deliveries (a
        /// stream of messages to everyone; each round ends when all have arrived).
        #[arg(long, default_value_t = 1)]
        burst: u32,
        /// Before each round, the clients idle this long, in milliseconds (a lone broadcast to
        /// idle connections, which a server may treat otherwise than ones that have just been
        /// written to: cim-server writes to a connection idle longer than its
        /// `connection.park_after_ms` without resuming its task). The server's CPU figure
        /// counts the idle time too. Without it: none before the first round, 100 ms between.
        #[arg(long)]
        idle_ms: Option<u64>,
    },
    /// A cluster of two nodes on a Redis that cim-bench starts (redis-server on a free port of
    /// 127.0.0.1, append-only file fsynced at every write): N subscribers on the second node, a
    /// publisher on the first — beside the same push on a single node; then binds per second
    /// across both nodes, and how long the second node's sessions take to vanish from the
    /// first's view after it is killed with `kill -9`.
    Cluster {
        /// Subscribers (accounts s0 … s{N-1}).
        #[arg(short, long, default_value_t = 1_000)]
        n: usize,
        /// Messages in all, for each of the two pushes.
        #[arg(short, long, default_value_t = 300_000)]
        m: u64,
        /// Content bytes per message (at least 20).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// How the publisher sends.
        #[arg(long, value_enum, default_value_t = Via::Socket)]
        via: Via,
        /// Keep-alive HTTP connections for --via http.
        #[arg(long, default_value_t = 8)]
        http_conns: usize,
        /// Messages per HTTP request for --via http.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Clients that bind across the two nodes (half each) for binds per second.
        #[arg(long, default_value_t = 10_000)]
        binds: usize,
        /// The nodes' cluster.heartbeat_ms.
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// The nodes' cluster.node_deadline_ms.
        #[arg(long, default_value_t = 5000)]
        deadline_ms: u64,
    },
    /// N bound clients; the server restarts; time until all are bound again. With --cluster:
    /// N clients of the SDK bound through dispatch; the last node is killed with kill -9 while
    /// messages are sent to its clients' accounts; time until they are all bound again through
    /// dispatch, the most and fewest clients per surviving node, messages lost.
    Storm {
        /// Clients that reconnect.
        #[arg(short, long, default_value_t = 10_000)]
        n: usize,
    },
    /// With --cluster: N clients of the SDK bound through dispatch; a publisher sends M messages
    /// through node a's HTTP API, round robin over them; halfway the last node is killed with
    /// kill -9; every send answered 200 is checked against what reached the applications.
    Failover {
        /// Clients (accounts f0 … f{N-1}).
        #[arg(short, long, default_value_t = 1_000)]
        n: usize,
        /// Messages in all.
        #[arg(short, long, default_value_t = 100_000)]
        m: u64,
        /// Keep-alive HTTP connections of the publisher.
        #[arg(long, default_value_t = 8)]
        http_conns: usize,
    },
    /// One generator process of a `--procs` run (started by cim-bench itself).
    #[command(hide = true)]
    Worker {
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<SocketAddr>,
        #[arg(long)]
        first: usize,
        #[arg(short, long)]
        n: usize,
        #[arg(long)]
        prefix: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// `client_message` over a bound TCP connection.
    Socket,
    /// `POST /api/v1/messages` over keep-alive HTTP connections.
    Http,
}
