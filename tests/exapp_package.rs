//! The ExApp package: the image entrypoint's frpc configuration, written from HaRP's
//! environment (`nextcloud/entrypoint.sh --write-frpc-config-only`), and `appinfo/info.xml`'s
//! routes, which decide what HaRP forwards and what counts towards its brute-force ban.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the entrypoint with a clean environment plus `env`.
fn entrypoint(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("bash");
    command
        .arg(repository().join("nextcloud/entrypoint.sh"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run bash")
}

fn harp_environment(config: &str) -> Vec<(&str, &str)> {
    vec![
        ("APP_ID", "ycord"),
        ("APP_PORT", "23000"),
        ("HP_SHARED_KEY", r#"key with "quotes" and \ backslash"#),
        ("HP_FRP_ADDRESS", "appapi-harp"),
        ("HP_FRP_PORT", "8782"),
        ("HP_EXAPP_SOCK", "/tmp/exapp.sock"),
        ("FRPC_CONFIG", config),
    ]
}

fn read_config(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap();
    text.parse()
        .unwrap_or_else(|error| panic!("{error}\n{text}"))
}

#[test]
fn the_frpc_configuration_tunnels_harp_to_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("frpc.toml");
    let config_path = config.to_str().unwrap();
    let no_certs = dir.path().join("no-certs");
    let mut env = harp_environment(config_path);
    env.push(("FRP_CERTS_DIR", no_certs.to_str().unwrap()));
    let output = entrypoint(&["--write-frpc-config-only"], &env);
    assert!(output.status.success(), "{output:?}");

    let table = read_config(&config);
    assert_eq!(table["serverAddr"].as_str(), Some("appapi-harp"));
    assert_eq!(table["serverPort"].as_integer(), Some(8782));
    assert_eq!(table["loginFailExit"].as_bool(), Some(false));
    assert_eq!(
        table["metadatas"]["token"].as_str(),
        Some(r#"key with "quotes" and \ backslash"#)
    );
    assert_eq!(table["transport"]["tls"]["enable"].as_bool(), Some(false));
    let proxies = table["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 1);
    let proxy = &proxies[0];
    assert_eq!(proxy["name"].as_str(), Some("ycord"));
    assert_eq!(proxy["type"].as_str(), Some("tcp"));
    assert_eq!(proxy["remotePort"].as_integer(), Some(23000));
    assert_eq!(proxy["plugin"]["type"].as_str(), Some("unix_domain_socket"));
    assert_eq!(
        proxy["plugin"]["unixPath"].as_str(),
        Some("/tmp/exapp.sock")
    );
    // It holds the shared key: readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}

#[test]
fn tls_is_on_when_harp_installed_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs/frp");
    std::fs::create_dir_all(&certs).unwrap();
    for file in ["client.crt", "client.key", "ca.crt"] {
        std::fs::write(certs.join(file), "PEM").unwrap();
    }
    let config = dir.path().join("frpc.toml");
    let mut env = harp_environment(config.to_str().unwrap());
    env.push(("FRP_CERTS_DIR", certs.to_str().unwrap()));
    let output = entrypoint(&["--write-frpc-config-only"], &env);
    assert!(output.status.success(), "{output:?}");
    let table = read_config(&config);
    let tls = &table["transport"]["tls"];
    assert_eq!(tls["enable"].as_bool(), Some(true));
    assert_eq!(tls["serverName"].as_str(), Some("harp.nc"));
    let in_certs = |file: &str| certs.join(file).to_str().unwrap().to_owned();
    assert_eq!(
        tls["certFile"].as_str(),
        Some(in_certs("client.crt").as_str())
    );
    assert_eq!(
        tls["keyFile"].as_str(),
        Some(in_certs("client.key").as_str())
    );
    assert_eq!(
        tls["trustedCaFile"].as_str(),
        Some(in_certs("ca.crt").as_str())
    );
}

#[test]
fn a_missing_variable_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("frpc.toml");
    let env: Vec<_> = harp_environment(config.to_str().unwrap())
        .into_iter()
        .filter(|(name, _)| *name != "HP_FRP_PORT")
        .collect();
    let output = entrypoint(&["--write-frpc-config-only"], &env);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("HP_FRP_PORT"));
    assert!(!config.exists());
}

#[test]
fn without_harp_the_entrypoint_just_runs_ycord_serve() {
    // `echo` stands in for ycord: the entrypoint execs it with `serve` and its arguments.
    let output = entrypoint(&["--log-format", "json"], &[("YCORD_BIN", "echo")]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "serve --log-format json\n"
    );
}

/// The `<route>`s of `appinfo/info.xml`: (url, verb, access level, brute-force statuses).
fn routes() -> Vec<(String, String, String, String)> {
    use quick_xml::events::Event;
    let xml = std::fs::read_to_string(repository().join("appinfo/info.xml")).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut routes = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut field = String::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(start) => {
                field = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                if field == "route" {
                    current = vec![String::new(); 4];
                }
            }
            Event::Text(text) => {
                let slot = match field.as_str() {
                    "url" => 0,
                    "verb" => 1,
                    "access_level" => 2,
                    "bruteforce_protection" => 3,
                    _ => continue,
                };
                if current.len() == 4 {
                    current[slot] = text.decode().unwrap().trim().to_owned();
                }
            }
            Event::End(end) => {
                if end.name().as_ref() == b"route" {
                    let route = std::mem::take(&mut current);
                    routes.push((
                        route[0].clone(),
                        route[1].clone(),
                        route[2].clone(),
                        route[3].clone(),
                    ));
                }
                field.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    routes
}

#[test]
fn info_xml_routes_websockets_to_users_metrics_to_admins_and_bans_only_on_401() {
    let routes = routes();
    assert_eq!(
        routes,
        [
            (
                "^/ws(/.*)?$".to_owned(),
                "GET".to_owned(),
                "USER".to_owned(),
                "[401]".to_owned()
            ),
            (
                "^/metrics$".to_owned(),
                "GET".to_owned(),
                "ADMIN".to_owned(),
                "[401]".to_owned()
            ),
        ]
    );
    // ExApp mode serves WebSockets under /ws, where that route sends them.
    let config = {
        use clap::Parser;
        let mut config = ycord::Cli::parse_from(["ycord"]).into_serve_config();
        config.exapp.app_id = Some("ycord".into());
        config.exapp.app_secret = Some("secret".into());
        config
    };
    assert_eq!(config.normalized_base_path(), "/ws/");
}
