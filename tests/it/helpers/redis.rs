//! A private `redis-server` on a free loopback port, without persistence, for one test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running Redis; stopped when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts a Redis on a free port.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis { port, child: None };
        redis.restart();
        redis
    }

    /// The REDIS_SIGNING_KEY every process of a test shares.
    pub const SIGNING_KEY: &'static str = "test-signing-key-4e1d9b27";

    /// `redis://` address of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it with bin/setup (Debian package redis-server)")
            });
        self.child = Some(child);
        super::eventually_blocking(Duration::from_secs(10), "redis-server answers PING", || {
            match self.command("PING") {
                pong if pong == "+PONG" => Ok(()),
                other => Err(other),
            }
        });
    }

    /// Stops the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends one inline command; returns the first reply line ("" when unreachable).
    pub fn command(&self, command: &str) -> String {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        if stream
            .write_all(format!("{command}\r\n").as_bytes())
            .is_err()
        {
            return String::new();
        }
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
