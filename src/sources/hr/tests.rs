//! Mappings and feeds as HR systems write them, and the errors a bad one gives.

use super::*;

const MAPPING: &str = r#"version = 1
# the column holding the correlation key (employee id)
key = "employee_id"
delimiter = ","
date_format = "%Y-%m-%d"
[columns]
name = "full_name"
email = "email"
department = "department"
role = "job_title"
employment_type = "employment_type"
site = "site"
status = "status"
hire_date = "hire_date"
termination_date = "termination_date"
contract_end = "contract_end"
manager = "manager_id"
[status_values]
"Active" = "active"
"On Leave" = "suspended"
"Terminated" = "terminated"
"Pre-hire" = "active"
[required]
attributes = ["name", "email"]
"#;

const HEADER: &str = "employee_id,full_name,email,department,job_title,employment_type,site,status,hire_date,termination_date,contract_end,manager_id";

fn mapping() -> HrMapping {
    match parse_mapping(MAPPING, "mappings/hr.toml") {
        Ok(m) => m,
        Err(e) => panic!("sample mapping must parse: {e}"),
    }
}

fn feed(rows: &[&str]) -> String {
    let mut text = String::from(HEADER);
    for row in rows {
        text.push('\n');
        text.push_str(row);
    }
    text.push('\n');
    text
}

fn parse(text: &str) -> ParsedFeed {
    match parse_feed("hr", "hr.csv", text.as_bytes(), &mapping()) {
        Ok(f) => f,
        Err(e) => panic!("feed must parse: {e}"),
    }
}

fn mapping_err(text: &str) -> String {
    match parse_mapping(text, "mappings/hr.toml") {
        Ok(_) => panic!("mapping should have been rejected"),
        Err(e) => e.to_string(),
    }
}

const GOOD: &str =
    "E1,Ada Lovelace,ada@example.com,engineering,engineer,Employee,berlin,Active,2020-01-15,,,E9";

fn date(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d)
}

#[test]
fn sample_mapping_parses() {
    let m = mapping();
    assert_eq!(m.key, "employee_id");
    assert_eq!(m.delimiter, b',');
    assert_eq!(m.columns.get("role").map(String::as_str), Some("job_title"));
    assert_eq!(
        m.status_values.get("On Leave"),
        Some(&RecordStatus::Suspended)
    );
    assert_eq!(m.required, vec!["name".to_string(), "email".to_string()]);
}

#[test]
fn well_formed_rows_become_records() {
    let f = parse(&feed(&[
        GOOD,
        " E2 , Bob Stone ,bob@example.com,sales,sales rep,CONTRACTOR,london,on leave ,2019-03-01,2025-06-30,2027-01-31,",
    ]));
    assert_eq!(f.rows, 2);
    assert!(f.quarantined.is_empty(), "{:?}", f.quarantined);
    let a = &f.records[0];
    assert_eq!(a.source, "hr");
    assert_eq!(a.key, "E1");
    assert_eq!(a.location, "hr.csv:2");
    assert_eq!(a.status, Some(RecordStatus::Active));
    assert_eq!(a.hire_date, date(2020, 1, 15));
    assert_eq!(a.termination_date, None);
    assert_eq!(a.contract_end, None);
    assert_eq!(a.site.as_deref(), Some("berlin"));
    let expected: BTreeMap<String, String> = [
        ("department", "engineering"),
        ("email", "ada@example.com"),
        ("employee_id", "E1"),
        ("employment_type", "employee"),
        ("manager", "E9"),
        ("name", "Ada Lovelace"),
        ("role", "engineer"),
        ("site", "berlin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(a.attrs, expected);

    let b = &f.records[1];
    assert_eq!(b.key, "E2");
    assert_eq!(b.location, "hr.csv:3");
    assert_eq!(b.status, Some(RecordStatus::Suspended));
    assert_eq!(b.termination_date, date(2025, 6, 30));
    assert_eq!(b.contract_end, date(2027, 1, 31));
    assert_eq!(b.attrs.get("name").map(String::as_str), Some("Bob Stone"));
    assert_eq!(
        b.attrs.get("employment_type").map(String::as_str),
        Some("contractor")
    );
    assert!(!b.attrs.contains_key("manager"), "empty cells are omitted");
    assert_eq!(f.digest.len(), 64);
}

fn only_quarantine(rows: &[&str]) -> Quarantined {
    let f = parse(&feed(rows));
    assert_eq!(f.quarantined.len(), 1, "{:?}", f.quarantined);
    f.quarantined[0].clone()
}

#[test]
fn unparseable_date_is_quarantined() {
    let row = "E1,Ada,ada@example.com,eng,engineer,employee,berlin,Active,2020-01-15,2026-13-01,,";
    let q = only_quarantine(&[GOOD.replace("E1", "E0").as_str(), row]);
    assert_eq!(q.source, "hr");
    assert_eq!(q.location, "hr.csv:3");
    assert_eq!(q.record_key.as_deref(), Some("E1"));
    assert_eq!(q.field, "termination_date");
    assert_eq!(
        q.reason,
        "unparseable date '2026-13-01', expected %Y-%m-%d (or ISO 8601, LDAP generalized \
         time, FILETIME or epoch seconds)"
    );
    assert_eq!(q.raw, row);
}

#[test]
fn unknown_status_is_quarantined_with_known_values() {
    let q = only_quarantine(&[
        "E1,Ada,ada@example.com,eng,engineer,employee,berlin,Retired,2020-01-15,,,",
    ]);
    assert_eq!(q.location, "hr.csv:2");
    assert_eq!(q.field, "status");
    assert_eq!(
        q.reason,
        "unknown status value 'Retired', expected one of 'Active', 'On Leave', 'Pre-hire', 'Terminated'"
    );
}

#[test]
fn missing_key_is_quarantined() {
    let f = parse(&feed(&[
        "  ,Ada,ada@example.com,eng,engineer,employee,berlin,Active,2020-01-15,,,",
        GOOD,
    ]));
    assert_eq!(f.records.len(), 1);
    let q = &f.quarantined[0];
    assert_eq!(q.location, "hr.csv:2");
    assert_eq!(q.record_key, None);
    assert_eq!(q.field, "employee_id");
    assert_eq!(q.reason, "empty key column 'employee_id'");
}

#[test]
fn empty_required_attribute_is_quarantined() {
    let q = only_quarantine(&["E1,Ada,  ,eng,engineer,employee,berlin,Active,2020-01-15,,,"]);
    assert_eq!(q.field, "email");
    assert_eq!(q.record_key.as_deref(), Some("E1"));
    assert_eq!(
        q.reason,
        "required attribute 'email' is empty (column 'email')"
    );
}

#[test]
fn wrong_field_count_is_quarantined_not_fatal() {
    let f = parse(&feed(&[
        "E1,Ada,ada@example.com,eng",
        &format!("{},extra", GOOD.replace("E1", "E2")),
        &GOOD.replace("E1", "E3"),
    ]));
    assert_eq!(f.rows, 3);
    assert_eq!(f.records.len(), 1);
    assert_eq!(f.records[0].key, "E3");
    let short = &f.quarantined[0];
    assert_eq!(short.location, "hr.csv:2");
    assert_eq!(short.field, "row");
    assert_eq!(short.record_key.as_deref(), Some("E1"));
    assert_eq!(
        short.reason,
        "row has 4 fields, expected 12 as in the header"
    );
    assert_eq!(short.raw, "E1,Ada,ada@example.com,eng");
    let long = &f.quarantined[1];
    assert_eq!(long.location, "hr.csv:3");
    assert_eq!(
        long.reason,
        "row has 13 fields, expected 12 as in the header"
    );
}

#[test]
fn later_duplicate_key_is_quarantined() {
    let f = parse(&feed(&[GOOD, &GOOD.replace("E9", "E8")]));
    assert_eq!(f.records.len(), 1);
    assert_eq!(f.records[0].location, "hr.csv:2");
    let q = &f.quarantined[0];
    assert_eq!(q.location, "hr.csv:3");
    assert_eq!(q.field, "employee_id");
    assert_eq!(q.record_key.as_deref(), Some("E1"));
    assert_eq!(q.reason, "duplicate employee_id 'E1', first seen on line 2");
}

#[test]
fn line_numbers_are_physical_lines() {
    // A quoted cell spanning two lines shifts every later row by one.
    let f = parse(&feed(&[
        "E1,\"Ada\nLovelace\",ada@example.com,eng,engineer,employee,berlin,Active,2020-01-15,,,",
        "",
        "E2,Bob,bob@example.com,eng,engineer,employee,berlin,Active,2020-01-15,bad,,",
    ]));
    assert_eq!(f.records[0].location, "hr.csv:2");
    assert_eq!(f.quarantined[0].location, "hr.csv:5");
    assert_eq!(f.rows, 2);
}

#[test]
fn bom_and_crlf_are_handled() {
    let text = format!(
        "\u{feff}{HEADER}\r\n{GOOD}\r\n{}\r\n",
        GOOD.replace("E1", "E2")
    );
    let f = parse(&text);
    assert!(f.quarantined.is_empty(), "{:?}", f.quarantined);
    assert_eq!(f.records.len(), 2);
    assert_eq!(f.records[0].key, "E1");
    assert_eq!(f.records[1].location, "hr.csv:3");
    assert_eq!(
        f.records[1].attrs.get("manager").map(String::as_str),
        Some("E9")
    );
}

#[test]
fn header_missing_mapped_column_fails_the_file() {
    let text = HEADER.replace(",email,", ",mail,") + "\n";
    match parse_feed("hr", "hr.csv", text.as_bytes(), &mapping()) {
        Err(e @ HrError::MissingColumns { .. }) => assert_eq!(
            e.to_string(),
            "hr.csv: header lacks column 'email' (mapped to attribute 'email')"
        ),
        other => panic!("expected missing column, got {other:?}"),
    }
}

#[test]
fn header_missing_key_column_fails_the_file() {
    let text = HEADER.replace("employee_id,", "id,") + "\n";
    match parse_feed("hr", "hr.csv", text.as_bytes(), &mapping()) {
        Err(HrError::MissingColumns { missing, .. }) => {
            assert_eq!(missing.len(), 1);
            assert_eq!(missing[0].column, "employee_id");
        }
        other => panic!("expected missing key column, got {other:?}"),
    }
}

#[test]
fn empty_and_non_utf8_files_fail() {
    let m = mapping();
    assert!(matches!(
        parse_feed("hr", "hr.csv", b"", &m),
        Err(HrError::Empty { .. })
    ));
    assert!(matches!(
        parse_feed("hr", "hr.csv", b"\xEF\xBB\xBF\r\n", &m),
        Err(HrError::Empty { .. })
    ));
    let bytes = format!("{HEADER}\nE1,Ad\u{e9}").into_bytes();
    let mut latin1 = bytes.clone();
    let pos = latin1.len() - 2;
    latin1[pos] = 0xE9;
    latin1.truncate(pos + 1);
    match parse_feed("hr", "hr.csv", &latin1, &m) {
        Err(e @ HrError::NotUtf8 { .. }) => {
            assert_eq!(e.to_string(), "hr.csv:2: not valid UTF-8 text")
        }
        other => panic!("expected not utf-8, got {other:?}"),
    }
}

#[test]
fn header_only_file_has_no_rows() {
    let f = parse(&feed(&[]));
    assert_eq!(f.rows, 0);
    assert!(f.records.is_empty());
    assert_eq!(f.digest, hex::encode(Sha256::digest(feed(&[]).as_bytes())));
}

#[test]
fn unknown_mapping_key_names_line_and_key() {
    let text = MAPPING.replace("[columns]", "[colums]");
    let msg = mapping_err(&text);
    assert!(
        msg.starts_with("mappings/hr.toml:6: unknown key 'colums'"),
        "{msg}"
    );
    let text = MAPPING.replace("version = 1\n", "version = 1\nkye = \"x\"\n");
    let msg = mapping_err(&text);
    assert!(
        msg.starts_with("mappings/hr.toml:2: unknown key 'kye'"),
        "{msg}"
    );
    let text = MAPPING.replace("[required]\n", "[required]\nfoo = 1\n");
    match parse_mapping(&text, "mappings/hr.toml") {
        Err(HrError::Mapping { line, key, .. }) => {
            assert_eq!(line, Some(24));
            assert_eq!(key.as_deref(), Some("required.foo"));
        }
        other => panic!("expected a mapping error, got {other:?}"),
    }
}

#[test]
fn mapping_type_error_names_line_and_key() {
    let msg = mapping_err(&MAPPING.replace(
        "attributes = [\"name\", \"email\"]",
        "attributes = \"name\"",
    ));
    assert!(msg.starts_with("mappings/hr.toml:24: "), "{msg}");
    assert!(msg.contains("required.attributes"), "{msg}");
}

#[test]
fn mapping_validation_errors_name_line() {
    let msg = mapping_err(&MAPPING.replace("version = 1", "version = 2"));
    assert_eq!(msg, "mappings/hr.toml:1: unsupported version 2, expected 1");
    let msg = mapping_err(&MAPPING.replace("key = \"employee_id\"", "key = \" \""));
    assert!(msg.starts_with("mappings/hr.toml:3: key must"), "{msg}");
    let msg = mapping_err(&MAPPING.replace("= \"suspended\"", "= \"paused\""));
    assert!(
        msg.starts_with("mappings/hr.toml:20: unknown status 'paused'"),
        "{msg}"
    );
    let msg = mapping_err(&MAPPING.replace("[\"name\", \"email\"]", "[\"name\", \"badge\"]"));
    assert_eq!(
        msg,
        "mappings/hr.toml:24: required attribute 'badge' is not mapped in [columns]"
    );
    let msg = mapping_err(&MAPPING.replace("\"%Y-%m-%d\"", "\"%H:%M\""));
    assert!(msg.starts_with("mappings/hr.toml:5: date_format"), "{msg}");
    let msg = mapping_err(&MAPPING.replace("delimiter = \",\"", "delimiter = \",;\""));
    assert!(msg.starts_with("mappings/hr.toml:4: delimiter"), "{msg}");
    let msg = mapping_err(&MAPPING.replace("\"Pre-hire\"", "\"active\""));
    assert!(msg.contains("same status value ignoring case"), "{msg}");
}

#[test]
fn other_delimiters_and_date_formats() {
    let text = MAPPING
        .replace("delimiter = \",\"", "delimiter = \";\"")
        .replace("%Y-%m-%d", "%d.%m.%Y");
    let m = match parse_mapping(&text, "m.toml") {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    let csv = format!(
        "{}\nE1;Ada;ada@example.com;eng;engineer;employee;berlin;active;15.01.2020;;;\n",
        HEADER.replace(',', ";")
    );
    let f = match parse_feed("hr", "x.csv", csv.as_bytes(), &m) {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(f.records[0].hire_date, date(2020, 1, 15));
    assert_eq!(f.records[0].status, Some(RecordStatus::Active));
}

#[test]
fn dates_in_other_unambiguous_forms_are_read_and_a_timed_termination_keeps_its_instant() {
    let m = match parse_mapping(MAPPING, "m.toml") {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    let csv = format!(
        "{HEADER}\n\
         E1,Ada,ada@example.com,eng,engineer,employee,berlin,active,2020-01-15T08:00:00+01:00,2026-11-30T14:00:00+01:00,,\n\
         E2,Bo,bo@example.com,eng,engineer,employee,berlin,active,20200115080000Z,,0,\n\
         E3,Cy,cy@example.com,eng,engineer,employee,berlin,active,15/01/2020,,,\n"
    );
    let f = match parse_feed("hr", "x.csv", csv.as_bytes(), &m) {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    };
    let ada = &f.records[0];
    assert_eq!(ada.hire_date, date(2020, 1, 15));
    assert_eq!(ada.termination_date, None);
    assert_eq!(ada.attrs[identity::EXPIRES_AT], "2026-11-30T13:00:00Z");
    let bo = &f.records[1];
    assert_eq!(bo.hire_date, date(2020, 1, 15));
    assert_eq!(bo.contract_end, None, "0 means never");
    // Slashes are ambiguous (day or month first): quarantined with the field named.
    assert_eq!(f.records.len(), 2);
    assert_eq!(f.quarantined.len(), 1);
    assert_eq!(f.quarantined[0].field, "hire_date");
    assert!(
        f.quarantined[0].reason.contains("15/01/2020"),
        "{}",
        f.quarantined[0].reason
    );
}

#[test]
fn load_mapping_reads_file() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let path = dir.path().join("hr.toml");
    if let Err(e) = std::fs::write(&path, MAPPING) {
        panic!("{e}");
    }
    assert!(load_mapping(&path).is_ok());
    assert!(matches!(
        load_mapping(&dir.path().join("absent.toml")),
        Err(HrError::Io { .. })
    ));
}

#[test]
fn feed_files_lists_csv_sorted_skipping_partials() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    for name in [
        "hr-2026-11-25.csv",
        "hr-2026-11-24.csv",
        ".hr-2026-11-26.csv",
        "hr-2026-11-26.csv.part",
        "hr-2026-11-26.csv.tmp",
        "notes.txt",
    ] {
        if let Err(e) = std::fs::write(dir.path().join(name), "x") {
            panic!("{e}");
        }
    }
    if let Err(e) = std::fs::create_dir(dir.path().join("old.csv")) {
        panic!("{e}");
    }
    let files = match feed_files(dir.path()) {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect();
    assert_eq!(names, vec!["hr-2026-11-24.csv", "hr-2026-11-25.csv"]);
}
