//! The contracts between the deployment files and the program: the Dockerfile, the Render
//! Blueprints (`render.yaml`: deployment A with Key Value; `deploy/render-disk.yaml`: deployment
//! B) and the Docker Compose example. Each check guards something a deployment relies on (the
//! names the program reads, taken from its CLI definition; the paths it writes; the wiring between
//! services), not the files' wording. hadolint (`.ci/hadolint`) lints the Dockerfiles.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use pma_cache::config::Cli;
use serde_yaml::Value;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_file(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Value {
    let mut value: Value = serde_yaml::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{relative}: bad merge key: {e}"));
    value
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

// ---------------------------------------------------------------------------------------------
// The names the program reads, from its CLI definition.

/// The environment variables `pma-cache <command>` reads, plus those read outside clap.
fn variables_of(command: &str) -> BTreeSet<String> {
    let cli = Cli::command();
    let sub = cli
        .find_subcommand(command)
        .unwrap_or_else(|| panic!("pma-cache has no {command} command"));
    let mut names: BTreeSet<String> = sub
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    names.extend(["RUST_LOG", "LOG_FORMAT"].map(String::from));
    names
}

fn all_variables() -> BTreeSet<String> {
    Cli::command()
        .get_subcommands()
        .flat_map(|c| variables_of(c.get_name()))
        .collect()
}

fn assert_read_by(command: &str, source: &str, names: impl IntoIterator<Item = String>) {
    let known = variables_of(command);
    for name in names {
        assert!(
            known.contains(&name),
            "{source} sets {name}, which `pma-cache {command}` does not read"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Render

fn render_service<'a>(render: &'a Value, kind: &str) -> &'a Value {
    render["services"]
        .as_sequence()
        .expect("a Blueprint has a services list")
        .iter()
        .find(|s| str_at(s, "type") == Some(kind))
        .unwrap_or_else(|| panic!("the Blueprint has no {kind} service"))
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
        .unwrap_or_else(|| panic!("{:?} does not set {key}", str_at(service, "name")))
}

/// The subcommand a Render service runs: its `dockerCommand`, or the image's default (`serve`).
fn render_command(service: &Value) -> String {
    str_at(service, "dockerCommand")
        .map(|c| c.split_whitespace().next().unwrap().to_owned())
        .unwrap_or_else(image_default_command)
}

fn image_default_command() -> String {
    let instructions = dockerfile("Dockerfile");
    let cmd = runtime_stage(&instructions)
        .iter()
        .rfind(|i| i.keyword == "CMD")
        .expect("the image has a CMD");
    let args: Vec<String> = serde_json::from_str(&cmd.args).expect("CMD in exec form");
    args[0].clone()
}

// ---------------------------------------------------------------------------------------------
// Docker Compose

fn compose_services(compose: &Value) -> Vec<(String, &Value)> {
    compose["services"]
        .as_mapping()
        .expect("compose has services")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v))
        .collect()
}

fn compose_environment(service: &Value) -> Vec<(String, String)> {
    service
        .get("environment")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = v.as_str().unwrap_or_default().to_owned();
                    (k.as_str().unwrap().to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The subcommand a compose service runs, `None` for a service that is not pma-cache.
fn compose_command(service: &Value) -> Option<String> {
    (str_at(service, "image") == Some("pma-cache:local")).then(|| {
        service["command"][0]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(image_default_command)
    })
}

// ---------------------------------------------------------------------------------------------
// The contracts

#[test]
fn every_variable_a_deployment_file_sets_is_read_by_the_command_it_runs() {
    let image = runtime_env()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != "HOME");
    assert_read_by("serve", "Dockerfile", image);

    for file in ["render.yaml", "deploy/render-disk.yaml"] {
        let render = yaml(file);
        for kind in ["web", "worker"] {
            let Some(service) = render["services"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|s| str_at(s, "type") == Some(kind))
            else {
                continue;
            };
            assert_read_by(
                &render_command(service),
                &format!("{file} ({kind})"),
                env_keys(service),
            );
        }
    }

    let compose = yaml("examples/docker-compose.yml");
    for (name, service) in compose_services(&compose) {
        if let Some(command) = compose_command(service) {
            let keys = compose_environment(service).into_iter().map(|(k, _)| k);
            assert_read_by(&command, &format!("docker-compose.yml ({name})"), keys);
        }
    }

    let keys = read("examples/deployment-c.env")
        .lines()
        .map(|line| line.trim().trim_start_matches('#').to_owned())
        .filter_map(|line| line.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect::<Vec<_>>();
    assert_read_by("serve", "deployment-c.env", keys);
}

#[test]
fn every_variable_the_program_reads_is_documented_in_the_readme() {
    let readme = read("README.md");
    for name in all_variables() {
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is read by the program but not documented in README.md"
        );
    }
}

#[test]
fn disks_and_volumes_are_mounted_at_the_folder_of_the_images_cache_file() {
    let folder = image_cache_folder();
    let render = yaml("deploy/render-disk.yaml");
    let disk = &render_service(&render, "web")["disk"];
    assert_eq!(str_at(disk, "mountPath"), Some(folder.as_str()));

    let compose = yaml("examples/docker-compose.yml");
    for (name, service) in compose_services(&compose) {
        if compose_command(service).is_none() {
            continue;
        }
        let mounts: Vec<&str> = service["volumes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("compose {name} keeps its cache in a volume"))
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|m| m.split(':').nth(1))
            .collect();
        assert!(mounts.contains(&folder.as_str()), "{name}: {mounts:?}");
    }
}

#[test]
fn the_cron_takes_its_key_and_address_from_the_web_service() {
    let render = yaml("deploy/render-disk.yaml");
    let web = render_service(&render, "web");
    let cron = render_service(&render, "cron");
    let web_name = str_at(web, "name").unwrap();
    // A refresh takes an admin key.
    let key = &env_var(cron, "ADMIN_API_KEY")["fromService"];
    assert_eq!(str_at(key, "name"), Some(web_name));
    assert_eq!(str_at(key, "envVarKey"), Some("ADMIN_API_KEY"));
    let address = &env_var(cron, "SERVICE_HOSTPORT")["fromService"];
    assert_eq!(str_at(address, "name"), Some(web_name));
    assert_eq!(str_at(address, "property"), Some("hostport"));
    assert!(
        env_keys(web).any(|k| k == "ADMIN_API_KEY"),
        "the web service has the key the cron sends"
    );
}

#[test]
fn redis_url_reaches_every_replica_and_the_worker_from_the_key_value_instance() {
    let render = yaml("render.yaml");
    let kv = render_service(&render, "keyvalue");
    assert_eq!(str_at(kv, "maxmemoryPolicy"), Some("noeviction"));
    assert!(kv["ipAllowList"].as_sequence().is_some_and(Vec::is_empty));
    let kv_name = str_at(kv, "name").unwrap();
    let web = render_service(&render, "web");
    let worker = render_service(&render, "worker");
    assert!(web.get("disk").is_none(), "replicas share no disk");
    assert_eq!(render_command(worker), "worker");
    for service in [web, worker] {
        let from = &env_var(service, "REDIS_URL")["fromService"];
        assert_eq!(str_at(from, "type"), Some("keyvalue"));
        assert_eq!(str_at(from, "name"), Some(kv_name));
        assert_eq!(str_at(from, "property"), Some("connectionString"));
    }
    assert!(env_keys(worker).any(|k| k == "PMA_URL"));
    assert!(
        !env_keys(web).any(|k| k.starts_with("PMA_")),
        "replicas hold no credentials"
    );

    let compose = yaml("examples/docker-compose.yml");
    let services = compose_services(&compose);
    let redis_names: Vec<&str> = services
        .iter()
        .filter(|(_, s)| str_at(s, "image").is_some_and(|i| i.starts_with("redis")))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(redis_names.len(), 1, "one Redis");
    let mut replicas = 0;
    for (name, service) in &services {
        let Some(command) = compose_command(service) else {
            continue;
        };
        let env = compose_environment(service);
        let url = env
            .iter()
            .find(|(k, _)| k == "REDIS_URL")
            .unwrap_or_else(|| panic!("{name} has REDIS_URL"));
        let address = url.1.trim_start_matches("redis://");
        // After the user and password, when the URL carries them.
        let address = address.rsplit_once('@').map_or(address, |(_, a)| a);
        let host = address.split([':', '/']).next();
        assert_eq!(host, Some(redis_names[0]), "{name}");
        replicas += usize::from(command == "serve");
    }
    assert!(replicas >= 2, "two API replicas");
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

#[test]
fn the_readmes_module_map_names_every_source_file() {
    let readme = read("README.md");
    let start = readme
        .find("Every module under `src/`")
        .expect("README has a module map");
    let end = readme[start..]
        .find("\n### ")
        .map_or(readme.len(), |i| start + i);
    let map = &readme[start..end];
    let mut files = Vec::new();
    let mut folders = vec![repo_file("src")];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 40, "{files:?}");
    let src = repo_file("src");
    for file in files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if matches!(relative.as_str(), "lib.rs") {
            continue;
        }
        let named = match relative.split_once('/') {
            // A file in a folder: the folder's line names it by its own name.
            Some((folder, _)) => {
                map.contains(&format!("`src/{folder}/`")) && map.contains(&format!("`{name}`"))
            }
            None => map.contains(&format!("`src/{relative}`")),
        };
        assert!(named, "README's module map does not name src/{relative}");
    }
}
