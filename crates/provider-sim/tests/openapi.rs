//! docs/agency-api.yaml parses as OpenAPI 3.1 and documents every path and error code the router has.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_provider_sim::server::PATHS;
use serde_json::Value;

fn spec() -> Value {
    let text = include_str!("../../../docs/agency-api.yaml");
    serde_norway::from_str(text).unwrap()
}

#[test]
fn spec_is_openapi_3_1_and_lists_every_served_path() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    for p in PATHS {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    assert_eq!(
        paths.len(),
        PATHS.len(),
        "documented paths the router does not serve"
    );
}

#[test]
fn every_internal_ref_resolves() {
    let spec = spec();
    fn walk(v: &Value, spec: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    let ptr = r.strip_prefix('#').unwrap();
                    assert!(spec.pointer(ptr).is_some(), "dangling {r}");
                }
                m.values().for_each(|x| walk(x, spec));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, spec)),
            _ => {}
        }
    }
    walk(&spec, &spec);
}
