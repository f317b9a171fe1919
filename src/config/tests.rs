//! Loading and checking configurations: the errors a user meets, named by file, line and key.

use super::*;

fn input(text: &str, env: &[(&str, &str)]) -> ConfigInput {
    ConfigInput {
        text: text.to_string(),
        path: PathBuf::from("conf/test.toml"),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

const MINIMAL: &str = r#"
version = 1
[store]
url = "sqlite://x.db"
[policy]
templates = "t.toml"
"#;

#[test]
fn minimal_config_loads_with_defaults() {
    let c = Config::load(&input(MINIMAL, &[])).unwrap();
    assert_eq!(c.engine.mass_change_threshold, 0.2);
    assert_eq!(c.resolve(Path::new("t.toml")), PathBuf::from("conf/t.toml"));
}

#[test]
fn attribute_authority_names_configured_sources_only() {
    let text = format!(
        "{MINIMAL}\n[scim.tenants.okta]\ntoken_sha256 = \"{}\"\n\
         [authority.attributes]\ndepartment = [\"scim:okta\"]\n",
        "0".repeat(64)
    );
    let c = Config::load(&input(&text, &[])).unwrap();
    assert_eq!(c.authority.attributes["department"], ["scim:okta"]);
    let err = Config::load(&input(&text.replace("scim:okta\"]", "scim:otka\"]"), &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("authority.attributes.department"), "{err}");
    assert!(
        err.contains("`scim:otka` is not a configured source"),
        "{err}"
    );
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = format!("{MINIMAL}\n[engine]\nmass_change_treshold = 0.5\n");
    let err = Config::load(&input(&text, &[])).unwrap_err().to_string();
    assert!(err.starts_with("conf/test.toml:9:"), "{err}");
    assert!(err.contains("mass_change_treshold"), "{err}");
}

#[test]
fn environment_overlays_typed_values() {
    let c = Config::load(&input(
        MINIMAL,
        &[
            ("LATCHKEY_ENGINE__MASS_CHANGE_THRESHOLD", "0.35"),
            ("LATCHKEY_LOG", "debug"),
        ],
    ))
    .unwrap();
    assert_eq!(c.engine.mass_change_threshold, 0.35);
}

#[test]
fn environment_cannot_add_unknown_keys() {
    let err = Config::load(&input(MINIMAL, &[("LATCHKEY_ENGINE__NOPE", "1")])).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(
        err.to_string()
            .starts_with("environment variable LATCHKEY_ENGINE__NOPE: "),
        "{err}"
    );
}

#[test]
fn wrong_types_name_the_key_and_the_value_expected_in_words() {
    let text = format!("{MINIMAL}\n[engine]\nlease_seconds = 1.5\n");
    let err = Config::load(&input(&text, &[])).unwrap_err().to_string();
    assert!(
        err.contains("`engine.lease_seconds`: expected a whole number (0 or more), found floating point `1.5`"),
        "{err}"
    );
    assert!(!err.contains("u64"), "{err}");
    // Set from the environment: the variable is named, not a line of a merged file.
    let err = Config::load(&input(
        MINIMAL,
        &[("LATCHKEY_ENGINE__MASS_CHANGE_THRESHOLD", "high")],
    ))
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "environment variable LATCHKEY_ENGINE__MASS_CHANGE_THRESHOLD: \
         `engine.mass_change_threshold`: expected a number, found string (value hidden)"
    );
    // The file's own mistake, with an unrelated override set, is reported at the file's line.
    let err = Config::load(&input(&text, &[("LATCHKEY_ENGINE__TICK_MILLIS", "50")]))
        .unwrap_err()
        .to_string();
    assert!(!err.contains("environment"), "{err}");
    assert!(err.contains("lease_seconds"), "{err}");
}

#[test]
fn a_missing_file_says_so_once() {
    let err = ConfigInput::from_file(Path::new("/nonexistent/latchkey.toml"), BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "/nonexistent/latchkey.toml: cannot read: No such file or directory"
    );
}

#[test]
fn scim_extensions_are_checked_when_loaded() {
    let ok = format!(
        "{MINIMAL}\n[scim.extensions.\"urn:acme:2.0:User\"]\n\
         attributes = [{{ name = \"badge\", type = \"integer\", maps_to = \"badge\" }},\
         {{ name = \"office\", type = \"complex\", sub_attributes = [{{ name = \"room\" }}] }}]\n\
         [scim.tenants.e]\ntoken_sha256 = \"{}\"\nprovider = \"entra\"\nmay_terminate = true\n\
         unknown_attributes = \"keep\"\nauthoritative_keys = [\"C*\"]\n",
        "ab".repeat(32)
    );
    let c = Config::load(&input(&ok, &[])).unwrap();
    assert_eq!(c.scim.extensions["urn:acme:2.0:User"].attributes.len(), 2);
    assert_eq!(c.scim.tenants["e"].provider, ScimProvider::Entra);
    for bad in [
        "[scim.extensions.\"not-a-urn\"]\nattributes = []\n",
        "[scim.extensions.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\"]\nattributes = []\n",
        "[scim.extensions.\"urn:a:b\"]\nattributes = [{ name = \"x\", type = \"complex\" }]\n",
        "[scim.extensions.\"urn:a:b\"]\nattributes = [{ name = \"x\", type = \"float\" }]\n",
        "[scim.extensions.\"urn:a:b\"]\nresource = \"Device\"\nattributes = []\n",
    ] {
        let err = Config::load(&input(&format!("{MINIMAL}\n{bad}"), &[])).unwrap_err();
        assert!(err.to_string().contains("scim.extensions"), "{bad}: {err}");
    }
}

#[test]
fn operators_need_a_sha256_of_their_own_and_a_known_role() {
    let h = "ab".repeat(32);
    let ok = format!("{MINIMAL}\n[operators.ci]\nrole = \"viewer\"\ntoken_sha256 = \"{h}\"\n");
    let c = Config::load(&input(&ok, &[])).unwrap();
    assert_eq!(c.operators["ci"].role, crate::operators::Role::Viewer);
    let short = ok.replace(&h, "abc");
    let err = Config::load(&input(&short, &[])).unwrap_err().to_string();
    assert!(
        err.contains("operators.ci.token_sha256") && err.contains("64 hex"),
        "{err}"
    );
    let twice = format!("{ok}\n[operators.other]\nrole = \"admin\"\ntoken_sha256 = \"{h}\"\n");
    let err = Config::load(&input(&twice, &[])).unwrap_err().to_string();
    assert!(err.contains("same token as operators.ci"), "{err}");
    let bad_role = ok.replace("\"viewer\"", "\"root\"");
    let err = Config::load(&input(&bad_role, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("operators.ci.role"), "{err}");
}

#[test]
fn scim_tenants_need_exactly_one_hashed_or_referenced_token() {
    let hash = "ab".repeat(32);
    let ok = format!("{MINIMAL}\n[scim.tenants.okta]\ntoken_sha256 = \"{hash}\"\n");
    let c = Config::load(&input(&ok, &[])).unwrap();
    assert_eq!(c.scim_token_sha256("okta").unwrap(), [0xab; 32]);
    let env = format!("{MINIMAL}\n[scim.tenants.e]\ntoken = {{ env = \"SCIM_T\" }}\n");
    let c = Config::load(&input(&env, &[("SCIM_T", "abc")])).unwrap();
    use sha2::Digest;
    assert_eq!(
        c.scim_token_sha256("e").unwrap().to_vec(),
        sha2::Sha256::digest(b"abc").to_vec()
    );
    let c = Config::load(&input(&env, &[])).unwrap();
    assert!(
        c.scim_token_sha256("e")
            .unwrap_err()
            .to_string()
            .contains("SCIM_T")
    );
    for bad in [
        format!("{MINIMAL}\n[scim.tenants.x]\ntoken_sha256 = \"abc\"\n"),
        format!("{MINIMAL}\n[scim.tenants.x]\n"),
        format!("{MINIMAL}\n[scim.tenants.x]\ntoken = \"in-clear\"\n"),
    ] {
        assert!(Config::load(&input(&bad, &[])).is_err(), "{bad}");
    }
}

#[test]
fn store_urls_with_a_password_are_refused_without_repeating_it() {
    for ok in [
        "sqlite://x.db",
        "sqlite:///var/lib/latchkey/state.db?mode=rwc",
        "postgres://latchkey@db:5432/latchkey?sslmode=require",
    ] {
        assert!(!url_has_password(ok), "{ok}");
    }
    for bad in [
        "postgres://latchkey:s3cr3t@db/latchkey",
        "postgres://db/latchkey?user=l&password=s3cr3t",
        "weird://u:s3cr3t@[bad",
    ] {
        assert!(url_has_password(bad), "{bad}");
        let text = MINIMAL.replace("sqlite://x.db", bad);
        let err = Config::load(&input(&text, &[])).unwrap_err().to_string();
        assert!(
            err.contains("url_secret") && !err.contains("s3cr3t"),
            "{err}"
        );
    }
}

#[test]
fn a_secret_given_in_clear_is_never_repeated_in_the_error() {
    let text = format!("{MINIMAL}\n[scim.tenants.okta]\ntoken = \"tok_live_XYZ\"\n");
    let err = Config::load(&input(&text, &[])).unwrap_err().to_string();
    assert!(!err.contains("tok_live_XYZ"), "{err}");
    assert!(err.contains("secret reference"), "{err}");
    let err = Config::load(&input(
        MINIMAL,
        &[("LATCHKEY_SCIM__TENANTS__OKTA__TOKEN", "tok_live_XYZ")],
    ))
    .unwrap_err()
    .to_string();
    assert!(!err.contains("tok_live_XYZ"), "{err}");
}

#[test]
fn secrets_come_from_env_or_file_never_the_file_text() {
    let text = MINIMAL.replace(
        "[policy]",
        "[connectors.nuki]\nprofile = \"n.toml\"\ntoken = \"abc\"\n[policy]",
    );
    assert!(
        Config::load(&input(&text, &[])).is_err(),
        "a clear-text secret key must be refused"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tok");
    std::fs::write(&f, "s3cret\n").unwrap();
    let env: BTreeMap<String, String> =
        [("NUKI_TOKEN_FILE".to_string(), f.display().to_string())].into();
    let r = SecretRef {
        env: Some("NUKI_TOKEN".into()),
        file: None,
    };
    assert_eq!(resolve_secret("t", &r, &env).unwrap(), "s3cret");
    let missing = resolve_secret("t", &r, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(missing.contains("NUKI_TOKEN_FILE"), "{missing}");
}
