//! The Docker image, built by `bin/image` (the real `Dockerfile` on local stand-ins for its base
//! images, made from Debian's packages) and run: as its non-root user, healthy by its own
//! `HEALTHCHECK`, `serve` answering from a cache volume, `worker` syncing from the test bed's
//! phpMyAdmin with the image's Chromium onto a named volume it did not create, each stopped by
//! `docker stop` within the grace period with no zombie left. Containers use the host's network,
//! so that they reach the test bed on its loopback ports. Without a Docker engine these fail and
//! say how to get one.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::app::{orders_csv, READ_KEY};
use crate::helpers::testbed::testbed;
use crate::helpers::{eventually, free_port};

const IMAGE: &str = "pma-cache:local";

/// Runs `docker args`; its output, whatever the outcome.
fn docker_output(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run docker ({e}): install a Docker engine (Debian: apt-get install docker.io) and start it")
        })
}

/// Runs `docker args` and returns its standard output, trimmed; a failure stops the test with
/// docker's own words.
fn docker(args: &[&str]) -> String {
    let out = docker_output(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The image, built once per run of the suite by `bin/image` (a no-op when it is up to date).
fn image() -> &'static str {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("bin/image"))
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run bin/image: {e}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        match out.status.success() {
            true => {
                if let Some(size) = log.lines().rev().find(|l| l.contains("built ")) {
                    eprintln!("{size}");
                }
                Ok(())
            }
            false => Err(format!(
                "bin/image failed (it needs a running Docker engine: apt-get install docker.io):\n{log}"
            )),
        }
    });
    if let Err(why) = built {
        panic!("{why}");
    }
    IMAGE
}

/// A container, removed with its anonymous volumes when dropped.
struct Container(String);

impl Container {
    fn run(args: &[&str]) -> Self {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        Container(docker(&all))
    }

    fn inspect(&self, format: &str) -> String {
        docker(&["inspect", "-f", format, &self.0])
    }

    fn logs(&self) -> String {
        let out = docker_output(&["logs", &self.0]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn exec(&self, command: &[&str]) -> Output {
        let mut all = vec!["exec", &self.0];
        all.extend_from_slice(command);
        docker_output(&all)
    }

    /// Waits until the image's HEALTHCHECK reports healthy.
    async fn wait_healthy(&self, limit: Duration) {
        eventually(limit, "the container reports healthy", || async {
            match self.inspect("{{.State.Health.Status}}").as_str() {
                "healthy" => Ok(()),
                other => Err(format!("{other}\n{}", self.logs())),
            }
        })
        .await;
    }

    /// The processes in the container that are zombies (exited, never reaped).
    fn zombies(&self) -> String {
        let out = self.exec(&[
            "bash",
            "-c",
            "grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status 2>/dev/null || true",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `docker stop` with a 10 s grace period: how long it took and the exit code.
    fn stop(&self) -> (Duration, i64) {
        let started = Instant::now();
        docker(&["stop", "-t", "10", &self.0]);
        let took = started.elapsed();
        let code = self.inspect("{{.State.ExitCode}}").parse().unwrap();
        (took, code)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker_output(&["rm", "-f", "-v", &self.0]);
    }
}

/// A named volume, removed when dropped.
struct Volume(String);

impl Volume {
    /// A name no other test uses; Docker creates the volume when a container first mounts it.
    fn named(what: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Volume(format!("pma-cache-test-{what}-{}-{n}", std::process::id()))
    }

    fn at_cache(&self) -> String {
        format!("{}:/app/cache", self.0)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker_output(&["volume", "rm", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_runs_as_its_user_and_serves_a_cache_volume_healthy_then_stops_in_time() {
    let image = image();
    assert_eq!(
        docker(&["run", "--rm", "--entrypoint", "id", image, "-u"]),
        "10001",
        "the image runs as its non-root user"
    );
    // A cache written into a new named volume by `import`, from a CSV the container can read.
    let input = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(input.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let csv = input.path().join("orders.csv");
        std::fs::write(&csv, orders_csv(300, "image")).unwrap();
        std::fs::set_permissions(&csv, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let volume = Volume::named("serve");
    let mount_input = format!("{}:/in:ro", input.path().display());
    docker(&[
        "run",
        "--rm",
        "-v",
        &volume.at_cache(),
        "-v",
        &mount_input,
        image,
        "import",
        "/in/orders.csv",
    ]);

    let port = free_port().to_string();
    let server = Container::run(&[
        "--network",
        "host",
        "--health-interval",
        "1s",
        "-e",
        &format!("PORT={port}"),
        "-e",
        "HOST=127.0.0.1",
        "-e",
        &format!("API_KEY={READ_KEY}"),
        "-v",
        &volume.at_cache(),
        image,
        "serve",
    ]);
    server.wait_healthy(Duration::from_secs(60)).await;
    let body: Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/fetch-data"))
        .header("X-API-Key", READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["count"], 300, "{}", server.logs());
    assert_eq!(body["data"][299]["note"], "image order 299, shipped");

    assert_eq!(server.zombies(), "", "no zombie in the container");
    let (took, code) = server.stop();
    assert!(took < Duration::from_secs(10), "docker stop took {took:?}");
    assert_eq!(code, 0, "serve exits 0 on SIGTERM:\n{}", server.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_container_syncs_with_the_images_chromium_onto_a_named_volume() {
    let image = image();
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let volume = Volume::named("worker");
    let health_port = free_port().to_string();
    let mut args = vec![
        "--network".to_owned(),
        "host".to_owned(),
        "--health-interval".to_owned(),
        "1s".to_owned(),
        "-v".to_owned(),
        volume.at_cache(),
    ];
    let env = bed.pma_env().into_iter().chain([
        ("WORKER_PORT", health_port.clone()),
        ("WORKER_HOST", "127.0.0.1".to_owned()),
        ("SYNC_INTERVAL", "1h".to_owned()),
        // The browser is closed after the sync, so that what it leaves must be reaped.
        ("BROWSER_IDLE_TIMEOUT", "0".to_owned()),
    ]);
    for (name, value) in env {
        args.push("-e".into());
        args.push(format!("{name}={value}"));
    }
    args.extend([image.to_owned(), "worker".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker = Container::run(&args);
    worker.wait_healthy(Duration::from_secs(60)).await;
    let cache: Value = eventually(
        Duration::from_secs(240),
        "the worker writes the cache",
        || async {
            let out = worker.exec(&["cat", "/app/cache/data_cache.json"]);
            match serde_json::from_slice::<Value>(&out.stdout) {
                Ok(cache) => Ok(cache),
                Err(_) => Err(worker.logs()),
            }
        },
    )
    .await;
    let (_, rows) = bed.table_as_rows(&bed.database, &bed.table);
    assert_eq!(cache["count"].as_u64(), Some(rows.len() as u64));
    assert!(
        worker.logs().contains("sync succeeded"),
        "{}",
        worker.logs()
    );
    // The browser has been closed (BROWSER_IDLE_TIMEOUT=0): tini has reaped what it left.
    eventually(
        Duration::from_secs(30),
        "no zombie in the container",
        || async {
            match worker.zombies() {
                z if z.is_empty() => Ok(()),
                z => Err(z),
            }
        },
    )
    .await;
    let (took, code) = worker.stop();
    assert!(took < Duration::from_secs(10), "docker stop took {took:?}");
    assert_eq!(code, 0, "the worker exits 0 on SIGTERM:\n{}", worker.logs());
}

/// The Redis image the deployment tests run (`bin/image` makes it from Debian's redis-server).
const REDIS_IMAGE: &str = "pma-cache-base/redis:bookworm";

/// A private Docker network, removed when dropped (after the containers on it).
struct Network(String);

impl Network {
    fn create() -> Self {
        let name = format!("pma-cache-test-net-{}", std::process::id());
        let _ = docker_output(&["network", "rm", &name]);
        docker(&["network", "create", &name]);
        Network(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker_output(&["network", "rm", &self.0]);
    }
}

/// The row count a replica serves, asked from inside its container (so that it answers even
/// while cut off from every network); `None` when it does not answer 200.
fn count_inside(replica: &Container) -> Option<u64> {
    let request = format!(
        "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /fetch-data HTTP/1.0\\r\\nX-API-Key: {READ_KEY}\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = replica.exec(&["bash", "-c", &request]);
    let text = String::from_utf8_lossy(&out.stdout);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str::<Value>(body).ok()?["count"].as_u64()
}

/// The row count a replica serves through its published port; `None` when it does not answer
/// 200.
async fn count_at(port: u16) -> Option<u64> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/fetch-data"))
        .header("X-API-Key", READ_KEY)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json::<Value>().await.ok()?["count"].as_u64()
}

async fn wait_until_served(
    ports: &[u16],
    rows: u64,
    limit: Duration,
    context: &dyn Fn() -> String,
) {
    eventually(
        limit,
        &format!("every replica serves {rows} rows"),
        || async {
            let mut seen = Vec::new();
            for port in ports {
                seen.push(count_at(*port).await);
            }
            match seen.iter().all(|c| *c == Some(rows)) {
                true => Ok(()),
                false => Err(format!("{seen:?}\n{}", context())),
            }
        },
    )
    .await;
}

/// Asks a replica for a sync (forwarded to the worker through Redis) until the worker starts
/// one.
async fn refresh_through(port: u16) {
    eventually(
        Duration::from_secs(60),
        "the worker takes a refresh",
        || async {
            let r = reqwest::Client::new()
                .post(format!("http://127.0.0.1:{port}/refresh"))
                .header("X-API-Key", crate::helpers::app::KEY)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or_default();
            match (status.as_u16(), body["status"].as_str()) {
                (202, Some("triggered")) => Ok(()),
                _ => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
}

const REDIS_PASSWORD: &str = "test-redis-password-5e2c";
const SIGNING_KEY: &str = "test-signing-key-0d7a41c9";

/// A `serve` replica on `network`, published on a loopback port of the host.
fn start_replica(network: &Network, port: u16) -> Container {
    let image = image();
    Container::run(&[
        "--network",
        &network.0,
        "--health-interval",
        "1s",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        "-e",
        &format!("REDIS_URL=redis://default:{REDIS_PASSWORD}@redis:6379/"),
        "-e",
        &format!("REDIS_SIGNING_KEY={SIGNING_KEY}"),
        "-e",
        &format!("API_KEY={READ_KEY}"),
        "-e",
        &format!("ADMIN_API_KEY={}", crate::helpers::app::KEY),
        "-e",
        "REFRESH_MIN_INTERVAL=0",
        image,
        "serve",
    ])
}

/// The worker, on the host's network (where the test bed's phpMyAdmin listens), reaching Redis
/// through its published port.
fn start_worker(redis_port: u16, table: &str) -> Container {
    let image = image();
    let bed = testbed();
    let mut args: Vec<String> = ["--network", "host", "--health-interval", "1s"]
        .map(str::to_owned)
        .to_vec();
    let env = bed.pma_env().into_iter().chain([
        ("PMA_TABLE", table.to_owned()),
        (
            "REDIS_URL",
            format!("redis://default:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/"),
        ),
        ("REDIS_SIGNING_KEY", SIGNING_KEY.to_owned()),
        ("REDIS_LOCK_TTL", "5s".to_owned()),
        ("WORKER_PORT", free_port().to_string()),
        ("WORKER_HOST", "127.0.0.1".to_owned()),
        ("SYNC_INTERVAL", "1h".to_owned()),
    ]);
    for (name, value) in env {
        args.push("-e".into());
        args.push(format!("{name}={value}"));
    }
    args.extend([image.to_owned(), "worker".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Container::run(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_a_in_containers_rides_out_a_cut_replica_a_killed_worker_and_restarts() {
    image();
    let _one = crate::helpers::ONE_BROWSER.lock().await;
    let bed = testbed();
    let table = "deployment_a";
    let rows_now = |n: u64| {
        bed.sql(&format!(
            "USE shop; DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id INT PRIMARY KEY, status VARCHAR(20)); \
             INSERT INTO {table} SELECT seq, 'paid' FROM seq_1_to_{n};"
        ));
    };
    rows_now(3);
    let network = Network::create();
    let redis_port = free_port();
    let redis = Container::run(&[
        "--network",
        &network.0,
        "--network-alias",
        "redis",
        "-p",
        &format!("127.0.0.1:{redis_port}:6379"),
        REDIS_IMAGE,
        "redis-server",
        "--requirepass",
        REDIS_PASSWORD,
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]);
    let ports = [free_port(), free_port()];
    let mut replicas = [
        start_replica(&network, ports[0]),
        start_replica(&network, ports[1]),
    ];
    let mut worker = start_worker(redis_port, table);
    let logs = |c: &Container| c.logs();

    // The worker's first sync reaches both replicas.
    wait_until_served(&ports, 3, Duration::from_secs(240), &|| logs(&worker)).await;

    // A replica cut off from the network keeps answering from what it holds...
    docker(&["network", "disconnect", &network.0, &replicas[1].0]);
    assert_eq!(count_inside(&replicas[1]), Some(3));
    rows_now(4);
    refresh_through(ports[0]).await;
    wait_until_served(&ports[..1], 4, Duration::from_secs(240), &|| logs(&worker)).await;
    assert_eq!(
        count_inside(&replicas[1]),
        Some(3),
        "cut off, it holds its version"
    );
    // ...and catches up once reconnected.
    docker(&[
        "network",
        "connect",
        "--alias",
        "serve2",
        &network.0,
        &replicas[1].0,
    ]);
    let reconnected = Instant::now();
    eventually(
        Duration::from_secs(30),
        "the cut replica catches up",
        || async {
            match count_inside(&replicas[1]) {
                Some(4) => Ok(()),
                other => Err(format!("{other:?}\n{}", replicas[1].logs())),
            }
        },
    )
    .await;
    let caught_up = reconnected.elapsed();
    eprintln!("deployment A: the cut replica caught up {caught_up:.1?} after reconnecting");

    // A worker killed in the middle of a sync leaves Redis with the previous version...
    rows_now(5);
    refresh_through(ports[0]).await;
    eventually(Duration::from_secs(60), "the sync is under way", || async {
        match worker.logs().contains("sync phase started") {
            true => Ok(()),
            false => Err(worker.logs()),
        }
    })
    .await;
    docker(&["kill", &worker.0]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for port in ports {
        assert_eq!(count_at(port).await, Some(4), "the previous version stays");
    }
    // ...and the next worker syncs (once the dead one's lock has expired).
    worker = start_worker(redis_port, table);
    refresh_through(ports[0]).await;
    wait_until_served(&ports, 5, Duration::from_secs(240), &|| logs(&worker)).await;

    // Redis restarted empty: replicas keep serving, and the next publish fills it again.
    docker(&["restart", "-t", "1", &redis.0]);
    for port in ports {
        assert_eq!(count_at(port).await, Some(5), "served while Redis restarts");
    }
    rows_now(6);
    refresh_through(ports[0]).await;
    wait_until_served(&ports, 6, Duration::from_secs(240), &|| {
        format!(
            "worker:\n{}\nreplica:\n{}\nredis:\n{}",
            logs(&worker),
            logs(&replicas[0]),
            logs(&redis)
        )
    })
    .await;
    let held = redis.exec(&[
        "redis-cli",
        "-a",
        REDIS_PASSWORD,
        "--no-auth-warning",
        "HEXISTS",
        "pma-cache:current",
        "meta",
    ]);
    assert_eq!(String::from_utf8_lossy(&held.stdout).trim(), "1");

    // Replicas restarted one at a time while a client asks each: no request fails at a replica
    // that is up, and a restarted one serves the current version as soon as it reports healthy.
    let down: std::sync::Arc<[std::sync::atomic::AtomicBool; 2]> = Default::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let client = tokio::spawn({
        let (down, stop) = (down.clone(), stop.clone());
        async move {
            let mut failures = Vec::new();
            let mut asked = 0;
            while !stop.is_cancelled() {
                for (i, port) in ports.iter().enumerate() {
                    let was_down = down[i].load(std::sync::atomic::Ordering::SeqCst);
                    let count = count_at(*port).await;
                    let is_down = down[i].load(std::sync::atomic::Ordering::SeqCst);
                    asked += 1;
                    if count != Some(6) && !was_down && !is_down {
                        failures.push(format!("replica {i}: {count:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (asked, failures)
        }
    });
    for (i, replica) in replicas.iter_mut().enumerate() {
        down[i].store(true, std::sync::atomic::Ordering::SeqCst);
        docker(&["stop", "-t", "10", &replica.0]);
        let started = Instant::now();
        docker(&["start", &replica.0]);
        eventually(Duration::from_secs(60), "the replica serves", || async {
            match count_at(ports[i]).await {
                Some(6) => Ok(()),
                Some(n) => panic!("replica {i} answered with {n} rows, not the current version"),
                None => Err(replica.logs()),
            }
        })
        .await;
        eprintln!(
            "deployment A: replica {i} serves {:.1?} after its container starts (cold start from Redis)",
            started.elapsed()
        );
        replica.wait_healthy(Duration::from_secs(60)).await;
        assert_eq!(
            count_at(ports[i]).await,
            Some(6),
            "replica {i} serves the current version once healthy"
        );
        down[i].store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.cancel();
    let (asked, failures) = client.await.unwrap();
    assert!(asked > 50, "the client asked {asked} times");
    assert!(
        failures.is_empty(),
        "failed at a replica that was up: {failures:?}"
    );
    drop(replicas);
    drop(worker);
    drop(redis);
    drop(network);
}
