//! Tests of the parent module.

use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_head: 1024,
    max_headers: 8,
};

/// Feeds `input` to a framer in pieces of `piece` bytes, as a socket would deliver them;
/// returns the bytes passed and how it ended.
fn run(input: &[u8], piece: usize) -> (Vec<u8>, Step) {
    let mut f = Framer::new(LIMITS);
    let mut passed = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match f.step(&buf) {
            Step::Pass(n) => {
                assert!(n > 0);
                passed.extend(buf.drain(..n));
            }
            Step::Skip(n) => {
                assert!(n > 0);
                buf.drain(..n);
            }
            Step::More if fed < input.len() => {
                let to = (fed + piece).min(input.len());
                buf.extend_from_slice(&input[fed..to]);
                fed = to;
            }
            end => return (passed, end),
        }
    }
}

fn refused(input: &[u8]) -> Refusal {
    match run(input, input.len()).1 {
        Step::Refuse(r) => r,
        other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
    }
}

#[test]
fn pipelined_requests_pass_whole_in_any_split() {
    let input: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
        POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
        3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: y\r\n\r\n\
        GET /d HTTP/1.1\nHost: x\n\n";
    for piece in 1..=input.len() {
        let (passed, end) = run(input, piece);
        assert_eq!(passed, input, "piece {piece}");
        assert_eq!(end, Step::More, "piece {piece}");
    }
}

#[test]
fn garbage_request_line_is_refused_before_the_head_ends() {
    let (passed, end) = run(b"\x16\x03\x01\x02\x00\n", 64);
    assert!(passed.is_empty());
    assert!(
        matches!(&end, Step::Refuse(r) if r.status == StatusCode::BAD_REQUEST),
        "{end:?}"
    );
    assert_eq!(
        refused(b"GET / HTTP/2.0\r\n\r\n").reason,
        "bad request line: not an HTTP/1.0 or HTTP/1.1 request"
    );
    assert_eq!(refused(b"G(T / HTTP/1.1\r\n\r\n").status, 400);
}

#[test]
fn a_bad_head_after_a_good_one_is_refused_after_it_passed() {
    let good: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
    let input = [good, b"NOT HTTP AT ALL\r\n\r\n"].concat();
    let (passed, end) = run(&input, 7);
    assert_eq!(passed, good);
    assert!(matches!(end, Step::Refuse(r) if r.status == StatusCode::BAD_REQUEST));
}

#[test]
fn head_limit_at_the_edge() {
    // A head of exactly max_head bytes passes; one byte more is 431.
    let fill = |n: usize| {
        let start = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
        let pad = n - start.len() - 4;
        [start, vec![b'a'; pad], b"\r\n\r\n".to_vec()].concat()
    };
    let exact = fill(1024);
    assert_eq!(exact.len(), 1024);
    assert_eq!(run(&exact, 100), (exact.clone(), Step::More));
    let over = fill(1025);
    let (passed, end) = run(&over, 100);
    assert!(passed.is_empty());
    assert!(
        matches!(&end, Step::Refuse(r) if r.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        "{end:?}"
    );
    // A request line that does not end within the limit is 414.
    let long = [
        b"GET /".to_vec(),
        vec![b'a'; 1100],
        b" HTTP/1.1\r\n\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(refused(&long).status, StatusCode::URI_TOO_LONG);
}

#[test]
fn header_count_at_the_edge() {
    let with = |n: usize| {
        let mut h = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            h.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        h
    };
    let eight = with(8);
    assert_eq!(run(&eight, 5), (eight.clone(), Step::More));
    assert_eq!(
        refused(&with(9)).status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[test]
fn framing_headers_are_held_to_hyper_rules() {
    for (head, why) in [
        (
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            "Content-Length headers that differ",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "invalid Content-Length header",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "Transfer-Encoding must end in chunked",
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding is not allowed in an HTTP/1.0 request",
        ),
    ] {
        assert_eq!(refused(head).reason, why);
    }
}

#[test]
fn a_request_that_closes_ends_the_framing() {
    for input in [
        &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET",
    ] {
        let (passed, end) = run(input, 3);
        assert_eq!(end, Step::Stop);
        assert!(input.starts_with(&passed) && passed.len() < input.len());
    }
    // HTTP/1.0 that asks to be kept alive is.
    let input = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    assert_eq!(run(input, 4), (input.to_vec(), Step::More));
}

#[test]
fn a_malformed_chunk_goes_to_hyper_up_to_the_bad_byte_then_stops() {
    let head: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let input = [head, b"3\r\nabcX\r\n0\r\n\r\n"].concat();
    let (passed, end) = run(&input, 4);
    assert_eq!(end, Step::Stop);
    assert_eq!(passed, [head, b"3\r\nabcX"].concat());
}

#[test]
fn empty_lines_before_a_request_are_dropped() {
    let mut f = Framer::new(LIMITS);
    assert_eq!(f.step(b"\r\n\r\n\nGET"), Step::Skip(5));
    assert_eq!(f.step(b"\r"), Step::More);
    assert_eq!(f.step(b"\r\nGET"), Step::Skip(2));
    assert_eq!(f.step(b"GET"), Step::More);
    assert_eq!(f.step(b"GET / HTTP/1.1\r\n\r\n"), Step::Pass(18));
}

#[test]
fn in_body_while_a_body_is_unfinished() {
    let mut f = Framer::new(LIMITS);
    assert_eq!(
        f.step(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"),
        Step::Pass(38)
    );
    assert!(f.in_body());
    assert_eq!(f.step(b"ab"), Step::Pass(2));
    assert!(f.in_body());
    assert_eq!(f.step(b"cGET"), Step::Pass(1));
    assert!(!f.in_body());
}

#[test]
fn work_is_linear_in_a_trickled_head() {
    // A head of the largest size, one byte per read: each read rescans at most the two
    // bytes before it, and the head is parsed twice — not once per read, which would look
    // at about 500 times as many bytes.
    let mut input = b"GET / HTTP/1.1\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'a', LIMITS.max_head - input.len() - 5));
    input.extend_from_slice(b":\r\n\r\n");
    let mut f = Framer::new(LIMITS);
    let mut end = Step::More;
    for n in 1..=input.len() {
        end = f.step(&input[..n]);
        if end != Step::More {
            assert_eq!(n, input.len(), "{end:?}");
        }
    }
    assert_eq!(input.len(), LIMITS.max_head);
    assert_eq!(end, Step::Pass(input.len()));
    assert!(
        f.work <= 6 * input.len(),
        "{} for {} bytes",
        f.work,
        input.len()
    );
}

/// A target that skips the full parse is one the full parse takes: every short path of the
/// characters `plain_path` allows, and a sample of longer ones.
#[test]
fn plain_paths_are_taken_by_the_full_parse() {
    let allowed: Vec<char> = ('\u{20}'..='\u{7e}')
        .filter(|c| super::plain_path(&format!("/{c}")))
        .collect();
    assert!(allowed.len() > 70, "{allowed:?}");
    for a in &allowed {
        for b in &allowed {
            let path = format!("/{a}{b}");
            assert!(
                axum::http::Uri::try_from(path.as_str()).is_ok(),
                "{path:?} skips the parse but fails it"
            );
        }
    }
    for path in ["/api/v1/messages?x=1&y=%20", "/a:b@c/d;e=f,g+h*(i)!$'~"] {
        assert!(super::plain_path(path), "{path}");
        assert!(axum::http::Uri::try_from(path).is_ok(), "{path}");
    }
    for path in ["*", "http://h/x", "/a b", "/a\"b", "/a{b}", "/a#b", "/a\\b"] {
        assert!(!super::plain_path(path), "{path}");
    }
}
