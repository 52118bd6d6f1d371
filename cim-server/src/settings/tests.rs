//! Tests of the parent module.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_need_nothing() {
    let s = Settings::load(None, env(&[])).unwrap();
    assert_eq!(s, Settings::default());
    assert_eq!(
        (s.tcp.port, s.websocket.port, s.http.port),
        (23456, 34567, 8080)
    );
}

#[test]
fn environment_overrides_file() {
    let dir = std::env::temp_dir().join(format!("cim-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cim.toml");
    std::fs::write(&file, "[tcp]\nport = 1111\n[websocket]\nmode = \"json\"\n").unwrap();
    let s = Settings::load(
        Some(&file),
        env(&[("CIM_TCP__PORT", "2222"), ("OTHER", "x")]),
    )
    .unwrap();
    assert_eq!(s.tcp.port, 2222);
    assert_eq!(s.websocket.mode, crate::transport::WsMode::Json);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn errors_name_the_key_and_value() {
    let e = Settings::load(None, env(&[("CIM_TCP__PORT", "abc")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tcp.port") && e.contains("abc"), "{e}");
    for (var, key) in [
        ("CIM_TCP__PORT", "`tcp.port`"),
        ("CIM_HTTP__PORT", "`http.port`"),
        ("CIM_WEBSOCKET__TLS__PORT", "`websocket.tls.port`"),
    ] {
        let e = Settings::load(None, env(&[(var, "65536")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("65536 is not a port: must be 0 to 65535") && e.contains(key),
            "{e}"
        );
    }
    let e = Settings::load(None, env(&[("CIM_TCP__MAX_FRAME", "70000")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tcp.max_frame") && e.contains("70000"), "{e}");
    let e = Settings::load(None, env(&[("CIM_WEBSOCKET__MODE", "xml")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`websocket.mode`")
            && e.contains("\"xml\"")
            && e.contains("expected one of auto, protobuf, json"),
        "{e}"
    );
    let e = Settings::load(None, env(&[("CIM_STORE__DURABILITY", "sometimes")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`store.durability`") && e.contains("always, interval, os"),
        "{e}"
    );
    let e = Settings::load(None, env(&[("CIM_TCP__HOST", "not a host")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`tcp.host`") && e.contains("not a host"), "{e}");
    let e = Settings::load(None, env(&[("CIM_CONNECTION__MAX_DATA_ENTRIES", "0")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("connection.max_data_entries") && e.contains('0'),
        "{e}"
    );
    let s = Settings::load(None, env(&[("CIM_CONNECTION__MAX_DATA_ENTRIES", "1")])).unwrap();
    assert_eq!(s.connection.max_data_entries, 1);
    let e = Settings::load(
        None,
        env(&[("CIM_CONNECTION__PARK_AFTER_MS", "4294967296")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("connection.park_after_ms") && e.contains("4294967296"),
        "{e}"
    );
    for ms in ["0", "4294967295"] {
        let s = Settings::load(None, env(&[("CIM_CONNECTION__PARK_AFTER_MS", ms)])).unwrap();
        assert_eq!(s.connection.park_after_ms.to_string(), ms);
        assert_eq!(s.connection_config().park_after.as_millis().to_string(), ms);
    }
    let e = Settings::load(None, env(&[("CIM_TCP__PATH", "/x")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`tcp.path`") && e.contains("only the websocket"),
        "{e}"
    );
}

/// The server's environment is its own `CIM_<SECTION>__<KEY>` and `CIM_<KEY>` variables:
/// the command-line client's `CIM_API_KEY` (or any `CIM_` variable that names no key of the
/// server) is left alone, while a section that does not exist is a mistake, named.
#[test]
fn only_the_servers_own_variables_are_read() {
    let s = Settings::load(
        None,
        env(&[
            ("CIM_API_KEY", "for the cli"),
            ("CIM_LOG", "debug"),
            ("CIM_SOMETHING_ELSE", "x"),
            ("CIM_NODE", "n7"),
        ]),
    )
    .unwrap();
    assert_eq!(s.node, "n7");
    let e = Settings::load(None, env(&[("CIM_TPC__PORT", "1")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("CIM_TPC__PORT") && e.contains("`tpc`"), "{e}");
    // A key that does not exist in a section that does is still an error.
    let e = Settings::load(None, env(&[("CIM_TCP__PROT", "1")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("prot"), "{e}");
}

/// Hosts are resolved at start-up, and where a listener really listens decides what it
/// needs: the HTTP API off loopback an API key, a long-connection listener off loopback a
/// token secret (or anonymous binds allowed in so many words).
#[tokio::test]
async fn off_loopback_needs_a_key_and_a_secret() {
    let s = Settings::load(None, env(&[("CIM_TCP__HOST", "localhost")])).unwrap();
    let addrs = s.resolve().await.unwrap();
    assert!(addrs.tcp.ip().is_loopback() && addrs.tcp.port() == 23456);
    let s = Settings::load(None, env(&[("CIM_HTTP__HOST", "0.0.0.0")])).unwrap();
    if cfg!(feature = "http") {
        let e = s.resolve().await.unwrap_err().to_string();
        assert!(e.contains("`http.api_key`"), "{e}");
        // The address named once when the host is one already.
        assert!(e.contains("(http.host = 0.0.0.0)"), "{e}");
    } else {
        // Without the HTTP API nothing listens there, so no key is needed.
        s.resolve().await.unwrap();
    }
    let s = Settings::load(None, env(&[("CIM_TCP__HOST", "0.0.0.0")])).unwrap();
    let e = s.resolve().await.unwrap_err().to_string();
    assert!(
        e.contains("`tcp.host`")
            && e.contains("auth.token_secret")
            && e.contains("auth.allow_anonymous"),
        "{e}"
    );
    for extra in [
        ("CIM_AUTH__TOKEN_SECRET", "0123456789abcdef"),
        ("CIM_AUTH__ALLOW_ANONYMOUS", "true"),
    ] {
        let s = Settings::load(None, env(&[("CIM_WEBSOCKET__HOST", "0.0.0.0"), extra])).unwrap();
        s.resolve().await.unwrap();
    }
    // A listener that is off needs nothing.
    let s = Settings::load(
        None,
        env(&[("CIM_XML__HOST", "0.0.0.0"), ("CIM_XML__ENABLED", "false")]),
    )
    .unwrap();
    s.resolve().await.unwrap();
}

#[test]
fn http_and_uid_limits_refuse_zero_naming_the_key() {
    for (var, key) in [
        ("CIM_HTTP__BODY_TIMEOUT_MS", "http.body_timeout_ms"),
        ("CIM_HTTP__MAX_CONNECTIONS", "http.max_connections"),
        ("CIM_HTTP__MAX_HEAD", "http.max_head"),
        ("CIM_HTTP__MAX_HEADERS", "http.max_headers"),
        ("CIM_AUTH__MAX_UID_BYTES", "auth.max_uid_bytes"),
    ] {
        let e = Settings::load(None, env(&[(var, "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{key}` = 0")), "{e}");
    }
    for (var, key, bad, good) in [
        ("CIM_HTTP__MAX_HEAD", "http.max_head", "65537", "65536"),
        ("CIM_HTTP__MAX_HEAD", "http.max_head", "1023", "1024"),
        (
            "CIM_HTTP__MAX_CONNECTIONS",
            "http.max_connections",
            "4294967296",
            "4294967295",
        ),
        (
            "CIM_HTTP__MAX_HEADERS",
            "http.max_headers",
            "10001",
            "10000",
        ),
        (
            "CIM_AUTH__MAX_UID_BYTES",
            "auth.max_uid_bytes",
            "65536",
            "65535",
        ),
        // Message ids hold 8 bits of the node number.
        ("CIM_NODE_ID", "node_id", "256", "255"),
    ] {
        let e = Settings::load(None, env(&[(var, bad)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{key}` = {bad}")), "{e}");
        Settings::load(None, env(&[(var, good)])).unwrap();
    }
}

/// The sample in the repository documents every key with its default value.
#[test]
fn sample_file_is_the_defaults() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cim.toml");
    let s = Settings::load(Some(&sample), env(&[])).unwrap();
    assert_eq!(s, Settings::default());
    let text = std::fs::read_to_string(&sample).unwrap();
    let printed = Settings::default().to_toml();
    for line in printed.lines().filter(|l| l.contains(" = ")) {
        let key = line.split(" = ").next().unwrap();
        assert!(
            text.contains(&format!("{key} =")),
            "cim.toml does not mention {key}"
        );
    }
}

/// What `--print-config` prints loads back as the same settings, and each listener's section
/// holds only the keys it takes.
#[test]
fn the_printed_settings_load_back_and_name_only_what_each_listener_takes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("printed.toml");
    let mut s = Settings::default();
    s.websocket.path = "/ws".into();
    s.xml.enabled = true;
    s.xml.flash_policy = true;
    std::fs::write(&file, s.to_toml()).unwrap();
    assert_eq!(Settings::load(Some(&file), env(&[])).unwrap(), s);
    let printed: toml::Table = s.to_toml().parse().unwrap();
    let keys = |section: &str| -> Vec<String> {
        printed[section]
            .as_table()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    for (section, foreign) in super::listener::FOREIGN_KEYS {
        let keys = keys(section);
        assert!(keys.contains(&"port".to_owned()), "[{section}]: {keys:?}");
        for k in *foreign {
            assert!(!keys.contains(&(*k).to_owned()), "[{section}] shows {k}");
        }
    }
    assert!(keys("websocket").contains(&"path".to_owned()));
    assert!(keys("xml").contains(&"flash_policy".to_owned()));
    assert!(keys("tcp").contains(&"tls".to_owned()));
}

#[test]
fn print_masks_secrets() {
    let mut s = Settings::default();
    s.http.api_key = "topsecret".into();
    s.http.metrics_key = "scrapesecret".into();
    let t = s.to_toml();
    assert!(!t.contains("topsecret") && t.contains("api_key"), "{t}");
    assert!(
        !t.contains("scrapesecret") && t.contains("metrics_key"),
        "{t}"
    );
}

/// `[tcp.tls]` in a file: with `port`, TLS beside the plain listener; without, on it.
#[test]
fn tls_tables_read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cim.toml");
    std::fs::write(
        &file,
        "[tcp.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nport = 23443\n\
         [websocket.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    )
    .unwrap();
    let s = Settings::load(Some(&file), env(&[])).unwrap();
    assert_eq!(s.tcp.tls.port, Some(23443));
    assert!(s.tcp.tls.beside());
    assert!(s.websocket.tls.enabled() && !s.websocket.tls.beside());
    assert!(!s.xml.tls.enabled());
    let e = Settings::load(Some(&file), env(&[("CIM_TCP__TLS__PORT", "23456")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`tcp.tls.port` = 23456") && e.contains("is tcp.port"),
        "{e}"
    );
}

/// A cluster with a node-local store is refused naming both keys; with the default store
/// (`auto`) a cluster uses its Redis, and one node keeps redb.
#[test]
fn a_cluster_needs_the_shared_store() {
    let redis = ("CIM_CLUSTER__REDIS", "redis://127.0.0.1:6379");
    for local in ["redb", "sled", "memory"] {
        let e = Settings::load(None, env(&[redis, ("CIM_STORE__BACKEND", local)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`store.backend`") && e.contains(local) && e.contains("cluster.redis"),
            "{e}"
        );
    }
    let s = Settings::load(None, env(&[redis])).unwrap();
    assert_eq!(s.store_backend(), StoreBackend::Redis);
    let s = Settings::load(None, env(&[])).unwrap();
    assert_eq!(s.store_backend(), StoreBackend::Redb);
    let e = Settings::load(None, env(&[("CIM_STORE__BACKEND", "redis")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`store.backend`") && e.contains("cluster.redis"),
        "{e}"
    );
    let e = Settings::load(None, env(&[("CIM_CLUSTER__REDIS", "localhost:6379")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`cluster.redis`") && e.contains("localhost:6379"),
        "{e}"
    );
    let e = Settings::load(
        None,
        env(&[
            redis,
            ("CIM_CLUSTER__HEARTBEAT_MS", "500"),
            ("CIM_CLUSTER__NODE_DEADLINE_MS", "999"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`cluster.node_deadline_ms` = 999"), "{e}");
    Settings::load(
        None,
        env(&[
            redis,
            ("CIM_CLUSTER__HEARTBEAT_MS", "500"),
            ("CIM_CLUSTER__NODE_DEADLINE_MS", "1000"),
        ]),
    )
    .unwrap();
    for key in ["TIMEOUT_MS", "HANDOVER_TIMEOUT_MS"] {
        let var = format!("CIM_CLUSTER__{key}");
        let e = Settings::load(None, env(&[redis, (var.as_str(), "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("`cluster.{}` = 0", key.to_lowercase())),
            "{e}"
        );
        Settings::load(None, env(&[redis, (var.as_str(), "1")])).unwrap();
    }
    let e = Settings::load(None, env(&[redis, ("CIM_NODE", "a b")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`node`") && e.contains("a b"), "{e}");
}

/// The access keys: lists from a file and from the environment, and errors that name the key.
#[test]
fn access_keys_read_and_refuse_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cim.toml");
    std::fs::write(
        &file,
        "[tcp]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\"]\n\
         [http]\ndeny = [\"203.0.113.0/24\"]\nforwarded_header = \"x-real-ip\"\n",
    )
    .unwrap();
    let s = Settings::load(
        Some(&file),
        env(&[("CIM_WEBSOCKET__ALLOW", "127.0.0.0/8, ::1")]),
    )
    .unwrap();
    let tcp = s.tcp.access();
    assert!(tcp.proxy_protocol && tcp.trusts("10.1.1.1".parse().unwrap()));
    assert!(!tcp.trusts("192.168.1.8".parse().unwrap()));
    assert_eq!(s.websocket.allow.to_string(), "127.0.0.0/8,::1/128");
    assert_eq!(
        s.http.access().forwarded_header,
        crate::access::ForwardedHeader::XRealIp
    );
    assert!(
        s.http
            .access()
            .admits("203.0.113.9".parse().unwrap())
            .is_err()
    );

    let e = Settings::load(None, env(&[("CIM_TCP__DENY", "10.0.0.0/33")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tcp.deny") && e.contains("10.0.0.0/33"), "{e}");
    let e = Settings::load(None, env(&[("CIM_XML__PROXY_PROTOCOL", "true")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`xml.proxy_protocol` = true") && e.contains("xml.trusted_proxies"),
        "{e}"
    );
    let e = Settings::load(None, env(&[("CIM_TCP__FORWARDED_HEADER", "forwarded")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`tcp.forwarded_header`"), "{e}");
    let e = Settings::load(None, env(&[("CIM_HTTP__FORWARDED_HEADER", "via")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("http.forwarded_header") && e.contains("via"),
        "{e}"
    );
}

/// `max_proxy_header` takes 232 to 65551 bytes, on every listener and the HTTP API.
#[test]
fn the_proxy_header_limit_holds_at_its_edges() {
    for section in ["TCP", "WEBSOCKET", "XML", "HTTP"] {
        let var = format!("CIM_{section}__MAX_PROXY_HEADER");
        for (value, ok) in [
            ("231", false),
            ("232", true),
            ("65551", true),
            ("65552", false),
        ] {
            let got = Settings::load(None, env(&[(&var, value)]));
            assert_eq!(got.is_ok(), ok, "{var}={value}: {got:?}");
            if let Err(e) = got {
                let e = e.to_string();
                let key = format!("{}.max_proxy_header", section.to_ascii_lowercase());
                assert!(e.contains(&key) && e.contains(value), "{e}");
            }
        }
    }
}

/// `store.read_threads` holds at 1 and 512 and refuses 0 and 513, naming the key and value.
#[test]
fn the_store_read_threads_hold_at_their_edges() {
    assert_eq!(
        Settings::load(None, env(&[])).unwrap().store.read_threads,
        4
    );
    for (value, ok) in [("0", false), ("1", true), ("512", true), ("513", false)] {
        let got = Settings::load(None, env(&[("CIM_STORE__READ_THREADS", value)]));
        assert_eq!(got.is_ok(), ok, "{value}: {got:?}");
        if let Err(e) = got {
            let e = e.to_string();
            assert!(e.contains("store.read_threads") && e.contains(value), "{e}");
        }
    }
}

/// `worker_threads` is 0 (one per core) unless set, holds at 1024 and refuses 1025, naming the
/// key and value.
#[test]
fn the_worker_threads_hold_at_their_edges() {
    assert_eq!(Settings::load(None, env(&[])).unwrap().worker_threads, 0);
    for (value, ok) in [("0", true), ("1", true), ("1024", true), ("1025", false)] {
        let got = Settings::load(None, env(&[("CIM_WORKER_THREADS", value)]));
        assert_eq!(got.is_ok(), ok, "{value}: {got:?}");
        match got {
            Ok(s) => assert_eq!(s.worker_threads.to_string(), value),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("worker_threads") && e.contains(value), "{e}");
            }
        }
    }
}

/// With the HTTP API built in, it is on unless turned off.
#[cfg(feature = "http")]
#[test]
fn http_is_on_by_default_with_the_feature() {
    assert!(Settings::default().http.enabled);
    assert!(Settings::load(None, env(&[])).unwrap().http.enabled);
    let off = Settings::load(None, env(&[("CIM_HTTP__ENABLED", "false")])).unwrap();
    assert!(!off.http.enabled);
}

/// Without the HTTP API, `http.enabled` is off by default, `[http]` still parses, and an
/// explicit `true` (from a file or the environment) is refused naming the key and the feature.
#[cfg(not(feature = "http"))]
#[test]
fn http_enabled_without_the_feature_is_off_and_true_refused() {
    let s = Settings::load(None, env(&[])).unwrap();
    assert!(!s.http.enabled);
    let e = Settings::load(None, env(&[("CIM_HTTP__ENABLED", "true")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`http.enabled` = true"), "{e}");
    assert!(e.contains("without the `http` feature"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cim.toml");
    std::fs::write(
        &file,
        "[http]\nport = 9000\napi_key = \"k\"\nmax_batch = 10\n",
    )
    .unwrap();
    let s = Settings::load(Some(&file), env(&[])).unwrap();
    assert!(!s.http.enabled);
    assert_eq!((s.http.port, s.http.max_batch), (9000, 10));
    std::fs::write(&file, "[http]\nenabled = false\n").unwrap();
    assert!(!Settings::load(Some(&file), env(&[])).unwrap().http.enabled);
    std::fs::write(&file, "[http]\nenabled = true\n").unwrap();
    let e = Settings::load(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`http.enabled` = true"), "{e}");
    // A value the section does not have is still a mistake.
    std::fs::write(&file, "[http]\nenable = true\n").unwrap();
    let e = Settings::load(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("enable"), "{e}");
}

/// A file that is not TOML is named by its path as given, before the parser's account of where
/// it stopped.
#[test]
fn a_malformed_file_is_named_by_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "[tcp\nport = 1\n").unwrap();
    let e = Settings::load(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    let named = format!("{}: ", file.display());
    assert!(e.contains(&named), "{e}");
    assert!(e.contains("line 1"), "{e}");
}
