//! Headless Chromium driven through chromedriver (the Debian packages `chromium` and
//! `chromium-driver`; scripts/test installs them).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::WAIT;

/// chromedriver on a free port of 127.0.0.1; killed (by pid) when dropped.
pub struct Driver {
    child: Child,
    pub port: u16,
}

impl Driver {
    pub async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver (Debian package chromium-driver)");
        let driver = Driver { child, port };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session: chromedriver, a fresh profile, and headless Chromium with `extra` flags.
/// Keep all three until the end of the test (dropping the driver ends the browser).
pub struct Browser {
    pub client: fantoccini::Client,
    pub driver: Driver,
    pub profile: tempfile::TempDir,
}

impl Browser {
    pub async fn open(extra: &[String]) -> Browser {
        let driver = Driver::start().await;
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-gpu".to_owned(),
            "--no-first-run".to_owned(),
            // Nothing but the test's own pages: no update checks, no sync, no component fetches.
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend(extra.iter().cloned());
        let capabilities = json!({
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        });
        let client = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(capabilities.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromedriver session");
        Browser {
            client,
            driver,
            profile,
        }
    }

    /// Ends the session, then the driver.
    pub async fn close(self) {
        self.client.close().await.unwrap();
        drop(self.driver);
    }
}
