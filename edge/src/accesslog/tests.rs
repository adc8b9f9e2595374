#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::*;

fn line(path: &str) -> Line {
    Line {
        time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_528_400_123),
        client_ip: "192.0.2.7".parse().ok(),
        method: http::Method::GET,
        host: "3000-abcd.sandbox.localhost".into(),
        path: path.into(),
        status: 200,
        bytes: 33,
        duration: Duration::from_micros(1_250),
        upstream: Some(Duration::from_micros(900)),
        tenant: Some("t_1".into()),
        route: "preview",
        error: None,
        request_id: None,
    }
}

/// A destination that blocks every write until opened, and says when a write is waiting.
#[derive(Clone)]
struct Gate {
    entered: mpsc::Sender<()>,
    open: Arc<(Mutex<bool>, Condvar)>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Write for Gate {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let _ = self.entered.send(());
        let (lock, cvar) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cvar.wait(open).unwrap();
        }
        self.written.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_full_queue_drops_and_counts_lines_without_blocking_the_request() {
    let (entered, writing) = mpsc::channel();
    let gate = Gate { entered, open: Arc::default(), written: Arc::default() };
    let dropped = IntCounter::new("test_access_log_dropped", "test").unwrap();
    let log = AccessLog::with_writer(gate.clone(), 4, dropped.clone()).unwrap();

    // The writer takes the first line and is stuck writing it.
    log.send(line("/first"));
    writing.recv_timeout(Duration::from_secs(5)).unwrap();
    // Four more fit in the queue; the next six are dropped, and sending never waits for the writer.
    let started = Instant::now();
    for i in 0..10 {
        log.send(line(&format!("/queued/{i}")));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "send blocked: {:?}", started.elapsed());
    assert_eq!(dropped.get(), 6);

    let (lock, cvar) = &*gate.open;
    *lock.lock().unwrap() = true;
    cvar.notify_all();
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = String::from_utf8(gate.written.lock().unwrap().clone()).unwrap();
        if text.lines().count() == 5 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let paths: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["/first", "/queued/0", "/queued/1", "/queued/2", "/queued/3"]);
    assert_eq!(dropped.get(), 6);
}

#[test]
fn a_line_is_one_json_object_with_every_field() {
    let mut buf = Vec::new();
    line("/app/page").write_json(&mut buf);
    assert_eq!(buf.last(), Some(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["time"], "2026-12-06T03:40:00.123Z");
    assert_eq!(v["client_ip"], "192.0.2.7");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["host"], "3000-abcd.sandbox.localhost");
    assert_eq!(v["path"], "/app/page");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 33);
    assert_eq!(v["duration_ms"], 1.25);
    assert_eq!(v["upstream_ms"], 0.9);
    assert_eq!(v["tenant"], "t_1");
    assert_eq!(v["route"], "preview");
    assert!(v["error"].is_null());
    assert!(v.as_object().unwrap().contains_key("request_id"));
}

#[test]
fn destinations_parse_from_the_flag() {
    assert_eq!("off".parse(), Ok(Destination::Off));
    assert_eq!("stderr".parse(), Ok(Destination::Stderr));
    assert_eq!(
        "/var/log/portico/access.log".parse(),
        Ok(Destination::File("/var/log/portico/access.log".into()))
    );
    assert!("".parse::<Destination>().is_err());
}

#[test]
fn off_sends_nothing() {
    let log = AccessLog::off();
    assert!(!log.enabled());
    log.send(line("/ignored"));
}
