//! The deployment files: the Dockerfile, the Render Blueprint (deployment B) and the Docker
//! Compose example (deployment A). Docker cannot build here, so these tests read the files and
//! check the facts each deployment relies on; hadolint (`.ci/hadolint`) lints the Dockerfiles.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_file(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Value {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"))
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile(relative: &str) -> Vec<Instruction> {
    let text = read(relative);
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        instructions.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
        current.clear();
    }
    instructions
}

/// The instructions of the last stage: the image that runs.
fn runtime_stage(instructions: &[Instruction]) -> &[Instruction] {
    let last_from = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("the Dockerfile has a FROM");
    &instructions[last_from..]
}

/// The packages an `apt-get install` command names, options and the next command left out.
fn apt_installed_packages(run: &str) -> Vec<String> {
    let Some((_, rest)) = run.split_once("apt-get install") else {
        return Vec::new();
    };
    rest.split_whitespace()
        .take_while(|word| !matches!(*word, "&&" | ";" | "||" | "|"))
        .filter(|word| !word.starts_with('-'))
        .map(str::to_owned)
        .collect()
}

fn runtime_packages() -> Vec<String> {
    let instructions = dockerfile("Dockerfile");
    runtime_stage(&instructions)
        .iter()
        .filter(|i| i.keyword == "RUN")
        .flat_map(|i| apt_installed_packages(&i.args))
        .collect()
}

/// `ENV` settings of the runtime stage, in the `KEY=value` form.
fn runtime_env() -> Vec<(String, String)> {
    let instructions = dockerfile("Dockerfile");
    runtime_stage(&instructions)
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The folder that holds the image's cache file, from its `CACHE_FILE` default.
fn image_cache_folder() -> String {
    let (_, cache_file) = runtime_env()
        .into_iter()
        .find(|(k, _)| k == "CACHE_FILE")
        .expect("the runtime stage sets CACHE_FILE");
    let folder = Path::new(&cache_file)
        .parent()
        .expect("CACHE_FILE names a file in a folder");
    folder.to_str().unwrap().to_owned()
}

fn json_array(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{args} is not an exec-form array: {e}"))
}

#[test]
fn the_dockerfile_builds_in_a_rust_stage_and_runs_in_bookworm_slim() {
    let instructions = dockerfile("Dockerfile");
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| i.args.as_str())
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(
        froms[0].starts_with("rust:1."),
        "the build stage pins a Rust version: {}",
        froms[0]
    );
    assert!(
        froms[0].contains("bookworm"),
        "the build stage matches the runtime's glibc: {}",
        froms[0]
    );
    assert!(froms[1].starts_with("debian:bookworm-slim"), "{}", froms[1]);

    let copies_binary = runtime_stage(&instructions).iter().any(|i| {
        i.keyword == "COPY" && i.args.starts_with("--from=") && i.args.contains("pma-cache")
    });
    assert!(
        copies_binary,
        "the runtime stage copies only the binary from the build stage"
    );
}

#[test]
fn the_dependencies_are_built_in_a_layer_before_the_sources_are_copied() {
    let instructions = dockerfile("Dockerfile");
    let position = |keyword: &str, needle: &str| {
        instructions
            .iter()
            .position(|i| i.keyword == keyword && i.args.contains(needle))
            .unwrap_or_else(|| panic!("no {keyword} with {needle:?}"))
    };
    let copy_manifest = position("COPY", "Cargo.lock");
    let copy_sources = position("COPY", "src");
    let first_build = position("RUN", "cargo build --release --locked");
    assert!(copy_manifest < first_build && first_build < copy_sources);
}

#[test]
fn chromium_and_chromedriver_are_installed_in_the_same_apt_get_line() {
    let instructions = dockerfile("Dockerfile");
    let runs: Vec<Vec<String>> = runtime_stage(&instructions)
        .iter()
        .filter(|i| i.keyword == "RUN")
        .map(|i| apt_installed_packages(&i.args))
        .filter(|packages| !packages.is_empty())
        .collect();
    let together = runs.iter().any(|packages| {
        ["chromium", "chromium-driver", "ca-certificates", "tini"]
            .iter()
            .all(|p| packages.iter().any(|q| q == p))
    });
    assert!(
        together,
        "one apt-get install names chromium, chromium-driver, ca-certificates and tini: {runs:?}"
    );

    let apt_run = runtime_stage(&instructions)
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("apt-get install"))
        .unwrap();
    assert!(
        apt_run.args.contains("--no-install-recommends"),
        "{}",
        apt_run.args
    );
    assert!(
        apt_run.args.contains("rm -rf /var/lib/apt/lists"),
        "{}",
        apt_run.args
    );
}

#[test]
fn the_image_runs_under_tini_as_a_non_root_user_with_a_health_check() {
    let instructions = dockerfile("Dockerfile");
    let runtime = runtime_stage(&instructions);
    let last = |keyword: &str| {
        runtime
            .iter()
            .rev()
            .find(|i| i.keyword == keyword)
            .unwrap_or_else(|| panic!("the runtime stage has no {keyword}"))
    };

    let entrypoint = json_array(&last("ENTRYPOINT").args);
    assert_eq!(entrypoint, ["/usr/bin/tini", "--", "pma-cache"]);
    assert_eq!(json_array(&last("CMD").args), ["serve"]);

    let user = &last("USER").args;
    let name = user.split(':').next().unwrap();
    assert!(
        !matches!(name, "root" | "0" | ""),
        "the image runs as a non-root user, not {user:?}"
    );

    let health = &last("HEALTHCHECK").args;
    assert!(!health.starts_with("NONE"), "{health}");
    assert!(
        health.contains("/health"),
        "the health check calls GET /health: {health}"
    );
    assert!(
        !health.contains("curl") && !health.contains("wget"),
        "the health check needs no extra tools: {health}"
    );
    assert!(runtime
        .iter()
        .any(|i| i.keyword == "EXPOSE" && i.args == "8080"));
}

#[test]
fn the_image_keeps_its_cache_in_a_volume_and_finds_chromium() {
    let env = runtime_env();
    let get = |key: &str| {
        env.iter().find(|(k, _)| k == key).map_or_else(
            || panic!("the runtime stage does not set {key}"),
            |(_, v)| v.as_str(),
        )
    };
    assert_eq!(get("CACHE_FILE"), "/app/cache/data_cache.json");
    assert_eq!(get("PORT"), "8080");
    assert_eq!(get("HOST"), "0.0.0.0");
    assert_eq!(get("CHROMEDRIVER_PATH"), "/usr/bin/chromedriver");
    assert_eq!(get("CHROME_PATH"), "/usr/bin/chromium");

    let instructions = dockerfile("Dockerfile");
    let volume = runtime_stage(&instructions)
        .iter()
        .find(|i| i.keyword == "VOLUME")
        .expect("the cache folder is a VOLUME");
    assert!(
        volume.args.contains(&image_cache_folder()),
        "{}",
        volume.args
    );
}

#[test]
fn every_package_the_image_installs_is_installed_by_bin_setup() {
    let setup = read("bin/setup");
    let setup_words: BTreeSet<&str> = setup
        .lines()
        .map(|line| line.split('#').next().unwrap())
        .flat_map(str::split_whitespace)
        .collect();
    let packages = runtime_packages();
    assert!(!packages.is_empty(), "the runtime stage installs packages");
    for package in packages.iter().filter(|p| *p != "tini") {
        assert!(
            setup_words.contains(package.as_str()),
            "the image installs {package} but bin/setup does not, so CI never exercises it"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Environment variables: the deployment files set only settings the program reads.

/// Every variable `src/config.rs` reads (`env = "..."`), plus `RUST_LOG` for the log level.
fn known_variables() -> BTreeSet<String> {
    let config = read("src/config.rs");
    let mut known: BTreeSet<String> = config
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name.to_owned()))
        .collect();
    assert!(
        known.contains("PMA_URL"),
        "src/config.rs names its variables with env = \"...\""
    );
    known.insert("RUST_LOG".to_owned());
    known
}

fn assert_known(source: &str, names: impl IntoIterator<Item = String>) {
    let known = known_variables();
    for name in names {
        assert!(
            known.contains(&name),
            "{source} sets {name}, which src/config.rs does not read"
        );
    }
}

#[test]
fn the_deployment_files_set_only_variables_the_program_reads() {
    let image = runtime_env()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != "HOME");
    assert_known("Dockerfile", image);

    let render = yaml("render.yaml");
    assert_known("render.yaml (web)", env_keys(web_service(&render)));

    let compose = yaml("examples/docker-compose.yml");
    for service in ["serve", "worker"] {
        let environment = compose_service(&compose, service)
            .get("environment")
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("compose {service} has an environment mapping"));
        let keys = environment
            .keys()
            .filter_map(Value::as_str)
            .map(str::to_owned);
        assert_known(&format!("docker-compose.yml ({service})"), keys);
    }

    let c_env = read("examples/deployment-c.env");
    let keys = c_env
        .lines()
        .map(|line| line.trim().trim_start_matches('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    assert_known("deployment-c.env", keys);
}

#[test]
fn every_variable_the_program_reads_is_documented() {
    // The Deploy section lives in docs/deploy.md until it is merged into the README.
    let docs: String = ["README.md", "docs/deploy.md"]
        .iter()
        .filter_map(|f| fs::read_to_string(repo_file(f)).ok())
        .collect();
    for name in known_variables() {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is read by the program but not documented in README.md or docs/deploy.md"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment B: render.yaml

fn render_service<'a>(render: &'a Value, kind: &str) -> &'a Value {
    render["services"]
        .as_sequence()
        .expect("render.yaml has a services list")
        .iter()
        .find(|s| str_at(s, "type") == Some(kind))
        .unwrap_or_else(|| panic!("render.yaml has no {kind} service"))
}

fn web_service(render: &Value) -> &Value {
    render_service(render, "web")
}

fn env_vars(service: &Value) -> &[Value] {
    service["envVars"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn env_keys(service: &Value) -> impl Iterator<Item = String> + '_ {
    env_vars(service)
        .iter()
        .filter_map(|v| str_at(v, "key"))
        .map(str::to_owned)
}

fn env_var<'a>(service: &'a Value, key: &str) -> &'a Value {
    env_vars(service)
        .iter()
        .find(|v| str_at(v, "key") == Some(key))
        .unwrap_or_else(|| panic!("{} sets no {key}", str_at(service, "name").unwrap_or("?")))
}

#[test]
fn render_runs_the_web_service_from_the_dockerfile_with_a_health_check() {
    let render = yaml("render.yaml");
    let web = web_service(&render);
    assert_eq!(str_at(web, "runtime"), Some("docker"));
    assert_eq!(str_at(web, "dockerfilePath"), Some("./Dockerfile"));
    assert_eq!(str_at(web, "healthCheckPath"), Some("/health"));
    assert!(
        web.get("numInstances").is_none(),
        "a service with a disk runs as one instance"
    );
}

#[test]
fn render_keeps_the_cache_on_a_disk_mounted_at_the_images_cache_folder() {
    let render = yaml("render.yaml");
    let disk = &web_service(&render)["disk"];
    assert!(
        str_at(disk, "name").is_some_and(|n| !n.is_empty()),
        "the disk has a name"
    );
    assert_eq!(
        str_at(disk, "mountPath"),
        Some(image_cache_folder().as_str())
    );
    assert!(disk["sizeGB"].as_u64().is_some_and(|gb| gb >= 1));
}

#[test]
fn render_generates_the_api_key_and_asks_for_the_phpmyadmin_secrets() {
    let render = yaml("render.yaml");
    let web = web_service(&render);
    assert_eq!(
        env_var(web, "API_KEY")["generateValue"].as_bool(),
        Some(true)
    );
    for secret in ["PMA_URL", "PMA_USERNAME", "PMA_PASSWORD", "PMA_DATABASE"] {
        let var = env_var(web, secret);
        assert_eq!(
            var["sync"].as_bool(),
            Some(false),
            "{secret} is asked for, not stored"
        );
        assert!(
            var.get("value").is_none(),
            "{secret} has no value in the file"
        );
    }
    assert_eq!(str_at(env_var(web, "PMA_TABLE"), "value"), Some("orders"));
}

#[test]
fn render_cron_posts_refresh_every_hour_with_the_web_services_key() {
    let render = yaml("render.yaml");
    let web_name = str_at(web_service(&render), "name").expect("the web service has a name");
    let cron = render_service(&render, "cron");

    let schedule: Vec<&str> = str_at(cron, "schedule")
        .expect("a schedule")
        .split_whitespace()
        .collect();
    assert_eq!(
        schedule.len(),
        5,
        "a five-field cron expression: {schedule:?}"
    );
    assert!(
        schedule[0].parse::<u8>().is_ok(),
        "a fixed minute: {schedule:?}"
    );
    assert_eq!(
        schedule[1..],
        ["*", "*", "*", "*"],
        "every hour: {schedule:?}"
    );

    let key = env_var(cron, "API_KEY");
    assert!(
        key.get("value").is_none(),
        "the key is not written in the file"
    );
    let from = &key["fromService"];
    assert_eq!(str_at(from, "type"), Some("web"));
    assert_eq!(str_at(from, "name"), Some(web_name));
    assert_eq!(str_at(from, "envVarKey"), Some("API_KEY"));

    let address_from_web = env_vars(cron).iter().find(|v| {
        str_at(&v["fromService"], "name") == Some(web_name)
            && str_at(&v["fromService"], "property").is_some_and(|p| p.starts_with("host"))
    });
    let address = address_from_web.expect("the web service's address comes from fromService");
    let address_key = str_at(address, "key").unwrap();

    let command = str_at(cron, "dockerCommand")
        .or_else(|| str_at(cron, "startCommand"))
        .expect("the cron job has a command");
    assert!(command.contains("curl"), "{command}");
    assert!(command.contains("-X POST"), "{command}");
    assert!(command.contains("/refresh"), "{command}");
    assert!(command.contains("X-API-Key: ${API_KEY"), "{command}");
    assert!(
        command.contains(&format!("${{{address_key}}}")),
        "{command}"
    );
    assert!(
        command.contains("-f"),
        "a refused request fails the job: {command}"
    );

    if str_at(cron, "runtime") == Some("docker") {
        let path = str_at(cron, "dockerfilePath").expect("a docker cron job names its Dockerfile");
        assert!(repo_file(path).is_file(), "{path} exists");
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment A: examples/docker-compose.yml

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no {name} service"))
}

/// The `SOURCE:TARGET` volume mounts of a compose service, short syntax.
fn volume_mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

fn command(service: &Value) -> Vec<String> {
    match &service["command"] {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn compose_runs_serve_and_worker_on_one_shared_volume() {
    let compose = yaml("examples/docker-compose.yml");
    let serve = compose_service(&compose, "serve");
    let worker = compose_service(&compose, "worker");
    assert_eq!(command(serve), ["serve"]);
    assert_eq!(command(worker), ["worker"]);

    let cache_folder = image_cache_folder();
    let serve_mount = volume_mounts(serve)
        .into_iter()
        .find(|(_, target)| *target == cache_folder);
    let worker_mount = volume_mounts(worker)
        .into_iter()
        .find(|(_, target)| *target == cache_folder);
    let (serve_volume, _) = serve_mount.expect("serve mounts a volume at the cache folder");
    let (worker_volume, _) = worker_mount.expect("worker mounts a volume at the cache folder");
    assert_eq!(serve_volume, worker_volume, "both mount the same volume");
    assert!(
        compose["volumes"].get(serve_volume.as_str()).is_some(),
        "{serve_volume} is a named volume declared at the top level"
    );
}

#[test]
fn compose_gives_the_credentials_to_the_worker_and_the_api_key_to_serve() {
    let compose = yaml("examples/docker-compose.yml");
    let serve = compose_service(&compose, "serve");
    let worker = compose_service(&compose, "worker");
    assert!(serve["environment"].get("API_KEY").is_some());
    for key in [
        "PMA_URL",
        "PMA_USERNAME",
        "PMA_PASSWORD",
        "PMA_DATABASE",
        "SYNC_INTERVAL",
    ] {
        assert!(
            worker["environment"].get(key).is_some(),
            "worker sets {key}"
        );
    }
    assert!(serve.get("ports").is_some(), "serve publishes its port");
    assert!(
        serve.get("healthcheck").is_some(),
        "serve has a health check"
    );
    assert_eq!(
        worker["healthcheck"]["disable"].as_bool(),
        Some(true),
        "the worker serves no /health"
    );
    for service in [serve, worker] {
        assert!(
            str_at(service, "restart").is_some(),
            "a restart policy is set"
        );
    }
}
