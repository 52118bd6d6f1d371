//! The conformance suite of [`MessageStore`]: every implementation runs [`conformance`].
//! `reopen` (when the store persists) closes the store and opens it again on the same data,
//! to check what survives a restart.

use std::future::Future;

use crate::Message;
use crate::engine::MessageStore;

fn msg(id: i64, content: &str) -> Message {
    Message {
        id,
        action: "2".into(),
        content: content.into(),
        receiver: "u".into(),
        timestamp: id,
        // Every stored message carries an attachment, so that the checks of whole messages
        // below see the two fields survive.
        file: format!("http://files.example/{id}.png"),
        file_type: "image".into(),
        ..Message::default()
    }
}

/// Runs every check on a fresh store from `make`. `reopen(store)` drops the store and opens the
/// same data again (`None` for stores that do not persist). `cap` is the store's per-account cap
/// (at least 5).
pub async fn conformance<S, M, MF, R, RF>(make: M, reopen: Option<R>, cap: usize)
where
    S: MessageStore,
    M: Fn() -> MF,
    MF: Future<Output = S>,
    R: Fn(S) -> RF,
    RF: Future<Output = S>,
{
    // Order, paging and per-account isolation.
    let s = make().await;
    for i in 1..=4 {
        let a = s.append("u", &msg(i, &format!("m{i}"))).await.unwrap();
        assert_eq!(a.seq, i as u64);
    }
    s.append("v", &msg(100, "other")).await.unwrap();
    let all = s.pending("u", 0, 100).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|p| p.message.content.as_str())
            .collect::<Vec<_>>(),
        ["m1", "m2", "m3", "m4"]
    );
    assert_eq!(all[0].message, msg(1, "m1"));
    let page = s.pending("u", 2, 1).await.unwrap();
    assert_eq!(page.iter().map(|p| p.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(s.count("u").await.unwrap(), 4);
    assert_eq!(s.count("v").await.unwrap(), 1);
    assert_eq!(s.count("nobody").await.unwrap(), 0);
    assert_eq!(s.last_seq("u").await.unwrap(), 4);
    assert_eq!(s.last_seq("nobody").await.unwrap(), 0);

    // Acks delete up to a sequence, or up to a message id.
    assert_eq!(s.ack("u", 2).await.unwrap(), 2);
    assert_eq!(s.ack("u", 2).await.unwrap(), 0);
    assert_eq!(s.pending("u", 0, 100).await.unwrap()[0].seq, 3);
    assert_eq!(s.ack_id("u", 999).await.unwrap(), 0);
    assert_eq!(s.ack_id("u", 3).await.unwrap(), 1);
    assert_eq!(s.count("u").await.unwrap(), 1);

    // Sequences keep increasing after acks, and across a restart.
    let s = match &reopen {
        Some(reopen) => {
            s.flush().await.unwrap();
            reopen(s).await
        }
        None => s,
    };
    assert_eq!(s.count("u").await.unwrap(), 1);
    assert_eq!(s.count("v").await.unwrap(), 1);
    assert_eq!(s.last_seq("u").await.unwrap(), 4);
    assert_eq!(s.pending("u", 0, 1).await.unwrap()[0].message, msg(4, "m4"));
    let a = s.append("u", &msg(5, "m5")).await.unwrap();
    assert_eq!(a.seq, 5);
    assert_eq!(
        s.pending("u", 0, 100)
            .await
            .unwrap()
            .iter()
            .map(|p| p.message.id)
            .collect::<Vec<_>>(),
        [4, 5]
    );

    // Clear.
    assert_eq!(s.clear("u").await.unwrap(), 2);
    assert_eq!(s.count("u").await.unwrap(), 0);
    assert_eq!(s.append("u", &msg(6, "m6")).await.unwrap().seq, 6);

    // The cap drops the oldest.
    let s = make().await;
    let mut dropped = 0;
    for i in 1..=(cap as i64 + 3) {
        dropped += s.append("c", &msg(i, "x")).await.unwrap().dropped;
    }
    assert_eq!(dropped, 3);
    assert_eq!(s.count("c").await.unwrap(), cap);
    assert_eq!(s.pending("c", 0, 1).await.unwrap()[0].message.id, 4);

    // Expiry by age.
    let s = make().await;
    s.append("e", &msg(1, "old")).await.unwrap();
    let cut = crate::now_ms() + 1;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    s.append("e", &msg(2, "new")).await.unwrap();
    assert_eq!(s.expire(cut).await.unwrap(), 1);
    assert_eq!(
        s.pending("e", 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.message.id)
            .collect::<Vec<_>>(),
        [2]
    );

    // Arbitrary account names, including ones that prefix each other.
    let s = make().await;
    for uid in ["a", "ab", "a\u{0}b", "", "中文"] {
        s.append(uid, &msg(1, uid)).await.unwrap();
    }
    for uid in ["a", "ab", "a\u{0}b", "", "中文"] {
        let p = s.pending(uid, 0, 10).await.unwrap();
        assert_eq!(p.len(), 1, "{uid:?}");
        assert_eq!(p[0].message.content, uid);
    }
}
