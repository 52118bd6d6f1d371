//! The HTTP API of the `cim-server` binary under careless and hostile clients: the account-id
//! rule at every entry.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::process::*;

const UID_MAX: usize = 16;

/// A server whose account ids are at most 16 bytes, with tokens on.
fn uid_server() -> ServerProcess {
    ServerProcess::start(&[
        ("CIM_AUTH__MAX_UID_BYTES", "16"),
        ("CIM_AUTH__TOKEN_SECRET", "a-secret-of-32-characters-000000"),
    ])
}

/// Account ids at the edge, as JSON strings: (id, why refused — `None` if accepted).
fn json_ids() -> Vec<(String, Option<&'static str>)> {
    vec![
        ("é".repeat(UID_MAX / 2), None),
        (
            "u".repeat(UID_MAX + 1),
            Some("is 17 bytes, more than the limit of 16"),
        ),
        (
            "a\\u0001b".to_owned(),
            Some("contains the control character U+0001 at byte 1"),
        ),
    ]
}

#[tokio::test]
async fn account_ids_in_paths_and_queries_at_the_edge() {
    let p = uid_server();
    let h = p.addr("http");
    for path in [
        "/api/v1/accounts/{}/sessions",
        "/api/v1/accounts/{}/pending",
    ] {
        for method in ["GET", "DELETE"] {
            for (uid, refusal) in [
                ("u".repeat(UID_MAX), None),
                (
                    "u".repeat(UID_MAX + 1),
                    Some("uid is 17 bytes, more than the limit of 16"),
                ),
                (String::new(), Some("uid is empty")),
                (
                    "a%0Ab".to_owned(),
                    Some("uid contains the control character U+000A at byte 1"),
                ),
            ] {
                let r = http(h, method, &path.replace("{}", &uid), &[], "").await;
                match refusal {
                    None => assert_eq!(r.status, 200, "{method} {path} {uid}: {r:?}"),
                    Some(why) => assert_eq!(r.json_error(400), why, "{method} {path} {uid:?}"),
                }
            }
        }
    }
    for (query, refusal) in [
        ("uid=".to_owned() + &"u".repeat(UID_MAX), None),
        (
            "uid=".to_owned() + &"u".repeat(UID_MAX + 1),
            Some("uid is 17 bytes, more than the limit of 16"),
        ),
        ("uid=".to_owned(), Some("uid is empty")),
        (
            "uid=a%7Fb".to_owned(),
            Some("uid contains the control character U+007F at byte 1"),
        ),
    ] {
        let r = http(h, "GET", &format!("/api/v1/sessions?{query}"), &[], "").await;
        match refusal {
            None => assert_eq!(r.json()["total"], 0, "{query}: {r:?}"),
            Some(why) => assert_eq!(r.json_error(400), why, "{query}"),
        }
    }
}

#[tokio::test]
async fn account_ids_in_every_send_form_and_token_at_the_edge() {
    let p = uid_server();
    let h = p.addr("http");
    let pending = |uid: String| async move {
        http(
            h,
            "GET",
            &format!("/api/v1/accounts/{uid}/pending"),
            &[],
            "",
        )
        .await
        .json()["pending"]
            .as_u64()
            .unwrap()
    };
    let max = "é".repeat(UID_MAX / 2);
    for (id, refusal) in json_ids() {
        // (endpoint, body, field as the reason names it)
        let cases = [
            (
                "/api/v1/messages",
                format!(r#"{{"receiver":"{id}"}}"#),
                "receiver",
            ),
            (
                "/api/v1/messages",
                format!(r#"{{"receiver":"r","sender":"{id}"}}"#),
                "sender",
            ),
            (
                "/api/v1/messages/batch",
                format!(r#"{{"messages":[{{"receiver":"r"}},{{"receiver":"{id}"}}]}}"#),
                "messages[1].receiver",
            ),
            (
                "/api/v1/messages/batch",
                format!(r#"{{"messages":[{{"receiver":"r","sender":"{id}"}}]}}"#),
                "messages[0].sender",
            ),
            (
                "/api/v1/broadcast",
                format!(r#"{{"sender":"{id}"}}"#),
                "sender",
            ),
            (
                "/api/v1/broadcast",
                format!(r#"{{"receiver":"{id}"}}"#),
                "receiver",
            ),
            (
                "/api/v1/tags/t/messages",
                format!(r#"{{"sender":"{id}"}}"#),
                "sender",
            ),
            ("/api/v1/tokens", format!(r#"{{"uid":"{id}"}}"#), "uid"),
        ];
        for (path, body, field) in cases {
            let r = http(h, "POST", path, &[JSON], &body).await;
            match refusal {
                None => assert_eq!(r.status, 200, "{path} {body}: {r:?}"),
                Some(why) => {
                    assert_eq!(r.json_error(400), format!("{field} {why}"), "{path} {body}")
                }
            }
        }
    }
    // Empty: a required account is required, a given one may not be empty.
    for (path, body, why) in [
        (
            "/api/v1/messages",
            r#"{"receiver":""}"#,
            "receiver is required",
        ),
        (
            "/api/v1/messages",
            r#"{"receiver":"r","sender":""}"#,
            "sender is empty",
        ),
        (
            "/api/v1/messages/batch",
            r#"{"messages":[{"receiver":""}]}"#,
            "messages[0].receiver is required",
        ),
        ("/api/v1/broadcast", r#"{"sender":""}"#, "sender is empty"),
        (
            "/api/v1/tags/t/messages",
            r#"{"sender":""}"#,
            "sender is empty",
        ),
        ("/api/v1/tokens", r#"{"uid":""}"#, "uid is required"),
    ] {
        assert_eq!(
            http(h, "POST", path, &[JSON], body).await.json_error(400),
            why,
            "{path} {body}"
        );
    }
    // What was accepted was stored for the offline account; nothing refused was.
    assert_eq!(pending(max.clone()).await, 2);
    assert_eq!(pending("r".into()).await, 3);

    // CIM's endpoint answers in its own shape.
    let form = "application/x-www-form-urlencoded";
    for (field, value, why) in [
        ("receiver", "u".repeat(UID_MAX), None),
        (
            "receiver",
            "u".repeat(UID_MAX + 1),
            Some("receiver is 17 bytes, more than the limit of 16"),
        ),
        (
            "sender",
            "u".repeat(UID_MAX + 1),
            Some("sender is 17 bytes, more than the limit of 16"),
        ),
        ("receiver", String::new(), Some("receiver is required")),
        (
            "sender",
            "a%01b".into(),
            Some("sender contains the control character U+0001 at byte 1"),
        ),
    ] {
        let other = if field == "sender" {
            "receiver"
        } else {
            "sender"
        };
        let body = format!("{field}={value}&{other}=x&action=2");
        let r = http(
            h,
            "POST",
            "/api/message/send",
            &[("content-type", form)],
            &body,
        )
        .await;
        match why {
            None => assert_eq!(r.json()["code"], 200, "{body}: {r:?}"),
            Some(why) => {
                assert_eq!(r.status, 400, "{body}: {r:?}");
                assert_eq!(
                    (r.json()["code"].as_u64(), r.json()["message"].as_str()),
                    (Some(400), Some(why))
                );
            }
        }
    }
    assert_eq!(pending("u".repeat(UID_MAX)).await, 1);
}
