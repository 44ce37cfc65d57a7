//! What the API refuses, and to whom: the roles of keys, the least time between refreshes,
//! the caps on event streams and connections, and the header-read timeout that closes idle and
//! trickling sockets before any key is checked.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::app::*;
use crate::helpers::eventually;

/// Sends `method path` with `key`; the status, the `Retry-After` header and the JSON body.
async fn call(app: &TestApp, method: Method, path: &str, key: &str) -> (u16, Option<u64>, Value) {
    let r = app
        .client
        .request(method, app.url(path))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = match r.headers()["content-type"].to_str().unwrap() {
        "application/json" => r.json().await.unwrap(),
        _ => Value::Null,
    };
    (status, retry_after, body)
}

/// `/status` once the sync has ended, as an admin sees it.
async fn status_after_sync(app: &TestApp) -> Value {
    eventually(Duration::from_secs(30), "the sync ends", || async {
        let (_, _, status) = call(app, Method::GET, "/status", KEY).await;
        match status["sync"]["state"] == "idle" && status["sync"]["last_failure"].is_string() {
            true => Ok(status),
            false => Err(status.to_string()),
        }
    })
    .await
}

#[tokio::test]
async fn each_key_does_what_its_role_allows_and_is_told_which_key_does_more() {
    // A configured sync that fails at once (the test-only fault), so that /status has an error.
    let app = spawn_app_with_env(faulty_pma_env("panic")).await;
    for path in ["/fetch-data", "/tables", "/status", "/fetch-data?since=x"] {
        let (status, _, body) = call(&app, Method::GET, path, READ_KEY).await;
        assert_ne!(status, 403, "{path}: {body}");
        assert_ne!(status, 401, "{path}: {body}");
    }
    let admin_only = [
        (Method::POST, "/refresh", "POST /refresh"),
        (Method::GET, "/failures/latest.png", "failure screenshot"),
        (
            Method::GET,
            "/fetch-data?stream=true&refresh=true",
            "refresh=true",
        ),
        (Method::GET, "/fetch-data?refresh=1", "refresh=true"),
    ];
    for (method, path, what) in &admin_only {
        let (status, _, body) = call(&app, method.clone(), path, READ_KEY).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(what) && message.contains("ADMIN_API_KEY"),
            "{message}"
        );
    }
    // Only a read key may travel in a URL.
    let r = app
        .client
        .get(app.url(&format!("/fetch-data?stream=true&api_key={KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Only a read key"),
        "{body}"
    );
    let (status, _, body) = call(&app, Method::GET, "/metrics", READ_KEY).await;
    assert_eq!(status, 403);
    assert!(
        body["message"].as_str().unwrap().contains("METRICS_KEY"),
        "{body}"
    );

    // The metrics key reads /metrics and nothing else.
    let (status, _, _) = call(&app, Method::GET, "/metrics", METRICS_KEY).await;
    assert_eq!(status, 200);
    for (method, path) in [
        (Method::GET, "/fetch-data"),
        (Method::GET, "/status"),
        (Method::GET, "/tables"),
        (Method::POST, "/refresh"),
    ] {
        let (status, _, body) = call(&app, method.clone(), path, METRICS_KEY).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(body["message"].as_str().unwrap().contains("/metrics only"));
    }

    // An admin key does everything; its /status has the details, a read key's does not.
    let (status, _, _) = call(&app, Method::GET, "/metrics", KEY).await;
    assert_eq!(status, 200);
    let (status, _, body) = call(&app, Method::POST, "/refresh", OTHER_KEY).await;
    assert_eq!(status, 202, "{body}");
    let admin = status_after_sync(&app).await;
    let error = admin["sync"]["last_error"].as_str().unwrap();
    assert!(error.contains("panic"), "{admin}");
    assert!(admin["sync"]["recent"][0]["error"].is_string(), "{admin}");
    assert!(admin.get("details").is_none(), "{admin}");
    let (_, _, read) = call(&app, Method::GET, "/status", READ_KEY).await;
    assert_eq!(read["details"], "admin only", "{read}");
    assert!(read["sync"]["last_failure"].is_string(), "{read}");
    let text = read.to_string();
    assert!(
        !text.contains("panic") && !text.contains("127.0.0.1:9"),
        "{read}"
    );
    assert!(read["sync"]["last_error"]
        .as_str()
        .unwrap()
        .contains("admin key"));
}

#[tokio::test]
async fn a_refresh_flood_starts_one_sync_per_interval_and_the_rest_are_told_when_to_return() {
    let mut env = faulty_pma_env("panic");
    env.push(("REFRESH_MIN_INTERVAL", "1h".into()));
    let app = spawn_app_with_env(env).await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(call(&app, Method::POST, "/refresh", KEY).await);
    }
    let started = answers.iter().filter(|(s, _, _)| *s == 202).count();
    assert_eq!(started, 1, "{answers:?}");
    for (status, retry_after, body) in answers.iter().filter(|(s, _, _)| *s != 202) {
        assert_eq!(*status, 429, "{body}");
        let wait = retry_after.expect("Retry-After");
        assert!((3500..=3600).contains(&wait), "{wait}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("REFRESH_MIN_INTERVAL (1h)"), "{message}");
    }
    // An event stream that asks for a refresh within the interval gets the cached table,
    // then the refusal as a coded event.
    let r = app
        .client
        .get(app.url("/fetch-data?stream=true&refresh=true"))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    let events = read_events(r, Duration::from_secs(30)).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["cached", "error", "done"]);
    assert_eq!(events[1]["code"], "refresh_too_soon", "{}", events[1]);
    let status = status_after_sync(&app).await;
    assert_eq!(
        status["sync"]["recent"].as_array().unwrap().len(),
        1,
        "one sync ran: {status}"
    );
}

#[tokio::test]
async fn a_failed_sync_reaches_subscribers_as_a_code_and_a_short_message() {
    let app = spawn_app_with_env(faulty_pma_env("panic")).await;
    let r = app.get_fetch_data("?stream=true&refresh=true").await;
    let events = read_events(r, Duration::from_secs(30)).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["cached", "error", "done"]);
    assert_eq!(events[1]["code"], "sync_failed");
    let message = events[1]["message"].as_str().unwrap();
    assert!(
        message.contains("previous version is still served"),
        "{message}"
    );
    assert!(
        !message.contains("panic") && !message.contains("127.0.0.1"),
        "{message}"
    );
}

/// Opens a stream with `key`; the response, its body unread.
async fn open_stream(app: &TestApp, key: &str) -> reqwest::Response {
    // A client of its own: each stream on a connection of its own.
    reqwest::Client::new()
        .get(app.url("/fetch-data?stream=true&payload=none"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn event_streams_are_capped_per_key_and_in_all() {
    let app = spawn_app_with_env(vec![
        ("MAX_STREAMS_PER_KEY", "2".into()),
        ("MAX_STREAMS", "3".into()),
    ])
    .await;
    let first = open_stream(&app, KEY).await;
    let second = open_stream(&app, KEY).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open_stream(&app, KEY).await;
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "5");
    let message: Value = third.json().await.unwrap();
    assert!(message["message"]
        .as_str()
        .unwrap()
        .contains("MAX_STREAMS_PER_KEY"));
    // Another key has its own share, up to the server's.
    let other = open_stream(&app, OTHER_KEY).await;
    assert_eq!(other.status(), 200);
    let over = open_stream(&app, READ_KEY).await;
    assert_eq!(over.status(), 503);
    assert!(over.headers().contains_key("retry-after"));
    // A live query counts as a stream too.
    let live = reqwest::Client::new()
        .get(app.url("/query?stream=true&sql=SELECT%201"))
        .header("X-API-Key", READ_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 503);
    // A stream that ends gives its place back.
    drop(first);
    eventually(
        Duration::from_secs(60),
        "the closed stream's place is free",
        || async {
            let again = open_stream(&app, KEY).await;
            match again.status().as_u16() {
                200 => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;
    drop((second, other));
}

/// Descriptors the process holds open.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Whether the server closed `socket` (end of file or reset) within `wait`.
async fn closed_by_server(socket: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(wait, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or the like before closing.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn idle_and_trickling_sockets_are_capped_then_closed_and_answers_come_back() {
    const IDLE: usize = 2000;
    const TRICKLING: usize = 200;
    const CAP: usize = 1500;
    let app = spawn_app_with(Options {
        seed: Some(SMALL_CSV),
        process: true,
        env: vec![
            ("HEADER_READ_TIMEOUT", "3s".into()),
            ("MAX_CONNECTIONS", CAP.to_string()),
        ],
        ..Options::default()
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Each trickling socket sends a byte of its request head every 200 ms, never finishing.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut trickling = Vec::new();
    for _ in 0..TRICKLING {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        let stop = stop.clone();
        trickling.push(tokio::spawn(async move {
            let head = b"GET /fetch-data HTTP/1.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for byte in head.iter().cycle() {
                tokio::select! {
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                if socket.write_all(&[*byte]).await.is_err() {
                    // The server closed it.
                    return true;
                }
            }
            unreachable!("the head never ends")
        }));
    }
    // With 2,200 sockets open at it, the server holds no more than its cap.
    let held = descriptors(app.pid());
    assert!(held <= CAP + 256, "{held} descriptors for a cap of {CAP}");
    // Answers come back once the header-read timeout has closed the silent ones.
    for path in ["/health", "/fetch-data"] {
        eventually(
            Duration::from_secs(30),
            &format!("{path} answers"),
            || async {
                let r = app
                    .client
                    .get(app.url(path))
                    .header("X-API-Key", READ_KEY)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                match r.status().as_u16() {
                    200 => Ok(()),
                    other => Err(other.to_string()),
                }
            },
        )
        .await;
    }
    // Every one of them is closed by the server.
    for (i, socket) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_server(socket, Duration::from_secs(30)).await,
            "idle socket {i} still open"
        );
    }
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    for (i, task) in trickling.into_iter().enumerate() {
        tokio::select! {
            closed = task => assert!(closed.unwrap(), "trickling socket {i} was stopped, not closed"),
            () = &mut deadline => {
                stop.cancel();
                panic!("trickling socket {i} still open");
            }
        }
    }
    eventually(
        Duration::from_secs(10),
        "the server lets go of their descriptors",
        || async {
            match descriptors(app.pid()) {
                n if n < 100 => Ok(()),
                n => Err(format!("{n} descriptors")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_connection_beyond_the_cap_is_answered_503_and_closed() {
    let app = spawn_app_with_env(vec![
        ("MAX_CONNECTIONS", "20".into()),
        ("HEADER_READ_TIMEOUT", "10s".into()),
    ])
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The 21st sends its request and is told to come back (not reset).
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), extra.read_to_string(&mut answer))
        .await
        .expect("the refusal comes and the connection closes")
        .expect("the connection is closed, not reset");
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("MAX_CONNECTIONS"));
    // Once the idle ones are closed by the header-read timeout, there is room again.
    eventually(Duration::from_secs(40), "room again", || async {
        match app.client.get(app.url("/health")).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    drop(held);
}

#[tokio::test]
async fn a_keep_alive_connection_left_idle_after_an_answer_is_closed() {
    let app = spawn_app_with_env(vec![("HEADER_READ_TIMEOUT", "2s".into())]).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        closed_by_server(&mut socket, Duration::from_secs(20)).await,
        "the idle keep-alive connection stays open"
    );
}
