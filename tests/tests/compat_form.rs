//! CIM's form endpoint, `POST /api/message/send`, on the `cim-server` binary: fields that are not
//! UTF-8 once decoded are refused with a JSON 400, and nothing is sent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::time::Duration;

use cim_codec_binary::BinaryCodec;
use common::process::*;
use common::*;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

#[tokio::test]
async fn invalid_utf8_in_form_fields_is_refused() {
    let p = ServerProcess::start(&[]);
    let h = p.addr("http");
    let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    c.bind("utf", "android", "d").await;

    for (path, body, why) in [
        (
            "/api/message/send",
            "sender=sys&receiver=utf&action=2&content=%ff%fe",
            "bad form body: a field value is not valid UTF-8",
        ),
        (
            "/api/message/send?sender=sys&receiver=utf&action=2&title=%c3",
            "",
            "bad query string: a field value is not valid UTF-8",
        ),
        (
            "/api/message/send",
            "sender=sys&receiver=utf&action=2&%e4%b8=x",
            "bad form body: a field name is not valid UTF-8",
        ),
    ] {
        let r = http(h, "POST", path, &[FORM], body).await;
        assert_eq!(r.status, 400, "{path} {body}: {r:?}");
        let j = r.json();
        assert_eq!(j["error"], why, "{r:?}");
        assert_eq!(j["status"], 400);
        assert_eq!(
            (j["code"].as_i64(), j["message"].as_str()),
            (Some(400), Some(why))
        );
    }
    // Nothing was sent; a valid form with the same escapes of UTF-8 is.
    let r = http(
        h,
        "POST",
        "/api/message/send",
        &[FORM],
        "sender=sys&receiver=utf&action=2&content=%E4%B8%AD%E6%96%87",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let m = c.message().await;
    assert_eq!(m.content, "中文");
    let extra = tokio::time::timeout(Duration::from_millis(200), c.next()).await;
    assert!(extra.is_err(), "{extra:?}");
}
