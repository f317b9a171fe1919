//! The LDAP source against a real OpenLDAP slapd (started here as a child process on a free
//! loopback port, from a slapd.conf in a temporary directory), through the engine and dispatcher to
//! the Nuki simulator over HTTP.
//!
//! slapd is looked for at /usr/sbin/slapd; when it is missing the tests are skipped, unless
//! LATCHKEY_TEST_REQUIRE_LDAP=1 (tests/run.sh sets it), when they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::config::LdapSourceConfig;
use latchkey::engine::ldap::LdapSource;
use latchkey::model::Action;
use latchkey::sources::ldap::load_mapping;
use latchkey::store;
use latchkey_sim::NukiOptions;
use ldap3::{LdapConnAsync, Mod};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const SLAPD: &str = "/usr/sbin/slapd";
const SUFFIX: &str = "dc=example,dc=com";
const PEOPLE: &str = "ou=people,dc=example,dc=com";
const ADMIN: &str = "cn=admin,dc=example,dc=com";
const ADMIN_PW: &str = "admin-secret";
const MANAGERS: &str = "cn=managers,ou=groups,dc=example,dc=com";

fn slapd_available() -> bool {
    // RUST_LOG=latchkey=info shows what the source did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    if Path::new(SLAPD).exists() {
        return true;
    }
    if std::env::var("LATCHKEY_TEST_REQUIRE_LDAP").is_ok_and(|v| v == "1") {
        panic!("slapd required (LATCHKEY_TEST_REQUIRE_LDAP=1) but {SLAPD} is missing");
    }
    eprintln!("{SLAPD} missing: LDAP tests skipped (install slapd and ldap-utils)");
    false
}

/// A slapd child process with its own database directory and port.
struct Slapd {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Slapd {
    fn start(dir: &Path, syncprov: bool) -> Self {
        Self::start_with(dir, syncprov, false)
    }

    /// `memberof`: OpenLDAP's memberof overlay maintains `memberOf` (so the test schema's own
    /// definition of it is left out).
    fn start_with(dir: &Path, syncprov: bool, memberof: bool) -> Self {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let mut schema = repo().join("tests/ldap/latchkey-test.schema");
        if memberof {
            let text = std::fs::read_to_string(&schema).unwrap();
            let start = text.find("attributetype ( 1.2.840.113556.1.2.102").unwrap();
            let end = start + text[start..].find("\n\n").unwrap();
            let text = format!("{}{}", &text[..start], &text[end..]).replace("$ memberOf ", "");
            schema = dir.join("test-without-memberof.schema");
            std::fs::write(&schema, text).unwrap();
        }
        let (mut module, mut overlay) = if syncprov {
            (
                "moduleload syncprov".to_string(),
                "overlay syncprov\nsyncprov-checkpoint 10 1".to_string(),
            )
        } else {
            (String::new(), String::new())
        };
        if memberof {
            module.push_str("\nmoduleload memberof");
            overlay.push_str("\noverlay memberof");
        }
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include {schema}\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             {module}\n\
             pidfile {dir}/slapd.pid\n\
             database mdb\n\
             maxsize 104857600\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ADMIN}\"\n\
             rootpw {ADMIN_PW}\n\
             directory {dir}/db\n\
             index objectClass,entryUUID,entryCSN eq\n\
             {overlay}\n",
            schema = schema.display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("slapd.conf"), conf).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Self {
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(SLAPD)
            .arg("-f")
            .arg(self.dir.join("slapd.conf"))
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{}/", self.port))
            // -d keeps slapd in the foreground, as our child.
            .arg("-d")
            .arg("0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "slapd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    async fn admin(&self) -> ldap3::Ldap {
        let (conn, mut ldap) = LdapConnAsync::new(&self.url()).await.unwrap();
        ldap3::drive!(conn);
        ldap.simple_bind(ADMIN, ADMIN_PW)
            .await
            .unwrap()
            .success()
            .unwrap();
        ldap
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn vs<'a>(v: &[&'a str]) -> HashSet<&'a str> {
    v.iter().copied().collect()
}

fn hs(v: &[&str]) -> HashSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn add(ldap: &mut ldap3::Ldap, dn: &str, attrs: Vec<(&str, Vec<&str>)>) {
    let attrs: Vec<(String, HashSet<String>)> = attrs
        .into_iter()
        .map(|(k, v)| (k.to_string(), hs(&v)))
        .collect();
    ldap.add(dn, attrs).await.unwrap().success().unwrap();
}

async fn seed(ldap: &mut ldap3::Ldap) {
    add(
        ldap,
        SUFFIX,
        vec![
            ("objectClass", vec!["dcObject", "organization"]),
            ("o", vec!["Example"]),
            ("dc", vec!["example"]),
        ],
    )
    .await;
    for ou in ["people", "former", "groups"] {
        add(
            ldap,
            &format!("ou={ou},{SUFFIX}"),
            vec![
                ("objectClass", vec!["organizationalUnit"]),
                ("ou", vec![ou]),
            ],
        )
        .await;
    }
}

fn user_dn(key: &str) -> String {
    format!("uid={},{PEOPLE}", key.to_lowercase())
}

/// An inetOrgPerson as the OpenLDAP mapping reads it.
async fn add_user(ldap: &mut ldap3::Ldap, key: &str, dept: &str, site: &str) {
    let uid = key.to_lowercase();
    let mail = format!("{uid}@example.com");
    let cn = format!("Person {key}");
    add(
        ldap,
        &user_dn(key),
        vec![
            (
                "objectClass",
                vec!["inetOrgPerson", "latchkeyDirectoryUser"],
            ),
            ("uid", vec![&uid]),
            ("cn", vec![&cn]),
            ("sn", vec![key]),
            ("mail", vec![&mail]),
            ("employeeNumber", vec![key]),
            ("departmentNumber", vec![dept]),
            ("l", vec![site]),
            ("title", vec!["analyst"]),
            ("employeeType", vec!["Employee"]),
        ],
    )
    .await;
}

async fn modify(ldap: &mut ldap3::Ldap, key: &str, mods: Vec<Mod<&str>>) {
    ldap.modify(&user_dn(key), mods)
        .await
        .unwrap()
        .success()
        .unwrap();
}

fn source_config(url: &str, extra: &str) -> LdapSourceConfig {
    let text = format!(
        "url = \"{url}\"\nbind_dn = \"{ADMIN}\"\nbind_password = {{ env = \"LDAP_PW\" }}\n\
         base = \"{PEOPLE}\"\nmapping = \"{}\"\nmass_change_threshold = 0.5\n{extra}",
        repo().join("mappings/ldap.toml").display()
    );
    toml::from_str(&text).unwrap()
}

/// A running LDAP source task, stopped by `stop`.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start_source(h: &Harness, cfg: &LdapSourceConfig) -> Running {
    let mapping = load_mapping("corp", &cfg.mapping).unwrap();
    let src = LdapSource::new(
        h.app.engine.clone(),
        "corp",
        cfg.clone(),
        mapping,
        Some(ADMIN_PW.to_string()),
    );
    let (stop, rx) = watch::channel(false);
    Running {
        stop,
        task: tokio::spawn(src.run(rx)),
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

/// Deliver what the source enqueued until `cond` holds at the simulator (or fail after 15 s).
async fn until(h: &Harness, what: &str, cond: impl Fn(&Harness) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        h.drain().await;
        if cond(h) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn revokes_of(h: &Harness, key: &str) -> Vec<String> {
    store::completed_commands(h.app.store().pool())
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.identity_key == key && c.action == Action::Revoke)
        .map(|c| c.target)
        .collect()
}

#[tokio::test]
async fn rfc4533_persist_joiner_group_lock_delete_move_reach_the_vendor() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let dir = tmp.path().join(&name);
        let h = Harness::new(&name, &url, &dir, NukiOptions::default()).await;
        let slapd = Slapd::start(&dir.join("slapd"), true);
        let mut ldap = slapd.admin().await;
        seed(&mut ldap).await;
        add_user(&mut ldap, "E1", "Engineering", "berlin").await;
        add_user(&mut ldap, "E2", "sales", "london").await;
        add_user(&mut ldap, "E3", "finance", "berlin").await;
        // No employeeNumber: quarantined with its DN, the rest goes on.
        add(
            &mut ldap,
            &format!("uid=nokey,{PEOPLE}"),
            vec![
                ("objectClass", vec!["inetOrgPerson"]),
                ("uid", vec!["nokey"]),
                ("cn", vec!["No Key"]),
                ("sn", vec!["Key"]),
            ],
        )
        .await;

        let src = start_source(&h, &source_config(&slapd.url(), ""));
        until(&h, "initial load issued", |h| {
            h.holds("E1", "berlin-engineering")
                && h.holds("E1", "berlin-lab")
                && h.holds("E2", "london-sales")
                && h.holds("E3", "berlin-finance")
        })
        .await;
        let q = store::list_quarantine(h.app.store().pool(), 10)
            .await
            .unwrap();
        assert!(
            q.iter()
                .any(|q| q.location == format!("uid=nokey,{PEOPLE}") && q.field == "employeeNumber"),
            "{q:?}"
        );
        // The persistent search reports no runs while the directory is quiet: its health is the
        // connection, which the staleness alert reads.
        let om = h.app.engine.metrics.encode_openmetrics();
        assert!(
            om.lines()
                .any(|l| l.starts_with("latchkey_source_connected{") && l.ends_with(" 1")),
            "{om}"
        );

        // Joiner.
        add_user(&mut ldap, "E4", "operations", "new-york").await;
        until(&h, "joiner E4", |h| h.holds("E4", "new-york-operations")).await;

        // Group membership gives a role, which a template turns into a door; removal revokes it.
        modify(&mut ldap, "E1", vec![Mod::Add("memberOf", vs(&[MANAGERS]))]).await;
        until(&h, "E1 joins managers", |h| {
            h.holds("E1", "berlin-management")
        })
        .await;
        modify(
            &mut ldap,
            "E1",
            vec![Mod::Delete("memberOf", vs(&[MANAGERS]))],
        )
        .await;
        until(&h, "E1 leaves managers", |h| {
            !h.holds("E1", "berlin-management")
        })
        .await;
        assert!(h.holds("E1", "berlin-engineering"));

        // Locked account: leaver.
        modify(
            &mut ldap,
            "E2",
            vec![Mod::Add("nsAccountLock", vs(&["TRUE"]))],
        )
        .await;
        until(&h, "E2 locked", |h| !h.holds("E2", "london-sales")).await;

        // Deleted entry: leaver.
        ldap.delete(&user_dn("E3"))
            .await
            .unwrap()
            .success()
            .unwrap();
        until(&h, "E3 deleted", |h| !h.holds("E3", "berlin-finance")).await;

        // Moved out of the configured base: leaver.
        ldap.modifydn(
            &user_dn("E4"),
            "uid=e4",
            true,
            Some(&format!("ou=former,{SUFFIX}")),
        )
        .await
        .unwrap()
        .success()
        .unwrap();
        until(&h, "E4 moved out of scope", |h| {
            !h.holds("E4", "new-york-operations")
        })
        .await;

        let cp = store::checkpoint(h.app.store().pool(), "corp")
            .await
            .unwrap()
            .unwrap();
        assert!(cp.starts_with("rfc4533:") && cp.len() > 10, "{cp}");
        src.stop().await;
        // Nothing was revoked twice.
        for key in ["E1", "E2", "E3", "E4"] {
            let r = revokes_of(&h, key).await;
            let unique: HashSet<&String> = r.iter().collect();
            assert_eq!(unique.len(), r.len(), "{key}: {r:?}");
        }
    }
}

#[tokio::test]
async fn rfc4533_offline_changes_apply_once_and_slapd_restart_reconnects() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let dir = tmp.path().join(&name);
        let h = Harness::new(&name, &url, &dir, NukiOptions::default()).await;
        let mut slapd = Slapd::start(&dir.join("slapd"), true);
        let mut ldap = slapd.admin().await;
        seed(&mut ldap).await;
        for (k, d, s) in [
            ("E1", "engineering", "berlin"),
            ("E2", "sales", "london"),
            ("E3", "finance", "berlin"),
            ("E4", "facilities", "london"),
            ("E5", "operations", "berlin"),
        ] {
            add_user(&mut ldap, k, d, s).await;
        }
        let cfg = source_config(&slapd.url(), "");
        let src = start_source(&h, &cfg);
        until(&h, "initial load", |h| {
            h.holds("E1", "berlin-engineering") && h.holds("E5", "berlin-operations")
        })
        .await;
        src.stop().await;

        // latchkey is down: a joiner, a lock, a deletion, a move out of scope.
        add_user(&mut ldap, "E6", "sales", "berlin").await;
        modify(
            &mut ldap,
            "E1",
            vec![Mod::Add("nsAccountLock", vs(&["true"]))],
        )
        .await;
        ldap.delete(&user_dn("E2"))
            .await
            .unwrap()
            .success()
            .unwrap();
        ldap.modifydn(
            &user_dn("E3"),
            "uid=e3",
            true,
            Some(&format!("ou=former,{SUFFIX}")),
        )
        .await
        .unwrap()
        .success()
        .unwrap();

        let src = start_source(&h, &cfg);
        until(&h, "offline changes applied", |h| {
            h.holds("E6", "berlin-sales")
                && !h.holds("E1", "berlin-engineering")
                && !h.holds("E1", "berlin-lab")
                && !h.holds("E2", "london-sales")
                && !h.holds("E3", "berlin-finance")
        })
        .await;
        assert!(h.holds("E4", "london-facilities") && h.holds("E5", "berlin-operations"));

        // slapd restarts under a running source: it reconnects and picks up what changed meanwhile.
        drop(ldap);
        slapd.stop();
        tokio::time::sleep(Duration::from_millis(300)).await;
        slapd.spawn();
        let mut ldap = slapd.admin().await;
        modify(
            &mut ldap,
            "E4",
            vec![Mod::Add("nsAccountLock", vs(&["TRUE"]))],
        )
        .await;
        until(&h, "E4 locked after slapd restart", |h| {
            !h.holds("E4", "london-facilities")
        })
        .await;
        add_user(&mut ldap, "E7", "finance", "new-york").await;
        until(&h, "E7 joins on the new connection", |h| {
            h.holds("E7", "new-york-finance")
        })
        .await;
        src.stop().await;

        // Everything once: one revoke per door, one issue per door.
        assert_eq!(revokes_of(&h, "E1").await.len(), 2);
        assert_eq!(revokes_of(&h, "E2").await.len(), 1);
        let issues_e6 = store::completed_commands(h.app.store().pool())
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.identity_key == "E6" && c.action == Action::Issue)
            .count();
        assert_eq!(issues_e6, 1);
        assert!(
            store::held_changes(h.app.store().pool())
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn rfc4533_empty_directory_is_held_not_executed() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd"), true);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    for k in ["E1", "E2", "E3"] {
        add_user(&mut ldap, k, "sales", "berlin").await;
    }
    // refreshOnly polling this time.
    let cfg = source_config(&slapd.url(), "persist = false\npoll_seconds = 1\n");
    let src = start_source(&h, &cfg);
    until(&h, "initial load", |h| {
        ["E1", "E2", "E3"]
            .iter()
            .all(|k| h.holds(k, "berlin-sales"))
    })
    .await;
    src.stop().await;
    for k in ["E1", "E2", "E3"] {
        ldap.delete(&user_dn(k)).await.unwrap().success().unwrap();
    }
    let src = start_source(&h, &cfg);
    let deadline = Instant::now() + Duration::from_secs(15);
    while store::held_changes(h.app.store().pool())
        .await
        .unwrap()
        .len()
        < 3
    {
        assert!(Instant::now() < deadline, "mass disappearance not held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    src.stop().await;
    h.drain().await;
    assert!(
        ["E1", "E2", "E3"]
            .iter()
            .all(|k| h.holds(k, "berlin-sales")),
        "an empty search must not revoke everyone"
    );
}

#[tokio::test]
async fn poll_fallback_without_syncprov_finds_changes_and_deletions() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd"), false);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    for (k, d) in [("E1", "sales"), ("E2", "finance"), ("E3", "operations")] {
        add_user(&mut ldap, k, d, "london").await;
    }
    let cfg = source_config(
        &slapd.url(),
        "dialect = \"poll\"\npoll_seconds = 1\nfull_compare_seconds = 3\n",
    );
    let src = start_source(&h, &cfg);
    until(&h, "initial load by paged search", |h| {
        h.holds("E1", "london-sales") && h.holds("E3", "london-operations")
    })
    .await;
    assert!(
        store::checkpoint(h.app.store().pool(), "corp")
            .await
            .unwrap()
            .unwrap()
            .starts_with("ts:")
    );
    add_user(&mut ldap, "E4", "engineering", "london").await;
    modify(
        &mut ldap,
        "E1",
        vec![Mod::Add("nsAccountLock", vs(&["TRUE"]))],
    )
    .await;
    until(&h, "modifyTimestamp poll", |h| {
        h.holds("E4", "london-engineering") && !h.holds("E1", "london-sales")
    })
    .await;
    // Each finished poll counts as a run, changes or not (the checkpoint only moves with changes,
    // and it is not read here: no scrape collected it), so a quiet directory is not stale.
    let om = h.app.engine.metrics.encode_openmetrics();
    assert!(
        om.lines()
            .any(|l| l
                .starts_with("latchkey_source_last_success_timestamp_seconds{source=\"corp\"}")),
        "{om}"
    );
    ldap.delete(&user_dn("E2"))
        .await
        .unwrap()
        .success()
        .unwrap();
    until(&h, "deletion found by full comparison", |h| {
        !h.holds("E2", "london-finance")
    })
    .await;
    src.stop().await;
}

async fn add_ad_user(ldap: &mut ldap3::Ldap, key: &str, dept: &str, site: &str, usn: &str) {
    let uid = key.to_lowercase();
    let mail = format!("{uid}@example.com");
    let cn = format!("Person {key}");
    add(
        ldap,
        &user_dn(key),
        vec![
            (
                "objectClass",
                vec!["inetOrgPerson", "latchkeyDirectoryUser"],
            ),
            ("uid", vec![&uid]),
            ("cn", vec![&cn]),
            ("sn", vec![key]),
            ("displayName", vec![&cn]),
            ("mail", vec![&mail]),
            ("sAMAccountName", vec![&uid]),
            ("employeeID", vec![key]),
            ("department", vec![dept]),
            ("l", vec![site]),
            ("userAccountControl", vec!["512"]),
            ("uSNChanged", vec![usn]),
        ],
    )
    .await;
}

#[tokio::test]
async fn active_directory_usn_polling_with_ad_attributes() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd"), false);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    add_ad_user(&mut ldap, "A1", "Engineering", "Berlin", "100").await;
    add_ad_user(&mut ldap, "A2", "Sales", "London", "101").await;
    add_ad_user(&mut ldap, "A3", "Finance", "Berlin", "102").await;
    let mut cfg = source_config(
        &slapd.url(),
        "dialect = \"active_directory\"\npoll_seconds = 1\nfull_compare_seconds = 3\n\
         filter = \"(objectClass=latchkeyDirectoryUser)\"\n",
    );
    cfg.mapping = repo().join("tests/ldap/ad-mapping.toml");
    let src = start_source(&h, &cfg);
    until(&h, "AD initial load", |h| {
        h.holds("A1", "berlin-engineering") && h.holds("A2", "london-sales")
    })
    .await;
    assert_eq!(
        store::checkpoint(h.app.store().pool(), "corp")
            .await
            .unwrap()
            .as_deref(),
        Some("usn:102")
    );
    // A DC bumps uSNChanged on every write; here the test does it.
    modify(
        &mut ldap,
        "A2",
        vec![
            Mod::Replace("userAccountControl", vs(&["514"])),
            Mod::Replace("uSNChanged", vs(&["110"])),
        ],
    )
    .await;
    modify(
        &mut ldap,
        "A1",
        vec![
            Mod::Add("memberOf", vs(&[MANAGERS])),
            Mod::Replace("uSNChanged", vs(&["111"])),
        ],
    )
    .await;
    until(&h, "AD disable and group", |h| {
        !h.holds("A2", "london-sales") && h.holds("A1", "berlin-management")
    })
    .await;
    assert_eq!(
        store::checkpoint(h.app.store().pool(), "corp")
            .await
            .unwrap()
            .as_deref(),
        Some("usn:111")
    );
    ldap.delete(&user_dn("A3"))
        .await
        .unwrap()
        .success()
        .unwrap();
    until(&h, "AD deletion by full comparison", |h| {
        !h.holds("A3", "berlin-finance")
    })
    .await;
    src.stop().await;
}

/// Not a test: LDAP modify -> revoke confirmed at the simulator, 200 disables one after another in
/// persist mode, the real dispatcher running. `cargo test --release --test suite ldap:: -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_persist_disable_to_vendor_revoke() {
    if !slapd_available() {
        return;
    }
    const N: usize = 200;
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd"), true);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    let keys: Vec<String> = (0..N).map(|i| format!("B{i:04}")).collect();
    for k in &keys {
        add_user(&mut ldap, k, "sales", "berlin").await;
    }
    let src = start_source(&h, &source_config(&slapd.url(), ""));
    let (stop, rx) = watch::channel(false);
    let dispatcher = tokio::spawn(h.dispatcher().run(rx));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !keys.iter().all(|k| h.holds(k, "berlin-sales")) {
        assert!(Instant::now() < deadline, "initial load not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut samples = Vec::with_capacity(N);
    for k in &keys {
        let t0 = Instant::now();
        modify(&mut ldap, k, vec![Mod::Add("nsAccountLock", vs(&["TRUE"]))]).await;
        while h.holds(k, "berlin-sales") {
            assert!(t0.elapsed() < Duration::from_secs(30), "{k} not revoked");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(t0.elapsed());
    }
    stop.send(true).unwrap();
    let _ = dispatcher.await;
    src.stop().await;
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).min(samples.len()) - 1];
    println!(
        "ldap persist disable -> vendor revoke, n={N}: p50 {:?}, p99 {:?}, max {:?}",
        p(0.50),
        p(0.99),
        samples[samples.len() - 1]
    );
}

#[tokio::test]
async fn daemon_runs_configured_ldap_sources_and_rejects_bad_ones() {
    if !slapd_available() {
        return;
    }
    use latchkey::app::App;
    use latchkey::config::{Config, ConfigInput};
    let tmp = tempfile::tempdir().unwrap();
    // The harness only provides the simulator here; the daemon gets its own store.
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("harness.db").display()),
        &tmp.path().join("harness"),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd"), true);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    add_user(&mut ldap, "D1", "finance", "london").await;
    let store_url = format!("sqlite://{}", tmp.path().join("daemon.db").display());
    let ldap_section = format!(
        "\n[sources.ldap.corp]\nurl = \"{}\"\nbind_dn = \"{ADMIN}\"\n\
         bind_password = {{ env = \"LATCHKEY_TEST_LDAP_PW\" }}\nbase = \"{PEOPLE}\"\n\
         mapping = \"{}\"\n",
        slapd.url(),
        repo().join("mappings/ldap.toml").display()
    );
    let text = config_text(&store_url, &h.sim.base_url(), (1000, 50)) + &ldap_section;
    let path = tmp.path().join("latchkey.toml");
    let mut env = env();
    env.insert("LATCHKEY_TEST_LDAP_PW".into(), ADMIN_PW.into());
    let load = |text: &str| {
        Config::load(&ConfigInput {
            text: text.to_string(),
            path: path.clone(),
            env: env.clone(),
        })
    };
    let bad = load(&text.replace("url = \"ldap://", "url = \"http://")).unwrap_err();
    assert!(bad.to_string().contains("sources.ldap.corp"), "{bad}");
    let bad = load(&text.replace("bind_dn", "bind_dnn")).unwrap_err();
    assert!(bad.to_string().contains("bind_dnn"), "{bad}");

    let app = App::open(load(&text).unwrap(), latchkey::clock::system())
        .await
        .unwrap();
    let (stop, rx) = watch::channel(false);
    let daemon = tokio::spawn(async move { app.run(rx).await });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !h.holds("D1", "london-finance") {
        assert!(
            Instant::now() < deadline,
            "daemon did not sync the directory"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    modify(
        &mut ldap,
        "D1",
        vec![Mod::Add("nsAccountLock", vs(&["TRUE"]))],
    )
    .await;
    while h.holds("D1", "london-finance") {
        assert!(
            Instant::now() < deadline,
            "daemon did not revoke the locked account"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    daemon.await.unwrap().unwrap();
}

async fn holds_nothing(h: &Harness, key: &str, doors: &[&str]) -> bool {
    doors.iter().all(|d| !h.holds(key, d))
}

#[tokio::test]
async fn disabled_without_mail_expired_and_dated_expiry_are_leavers_in_both_dialects() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    // OpenLDAP dialect, RFC 4533 persist.
    let slapd = Slapd::start(&tmp.path().join("slapd"), true);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    add_user(&mut ldap, "E1", "engineering", "berlin").await;
    add_user(&mut ldap, "E2", "sales", "london").await;
    add_user(&mut ldap, "E3", "finance", "london").await;
    let src = start_source(&h, &source_config(&slapd.url(), ""));
    until(&h, "initial load", |h| {
        h.holds("E1", "berlin-lab")
            && h.holds("E2", "london-sales")
            && h.holds("E3", "london-finance")
    })
    .await;
    // Locked and mailbox removed in one modify; a termination status with the department gone.
    modify(
        &mut ldap,
        "E1",
        vec![
            Mod::Add("nsAccountLock", vs(&["TRUE"])),
            Mod::Delete("mail", HashSet::new()),
        ],
    )
    .await;
    modify(
        &mut ldap,
        "E2",
        vec![
            Mod::Replace("employeeType", vs(&["terminated"])),
            Mod::Delete("mail", HashSet::new()),
            Mod::Delete("departmentNumber", HashSet::new()),
        ],
    )
    .await;
    until(&h, "openldap leavers without mail revoked", |h| {
        !h.holds("E1", "berlin-engineering")
            && !h.holds("E1", "berlin-lab")
            && !h.holds("E2", "london-sales")
    })
    .await;
    // Enabled and without mail: quarantined, and what it had stays.
    modify(&mut ldap, "E3", vec![Mod::Delete("mail", HashSet::new())]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store::list_quarantine(h.app.store().pool(), 50)
        .await
        .unwrap()
        .iter()
        .any(|q| q.record_key.as_deref() == Some("E3") && q.field == "mail")
    {
        assert!(Instant::now() < deadline, "E3 not quarantined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.drain().await;
    assert!(h.holds("E3", "london-finance"));
    src.stop().await;

    // AD dialect against its own slapd and store.
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("ad.db").display()),
        &tmp.path().join("ad"),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd-ad"), false);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    add_ad_user(&mut ldap, "A1", "Engineering", "Berlin", "100").await;
    add_ad_user(&mut ldap, "A2", "Sales", "London", "101").await;
    add_ad_user(&mut ldap, "A3", "Finance", "Berlin", "102").await;
    add_ad_user(&mut ldap, "A4", "Engineering", "Berlin", "103").await;
    let mut cfg = source_config(
        &slapd.url(),
        "dialect = \"active_directory\"\npoll_seconds = 1\nfull_compare_seconds = 3600\n\
         filter = \"(objectClass=latchkeyDirectoryUser)\"\n",
    );
    cfg.mapping = repo().join("tests/ldap/ad-mapping.toml");
    let src = start_source(&h, &cfg);
    until(&h, "AD initial load", |h| {
        h.holds("A1", "berlin-lab")
            && h.holds("A2", "london-sales")
            && h.holds("A3", "berlin-finance")
            && h.holds("A4", "berlin-lab")
    })
    .await;
    // 514 with the employeeID itself cleared: no key, but the entry (by its id) is A4's.
    modify(
        &mut ldap,
        "A4",
        vec![
            Mod::Replace("userAccountControl", vs(&["514"])),
            Mod::Delete("employeeID", HashSet::new()),
            Mod::Replace("uSNChanged", vs(&["109"])),
        ],
    )
    .await;
    // 514 and no mail in the same modify.
    modify(
        &mut ldap,
        "A1",
        vec![
            Mod::Replace("userAccountControl", vs(&["514"])),
            Mod::Delete("mail", HashSet::new()),
            Mod::Replace("uSNChanged", vs(&["110"])),
        ],
    )
    .await;
    // Expired on 2026-11-20 (FILETIME), still enabled.
    modify(
        &mut ldap,
        "A2",
        vec![
            Mod::Replace("accountExpires", vs(&["134396064000000000"])),
            Mod::Replace("uSNChanged", vs(&["111"])),
        ],
    )
    .await;
    // Expires 2026-11-26T00:00Z: a dated termination.
    modify(
        &mut ldap,
        "A3",
        vec![
            Mod::Replace("accountExpires", vs(&["134401248000000000"])),
            Mod::Replace("uSNChanged", vs(&["112"])),
        ],
    )
    .await;
    until(
        &h,
        "AD disabled-without-mail, disabled-without-key and expired revoked",
        |h| {
            !h.holds("A1", "berlin-engineering")
                && !h.holds("A1", "berlin-lab")
                && !h.holds("A2", "london-sales")
                && !h.holds("A4", "berlin-engineering")
                && !h.holds("A4", "berlin-lab")
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while store::checkpoint(h.app.store().pool(), "corp")
        .await
        .unwrap()
        .as_deref()
        != Some("usn:112")
    {
        assert!(Instant::now() < deadline, "A3's change not polled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.drain().await;
    assert!(
        h.holds("A3", "berlin-finance"),
        "expiry in the future keeps access until then"
    );
    h.clock.set(t("2026-11-26T00:00:01Z"));
    h.app.engine.tick().await.unwrap();
    h.drain().await;
    assert!(
        holds_nothing(&h, "A3", &["berlin-finance"]).await,
        "expired at its instant"
    );
    src.stop().await;
}

#[tokio::test]
async fn rfc4533_mass_deletion_is_held_for_approval() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd"), true);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    let keys: Vec<String> = (1..=20).map(|i| format!("M{i:02}")).collect();
    for k in &keys {
        add_user(&mut ldap, k, "sales", "berlin").await;
    }
    let mut cfg = source_config(&slapd.url(), "");
    cfg.mass_change_threshold = Some(0.2);
    cfg.mass_delete_min = 2;
    let src = start_source(&h, &cfg);
    until(&h, "initial load", |h| {
        keys.iter().all(|k| h.holds(k, "berlin-sales"))
    })
    .await;
    // 30 % deleted, one explicit delete after another (an OU removed by mistake).
    let gone = &keys[..6];
    for k in gone {
        ldap.delete(&user_dn(k)).await.unwrap().success().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        h.drain().await;
        let revoked = gone.iter().filter(|k| !h.holds(k, "berlin-sales")).count();
        let held = store::held_changes(h.app.store().pool()).await.unwrap();
        if revoked + held.len() == gone.len() {
            assert!(
                revoked <= 4,
                "at most the threshold flows: {revoked} revoked"
            );
            assert!(held.len() >= 2, "{held:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deletions neither applied nor held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(keys[6..].iter().all(|k| h.holds(k, "berlin-sales")));
    // Approval carries them out.
    for held in store::held_changes(h.app.store().pool()).await.unwrap() {
        h.app
            .engine
            .decide(held.id, true, "admin@example.com")
            .await
            .unwrap();
    }
    h.drain().await;
    assert!(gone.iter().all(|k| !h.holds(k, "berlin-sales")));
    assert!(keys[6..].iter().all(|k| h.holds(k, "berlin-sales")));

    // Later (a new window), 5 of the 14 left are disabled at once: disables count the same way.
    let now = h.clock.now_utc();
    h.clock.set(now + chrono::Duration::seconds(3600));
    let disabled = &keys[6..11];
    for k in disabled {
        modify(&mut ldap, k, vec![Mod::Add("nsAccountLock", vs(&["TRUE"]))]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        h.drain().await;
        let revoked = disabled
            .iter()
            .filter(|k| !h.holds(k, "berlin-sales"))
            .count();
        let held = store::held_changes(h.app.store().pool()).await.unwrap();
        if revoked + held.len() == disabled.len() {
            assert!(
                revoked <= 3,
                "at most the threshold flows: {revoked} revoked"
            );
            assert!(held.len() >= 2, "{held:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "disables neither applied nor held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for held in store::held_changes(h.app.store().pool()).await.unwrap() {
        h.app
            .engine
            .decide(held.id, true, "admin@example.com")
            .await
            .unwrap();
    }
    h.drain().await;
    assert!(disabled.iter().all(|k| !h.holds(k, "berlin-sales")));
    assert!(keys[11..].iter().all(|k| h.holds(k, "berlin-sales")));
    src.stop().await;
}

/// A groupOfNames under ou=groups (it must have a member: a placeholder keeps it valid).
async fn add_group(ldap: &mut ldap3::Ldap, cn_rdn: &str, members: &[&str]) -> String {
    let dn = format!("cn={cn_rdn},ou=groups,{SUFFIX}");
    let mut m: Vec<&str> = members.to_vec();
    m.push(ADMIN);
    let cn = cn_rdn.replace("\\2C", ",");
    add(
        ldap,
        &dn,
        vec![
            ("objectClass", vec!["groupOfNames"]),
            ("cn", vec![&cn]),
            ("member", m),
        ],
    )
    .await;
    dn
}

#[tokio::test]
async fn rfc4533_group_entries_with_memberof_overlay_grant_and_revoke() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    // The real overlay maintains memberOf; syncprov does not send the person when it does.
    let slapd = Slapd::start_with(&tmp.path().join("slapd"), true, true);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    add_user(&mut ldap, "E1", "sales", "berlin").await;
    add_user(&mut ldap, "E2", "sales", "london").await;
    // Roles by a group's name with an escaped comma and non-ASCII case, and by DN.
    let text = std::fs::read_to_string(repo().join("mappings/ldap.toml"))
        .unwrap()
        .replace(
            "attribute = \"memberOf\"",
            &format!("attribute = \"memberOf\"\nbase = \"ou=groups,{SUFFIX}\""),
        )
        .replace(
            "{ group = \"technicians\", role = \"technician\" },",
            "{ group = \"technicians\", role = \"technician\" },\n  { group = \"Ødegård Lab, Oslo\", role = \"technician\" },",
        );
    let mapping = tmp.path().join("ldap-groups.toml");
    std::fs::write(&mapping, text).unwrap();
    let mut cfg = source_config(&slapd.url(), "");
    cfg.mapping = mapping;
    let src = start_source(&h, &cfg);
    until(&h, "initial load", |h| {
        h.holds("E1", "berlin-sales") && h.holds("E2", "london-sales")
    })
    .await;
    // Groups created while connected: membership arrives through the group entries.
    let managers = add_group(&mut ldap, "Managers", &[&user_dn("E1")]).await;
    let lab = add_group(
        &mut ldap,
        "ØDEGÅRD LAB\\2C OSLO",
        &[&user_dn("E2").to_uppercase()],
    )
    .await;
    until(&h, "group members get their doors", |h| {
        h.holds("E1", "berlin-management") && h.holds("E2", "london-plant-room")
    })
    .await;
    // The overlay did write memberOf on the person.
    let (rs, _) = ldap
        .search(
            &user_dn("E1"),
            ldap3::Scope::Base,
            "(objectClass=*)",
            vec!["memberOf"],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let e = ldap3::SearchEntry::construct(rs.into_iter().next().unwrap());
    assert_eq!(e.attrs.get("memberOf").map(Vec::len), Some(1), "{e:?}");
    // Removal from a group revokes the door.
    ldap.modify(
        &managers,
        vec![Mod::Delete("member", vs(&[&user_dn("E1")]))],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    until(&h, "removed from managers", |h| {
        !h.holds("E1", "berlin-management")
    })
    .await;
    ldap.delete(&lab).await.unwrap().success().unwrap();
    until(&h, "lab group deleted", |h| {
        !h.holds("E2", "london-plant-room")
    })
    .await;
    assert!(h.holds("E1", "berlin-sales") && h.holds("E2", "london-sales"));
    src.stop().await;
}

#[allow(clippy::too_many_arguments)]
async fn add_ad_entry(
    ldap: &mut ldap3::Ldap,
    uid: &str,
    key: &str,
    dept: &str,
    site: &str,
    uac: &str,
    usn: &str,
) {
    let mail = format!("{uid}@example.com");
    let cn = format!("Person {uid}");
    add(
        ldap,
        &format!("uid={uid},{PEOPLE}"),
        vec![
            (
                "objectClass",
                vec!["inetOrgPerson", "latchkeyDirectoryUser"],
            ),
            ("uid", vec![uid]),
            ("cn", vec![&cn]),
            ("sn", vec![uid]),
            ("displayName", vec![&cn]),
            ("mail", vec![&mail]),
            ("sAMAccountName", vec![uid]),
            ("employeeID", vec![key]),
            ("department", vec![dept]),
            ("l", vec![site]),
            ("userAccountControl", vec![uac]),
            ("uSNChanged", vec![usn]),
        ],
    )
    .await;
}

async fn modify_dn(ldap: &mut ldap3::Ldap, uid: &str, mods: Vec<Mod<&str>>) {
    ldap.modify(&format!("uid={uid},{PEOPLE}"), mods)
        .await
        .unwrap()
        .success()
        .unwrap();
}

async fn until_checkpoint(h: &Harness, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while store::checkpoint(h.app.store().pool(), "corp")
        .await
        .unwrap()
        .as_deref()
        != Some(want)
    {
        assert!(Instant::now() < deadline, "checkpoint {want} not reached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.drain().await;
}

async fn issues_of(h: &Harness, key: &str) -> usize {
    store::completed_commands(h.app.store().pool())
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.identity_key == key && c.action == Action::Issue)
        .count()
}

#[tokio::test]
async fn active_directory_duplicate_keys_never_alternate() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd"), false);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    add_ad_entry(&mut ldap, "a1", "A1", "Engineering", "Berlin", "512", "100").await;
    add_ad_entry(
        &mut ldap,
        "adm-a1",
        "A1",
        "Engineering",
        "Berlin",
        "512",
        "101",
    )
    .await;
    add_ad_entry(&mut ldap, "a2", "A2", "Sales", "London", "512", "102").await;
    add_ad_entry(&mut ldap, "a2-old", "A2", "Finance", "London", "514", "103").await;
    add_ad_entry(&mut ldap, "a3", "A3", "Sales", "Berlin", "512", "104").await;
    add_ad_entry(&mut ldap, "a4", "A4", "Sales", "Berlin", "512", "105").await;
    let text = |full: u64| {
        format!(
            "dialect = \"active_directory\"\npoll_seconds = 1\nfull_compare_seconds = {full}\n\
             filter = \"(objectClass=latchkeyDirectoryUser)\"\n"
        )
    };
    let mut cfg = source_config(&slapd.url(), &text(3600));
    cfg.mapping = repo().join("tests/ldap/ad-mapping.toml");
    let src = start_source(&h, &cfg);
    until(&h, "initial load", |h| {
        h.holds("A1", "berlin-lab")
            && h.holds("A2", "london-sales")
            && h.holds("A4", "berlin-sales")
    })
    .await;
    assert!(
        !h.holds("A2", "london-finance"),
        "the stale duplicate gives nothing"
    );
    let q = store::list_quarantine(h.app.store().pool(), 50)
        .await
        .unwrap();
    assert!(
        q.iter().any(|q| q.location == format!("uid=adm-a1,{PEOPLE}") && q.reason.contains("duplicate")),
        "{q:?}"
    );
    // The person leaves; a password reset on the admin duplicate does not re-hire.
    modify_dn(
        &mut ldap,
        "a1",
        vec![
            Mod::Replace("userAccountControl", vs(&["514"])),
            Mod::Replace("uSNChanged", vs(&["110"])),
        ],
    )
    .await;
    until(&h, "A1 leaves", |h| {
        !h.holds("A1", "berlin-lab") && !h.holds("A1", "berlin-engineering")
    })
    .await;
    modify_dn(
        &mut ldap,
        "adm-a1",
        vec![
            Mod::Replace("description", vs(&["password reset"])),
            Mod::Replace("uSNChanged", vs(&["111"])),
        ],
    )
    .await;
    // Touching the stale disabled duplicate does not revoke the active person.
    modify_dn(
        &mut ldap,
        "a2-old",
        vec![
            Mod::Replace("description", vs(&["touched"])),
            Mod::Replace("uSNChanged", vs(&["112"])),
        ],
    )
    .await;
    until_checkpoint(&h, "usn:112").await;
    assert!(!h.holds("A1", "berlin-lab") && !h.holds("A1", "berlin-engineering"));
    assert!(h.holds("A2", "london-sales"));
    src.stop().await;

    // Full comparisons, one after another: deletions of A3 and then A4 show two have run.
    let mut cfg = source_config(&slapd.url(), &text(1));
    cfg.mapping = repo().join("tests/ldap/ad-mapping.toml");
    let src = start_source(&h, &cfg);
    for k in ["a3", "a4"] {
        ldap.delete(&format!("uid={k},{PEOPLE}"))
            .await
            .unwrap()
            .success()
            .unwrap();
        let key = k.to_uppercase();
        until(&h, "deletion found by a full comparison", |h| {
            !h.holds(&key, "berlin-sales")
        })
        .await;
    }
    src.stop().await;
    assert!(h.holds("A2", "london-sales"));
    assert!(!h.holds("A1", "berlin-lab"));
    // Nothing issued twice, nothing revoked from the active person.
    assert_eq!(revokes_of(&h, "A2").await.len(), 0);
    assert_eq!(issues_of(&h, "A2").await, 1);
    assert_eq!(issues_of(&h, "A1").await, 2);
    assert_eq!(revokes_of(&h, "A1").await.len(), 2);
}

/// An inetOrgPerson with its own uid carrying someone's employeeNumber.
async fn add_copy(ldap: &mut ldap3::Ldap, uid: &str, key: &str, dept: &str, site: &str) {
    let mail = format!("{uid}@example.com");
    add(
        ldap,
        &format!("uid={uid},{PEOPLE}"),
        vec![
            (
                "objectClass",
                vec!["inetOrgPerson", "latchkeyDirectoryUser"],
            ),
            ("uid", vec![uid]),
            ("cn", vec![uid]),
            ("sn", vec![uid]),
            ("mail", vec![&mail]),
            ("employeeNumber", vec![key]),
            ("departmentNumber", vec![dept]),
            ("l", vec![site]),
            ("employeeType", vec!["Employee"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn rfc4533_duplicate_keys_admin_reset_and_stale_copy() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd"), true);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    add_user(&mut ldap, "E1", "sales", "berlin").await;
    add_copy(&mut ldap, "adm-e1", "E1", "sales", "berlin").await;
    add_user(&mut ldap, "E2", "finance", "london").await;
    add_copy(&mut ldap, "e2-old", "E2", "finance", "london").await;
    ldap.modify(
        &format!("uid=e2-old,{PEOPLE}"),
        vec![Mod::Add("nsAccountLock", vs(&["TRUE"]))],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    let src = start_source(&h, &source_config(&slapd.url(), ""));
    until(&h, "initial load", |h| {
        h.holds("E1", "berlin-sales") && h.holds("E2", "london-finance")
    })
    .await;
    modify(
        &mut ldap,
        "E1",
        vec![Mod::Add("nsAccountLock", vs(&["TRUE"]))],
    )
    .await;
    until(&h, "E1 leaves", |h| !h.holds("E1", "berlin-sales")).await;
    // A password reset on the admin copy, a touch and then a delete of the stale copy.
    ldap.modify(
        &format!("uid=adm-e1,{PEOPLE}"),
        vec![Mod::Replace("userPassword", vs(&["new-secret"]))],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    ldap.modify(
        &format!("uid=e2-old,{PEOPLE}"),
        vec![Mod::Replace("description", vs(&["touched"]))],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    ldap.delete(&format!("uid=e2-old,{PEOPLE}"))
        .await
        .unwrap()
        .success()
        .unwrap();
    // Changes arrive in order: once this joiner is in, the ones before were applied.
    add_user(&mut ldap, "E9", "sales", "london").await;
    until(&h, "joiner after the duplicates' changes", |h| {
        h.holds("E9", "london-sales")
    })
    .await;
    assert!(
        !h.holds("E1", "berlin-sales"),
        "the admin copy re-hired a leaver"
    );
    assert!(
        h.holds("E2", "london-finance"),
        "the stale copy revoked the active person"
    );
    assert_eq!(revokes_of(&h, "E2").await.len(), 0);
    src.stop().await;
}

#[tokio::test]
async fn directory_change_time_is_the_trigger_so_detect_shows_polling_delay() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    // latchkey's clock runs 30 s behind the directory's changes (as a slow poll would).
    // The wall clock the directory stamps its changes with.
    let wall = latchkey::clock::system();
    let started = wall.now();
    h.clock.set(started + chrono::Duration::seconds(30));
    let slapd = Slapd::start(&tmp.path().join("slapd"), false);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    add_ad_user(&mut ldap, "A1", "Sales", "London", "100").await;
    let mut cfg = source_config(
        &slapd.url(),
        "dialect = \"active_directory\"\npoll_seconds = 1\nfull_compare_seconds = 3600\n\
         filter = \"(objectClass=latchkeyDirectoryUser)\"\n",
    );
    cfg.mapping = repo().join("tests/ldap/ad-mapping.toml");
    let src = start_source(&h, &cfg);
    until(&h, "initial load", |h| h.holds("A1", "london-sales")).await;
    let modified = wall.now();
    modify(
        &mut ldap,
        "A1",
        vec![
            Mod::Replace("userAccountControl", vs(&["514"])),
            Mod::Replace("uSNChanged", vs(&["110"])),
        ],
    )
    .await;
    until(&h, "A1 revoked", |h| !h.holds("A1", "london-sales")).await;
    src.stop().await;
    let c = store::completed_commands(h.app.store().pool())
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.identity_key == "A1" && c.action == Action::Revoke)
        .unwrap();
    let trigger = latchkey::clock::from_micros(c.trigger_at);
    // modifyTimestamp has one-second resolution.
    assert!(
        (trigger - modified).num_seconds().abs() <= 2,
        "trigger {trigger} is not the directory's change time {modified}"
    );
    let detect = (c.detected_at - c.trigger_at) / 1_000_000;
    assert!((20..=31).contains(&detect), "detect stage {detect} s");
}

#[tokio::test]
async fn active_directory_changed_employee_id_is_the_same_person() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let dir = tmp.path().join(&name);
        let h = Harness::new(&name, &url, &dir, NukiOptions::default()).await;
        let slapd = Slapd::start(&dir.join("slapd"), false);
        let mut ldap = slapd.admin().await;
        seed(&mut ldap).await;
        add_ad_user(&mut ldap, "A1", "Engineering", "Berlin", "100").await;
        add_ad_user(&mut ldap, "A3", "Sales", "Berlin", "101").await;
        add_ad_user(&mut ldap, "A4", "Sales", "Berlin", "102").await;
        let mut cfg = source_config(
            &slapd.url(),
            "dialect = \"active_directory\"\npoll_seconds = 1\nfull_compare_seconds = 2\n\
         filter = \"(objectClass=latchkeyDirectoryUser)\"\n",
        );
        cfg.mapping = repo().join("tests/ldap/ad-mapping.toml");
        let src = start_source(&h, &cfg);
        until(&h, "initial load", |h| {
            h.holds("A1", "berlin-lab") && h.holds("A1", "berlin-engineering")
        })
        .await;
        // Same entry (entryUUID), same mailbox and vendor account, new employeeID.
        modify(
            &mut ldap,
            "A1",
            vec![
                Mod::Replace("employeeID", vs(&["A9"])),
                Mod::Replace("uSNChanged", vs(&["110"])),
            ],
        )
        .await;
        until_checkpoint(&h, "usn:110").await;
        // Full comparisons run after it: the deletions of A3 and then A4 show they did.
        for k in ["A3", "A4"] {
            ldap.delete(&user_dn(k)).await.unwrap().success().unwrap();
            until(&h, "deletion found by a full comparison", |h| {
                !h.holds(k, "berlin-sales")
            })
            .await;
        }
        src.stop().await;
        // The vendor account (a1@example.com) kept its doors; nothing revoked or issued again.
        assert!(h.holds("A1", "berlin-lab") && h.holds("A1", "berlin-engineering"));
        assert!(revokes_of(&h, "A1").await.is_empty() && revokes_of(&h, "A9").await.is_empty());
        assert_eq!(issues_of(&h, "A1").await + issues_of(&h, "A9").await, 2);
        let mut conn = h.app.store().pool().acquire().await.unwrap();
        assert_eq!(store::grants_of(&mut conn, "A9").await.unwrap().len(), 2);
        assert!(
            store::get_identity(&mut conn, "A1")
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn rfc4533_mass_deletion_while_down_with_sessionlog_is_held() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    let mut slapd = Slapd::start(&tmp.path().join("slapd"), true);
    // With a session log slapd answers a reconnect with explicit deletes, not a present phase.
    let conf = tmp.path().join("slapd/slapd.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace(
            "syncprov-checkpoint 10 1",
            "syncprov-checkpoint 10 1\nsyncprov-sessionlog 1000",
        ),
    )
    .unwrap();
    slapd.stop();
    slapd.spawn();
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    let keys: Vec<String> = (1..=20).map(|i| format!("S{i:02}")).collect();
    for k in &keys {
        add_user(&mut ldap, k, "sales", "london").await;
    }
    let mut cfg = source_config(&slapd.url(), "");
    cfg.mass_change_threshold = Some(0.2);
    cfg.mass_delete_min = 2;
    let src = start_source(&h, &cfg);
    until(&h, "initial load", |h| {
        keys.iter().all(|k| h.holds(k, "london-sales"))
    })
    .await;
    // The cookie must cover the load before latchkey goes down.
    add_user(&mut ldap, "S99", "sales", "london").await;
    until(&h, "joiner", |h| h.holds("S99", "london-sales")).await;
    src.stop().await;
    for k in &keys[..6] {
        ldap.delete(&user_dn(k)).await.unwrap().success().unwrap();
    }
    let src = start_source(&h, &cfg);
    let deadline = Instant::now() + Duration::from_secs(15);
    while store::held_changes(h.app.store().pool())
        .await
        .unwrap()
        .len()
        < 6
    {
        assert!(
            Instant::now() < deadline,
            "deletions made while down were not held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    src.stop().await;
    h.drain().await;
    assert!(
        keys.iter().all(|k| h.holds(k, "london-sales")),
        "nobody revoked before approval"
    );
}

#[tokio::test]
async fn active_directory_group_entries_are_read_every_poll() {
    if !slapd_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new(
        "sqlite",
        &format!("sqlite://{}", tmp.path().join("state.db").display()),
        tmp.path(),
        NukiOptions::default(),
    )
    .await;
    let slapd = Slapd::start(&tmp.path().join("slapd"), false);
    let mut ldap = slapd.admin().await;
    seed(&mut ldap).await;
    add_ad_user(&mut ldap, "A1", "Sales", "Berlin", "100").await;
    let text = std::fs::read_to_string(repo().join("tests/ldap/ad-mapping.toml"))
        .unwrap()
        .replace(
            "attribute = \"memberOf\"",
            &format!("attribute = \"memberOf\"\nbase = \"ou=groups,{SUFFIX}\"\nnested = true"),
        );
    let mapping = tmp.path().join("ad-groups.toml");
    std::fs::write(&mapping, text).unwrap();
    let mut cfg = source_config(
        &slapd.url(),
        "dialect = \"active_directory\"\npoll_seconds = 1\nfull_compare_seconds = 3600\n\
         filter = \"(objectClass=latchkeyDirectoryUser)\"\n",
    );
    cfg.mapping = mapping;
    let src = start_source(&h, &cfg);
    until(&h, "initial load", |h| h.holds("A1", "berlin-sales")).await;
    // Managers (by DN in the mapping) contains a nested group that contains A1, spelled in
    // another case: nothing changes on A1's own entry.
    let leads = add_group(
        &mut ldap,
        "Site Leads\\2C Berlin",
        &[&user_dn("A1").to_uppercase()],
    )
    .await;
    add_group(&mut ldap, "Managers", &[&leads]).await;
    until(&h, "nested group membership grants", |h| {
        h.holds("A1", "berlin-management")
    })
    .await;
    ldap.modify(
        &leads,
        vec![Mod::Delete("member", vs(&[&user_dn("A1").to_uppercase()]))],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    until(&h, "removal revokes", |h| {
        !h.holds("A1", "berlin-management")
    })
    .await;
    assert!(h.holds("A1", "berlin-sales"));
    src.stop().await;
}
