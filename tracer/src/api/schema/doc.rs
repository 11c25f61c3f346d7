//! docs/api.md's generated part: the answers' schemas as tables for people and as one JSON
//! Schema document for programs. The test here fails when the doc differs from what the answer
//! types generate; `TRACER_BLESS=1` rewrites it.
use std::{fmt::Write as _, path::PathBuf};

use serde_json::{Map, Value};

use super::{ANSWERS, Schemas};

const BEGIN: &str = "<!-- BEGIN GENERATED";
const END: &str = "<!-- END GENERATED -->";
const HOW: &str = "TRACER_BLESS=1 cargo test -p tracer --lib api::schema";

/// The generated part, between the markers.
pub fn render(schemas: &Schemas) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| request | printed by | answer |");
    let _ = writeln!(out, "| --- | --- | --- |");
    for answer in &ANSWERS {
        let name = (answer.type_name)();
        let _ = writeln!(out, "| `{}` | `{}` | {} |", answer.request, answer.command, link(&name));
    }
    for (name, def) in schemas.defs() {
        let _ = writeln!(out, "\n### {name}\n");
        if let Some(answer) = ANSWERS.iter().find(|a| (a.type_name)() == *name) {
            let _ = writeln!(
                out,
                "The answer to `{}`, printed by `{}`.\n",
                answer.request, answer.command
            );
        }
        if let Some(text) = description(def) {
            let _ = writeln!(out, "{text}\n");
        }
        if let Some(properties) = def.get("properties").and_then(Value::as_object) {
            let required: Vec<&str> = def
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let _ = writeln!(out, "| field | type | meaning |");
            let _ = writeln!(out, "| --- | --- | --- |");
            for (field, schema) in properties {
                let presence = if required.contains(&field.as_str()) { "" } else { " (optional)" };
                let _ = writeln!(
                    out,
                    "| `{field}`{presence} | {} | {} |",
                    type_text(schema),
                    description(schema).unwrap_or_default()
                );
            }
        } else if let Some(variants) = def.get("oneOf").and_then(Value::as_array) {
            let _ = writeln!(out, "A string, one of:\n");
            let _ = writeln!(out, "| value | meaning |");
            let _ = writeln!(out, "| --- | --- |");
            for variant in variants {
                let _ = writeln!(
                    out,
                    "| `{}` | {} |",
                    variant.get("const").unwrap_or(&Value::Null),
                    description(variant).unwrap_or_default()
                );
            }
        }
    }
    let _ = writeln!(out, "\n### The schema document\n");
    let _ = writeln!(
        out,
        "Every type above, as one JSON Schema (draft 2020-12) document: validate an answer \
         against `{{\"$ref\": \"#/$defs/StatusReport\"}}` (and so on) resolved in it.\n"
    );
    let _ = writeln!(out, "<details><summary>JSON Schema</summary>\n");
    let _ = writeln!(out, "```json");
    let _ =
        writeln!(out, "{}", serde_json::to_string_pretty(schemas.document()).unwrap_or_default());
    let _ = writeln!(out, "```\n\n</details>");
    out
}

fn link(name: &str) -> String {
    format!("[{name}](#{})", name.to_lowercase())
}

/// A schema's description on one line, fit for a table cell.
fn description(schema: &Value) -> Option<String> {
    let text = schema.get("description")?.as_str()?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|"))
}

fn type_text(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return link(reference.rsplit('/').next().unwrap_or(reference));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let mut parts: Vec<String> =
        types.iter().filter(|t| **t != "null").map(|t| one_type(t, schema)).collect();
    if types.contains(&"null") {
        parts.push("`null`".into());
    }
    parts.join(" or ")
}

fn one_type(t: &str, schema: &Value) -> String {
    match t {
        "integer" => match schema.get("format").and_then(Value::as_str) {
            Some(format) => {
                format!("integer ({})", format.replace("uint", "u").replace("int", "i"))
            }
            None => "integer".into(),
        },
        "string" => match schema.get("enum").and_then(Value::as_array) {
            Some(values) => format!("string: {}", values_text(values)),
            None => "string".into(),
        },
        "array" => {
            if let Some(prefix) = schema.get("prefixItems").and_then(Value::as_array) {
                let items: Vec<String> = prefix.iter().map(type_text).collect();
                format!("[{}]", items.join(", "))
            } else {
                match schema.get("items") {
                    Some(items) => format!("array of {}", type_text(items)),
                    None => "array".into(),
                }
            }
        }
        "object" => {
            let values = schema.get("additionalProperties").map(type_text).unwrap_or_default();
            match schema.pointer("/propertyNames/enum").and_then(Value::as_array) {
                Some(keys) => format!("object: {} → {values}", values_text(keys)),
                None => format!("object: string → {values}"),
            }
        }
        other => other.into(),
    }
}

fn values_text(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| format!("`{}`", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md")
}

/// `doc` with its generated part replaced by `generated`; None without both markers.
fn regenerated(doc: &str, generated: &str) -> Option<String> {
    let start = doc.find(BEGIN)?;
    let body = start + doc[start..].find('\n')? + 1;
    let end = body + doc[body..].find(END)?;
    Some(format!("{}{generated}{}", &doc[..body], &doc[end..]))
}

/// Properties (and enum variants) without a description, as `Type.field`.
fn undocumented(defs: &Map<String, Value>) -> Vec<String> {
    let mut missing = Vec::new();
    for (name, def) in defs {
        if description(def).is_none_or(|d| d.is_empty()) {
            missing.push(name.clone());
        }
        let properties = def.get("properties").and_then(Value::as_object).into_iter().flatten();
        for (field, schema) in properties {
            if description(schema).is_none_or(|d| d.is_empty()) {
                missing.push(format!("{name}.{field}"));
            }
        }
        for variant in def.get("oneOf").and_then(Value::as_array).into_iter().flatten() {
            if description(variant).is_none_or(|d| d.is_empty()) {
                missing.push(format!("{name}::{}", variant.get("const").unwrap_or(&Value::Null)));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::{Request, RequestEnvelope};

    #[test]
    fn docs_api_md_shows_the_schemas_the_answer_types_generate() {
        let path = doc_path();
        let doc = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let expected = regenerated(&doc, &render(&Schemas::generate()))
            .unwrap_or_else(|| panic!("{} lacks the markers {BEGIN} ... {END}", path.display()));
        if std::env::var("TRACER_BLESS").as_deref() == Ok("1") {
            if doc != expected {
                std::fs::write(&path, &expected).expect("write docs/api.md");
            }
            return;
        }
        if doc != expected {
            let line = doc
                .lines()
                .zip(expected.lines())
                .position(|(a, b)| a != b)
                .map_or_else(|| doc.lines().count().min(expected.lines().count()) + 1, |i| i + 1);
            panic!(
                "docs/api.md differs from the schemas the answer types generate (first at line \
                 {line}: {:?}, generated {:?}).\nAn answer type changed: regenerate the doc with \
                 `{HOW}`, review the diff (a changed meaning needs an API version bump, see the \
                 doc) and commit it.",
                doc.lines().nth(line - 1).unwrap_or(""),
                expected.lines().nth(line - 1).unwrap_or(""),
            );
        }
    }

    #[test]
    fn every_answer_field_has_a_meaning() {
        let missing = undocumented(Schemas::generate().defs());
        assert!(
            missing.is_empty(),
            "document these (a doc comment on the type, field or variant; it becomes the \
             schema's description and docs/api.md's text): {missing:?}"
        );
    }

    #[test]
    fn every_request_in_the_doc_and_the_answer_list_parses() {
        for answer in &ANSWERS {
            serde_json::from_str::<Request>(answer.request)
                .unwrap_or_else(|e| panic!("{}: {e}", answer.request));
        }
        // The requests the doc's shell examples send: `echo '{"version":...}' | socat ...`.
        let doc = std::fs::read_to_string(doc_path()).expect("docs/api.md");
        let mut seen = 0;
        for (at, _) in doc.match_indices("'{\"version\":") {
            let text = doc[at + 1..].split('\'').next().unwrap_or("");
            serde_json::from_str::<RequestEnvelope>(text)
                .unwrap_or_else(|e| panic!("docs/api.md: {text}: {e}"));
            seen += 1;
        }
        assert!(seen > 0, "docs/api.md shows no request line");
    }

    /// The version the page states, and the envelopes of its examples (but the one showing an
    /// older client refused), are the API's.
    #[test]
    fn the_doc_speaks_the_current_api_version() {
        let doc = std::fs::read_to_string(doc_path()).expect("docs/api.md");
        let version = crate::api::protocol::API_VERSION;
        assert!(
            doc.contains(&format!("The API version is **{version}**")),
            "docs/api.md does not say the API version is {version}"
        );
        let lines: Vec<&str> = doc.lines().collect();
        let current = format!("{{\"version\":{version},");
        let stale: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("{\"version\":") && !l.contains(&current))
            // The example of an older client: its request, answered with the refusal.
            .filter(|(i, _)| {
                !lines.get(i + 1).is_some_and(|next| next.contains("unsupported API version"))
            })
            .map(|(_, l)| *l)
            .collect();
        assert!(stale.is_empty(), "docs/api.md shows envelopes of another version: {stale:#?}");
    }

    #[test]
    fn the_ages_buckets_description_lists_the_real_bounds() {
        let schemas = Schemas::generate();
        let text = schemas
            .definition("AgesReport")
            .and_then(|d| d.pointer("/properties/buckets/description"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let bounds: Vec<String> =
            crate::export::AGE_BOUNDS_NS.iter().map(|b| (b / 1_000_000_000).to_string()).collect();
        assert!(text.contains(&bounds.join(", ")), "{text} should list {bounds:?}");
    }

    #[test]
    fn regenerating_replaces_only_between_the_markers() {
        let doc = format!("intro\n{BEGIN}: how -->\nold\n{END}\noutro\n");
        assert_eq!(
            regenerated(&doc, "new\n").as_deref(),
            Some(format!("intro\n{BEGIN}: how -->\nnew\n{END}\noutro\n").as_str())
        );
        assert_eq!(regenerated("no markers", "new"), None);
    }
}
