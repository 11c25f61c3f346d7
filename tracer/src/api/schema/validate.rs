//! A validator for the part of JSON Schema (draft 2020-12) that the generated schemas use.
//! A keyword it does not know is an error, not a pass: a schema that starts using a new keyword
//! makes the tests fail until the validator learns it.
use serde_json::Value;

pub(super) struct Validator<'a> {
    /// The document `$ref`s point into.
    pub root: &'a Value,
}

/// Keywords that only annotate.
const ANNOTATIONS: [&str; 7] =
    ["$schema", "title", "description", "default", "examples", "deprecated", "$comment"];

impl Validator<'_> {
    /// Checks `value` (at JSON pointer `at`) against `schema`, appending what fails to `errors`.
    pub fn check(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let here = if at.is_empty() { "/" } else { at };
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                errors.push(format!("{here}: no value is allowed here"));
                return;
            }
            Value::Object(schema) => schema,
            other => {
                errors.push(format!("{here}: the schema is not an object but {other}"));
                return;
            }
        };
        for (keyword, arg) in schema {
            match keyword.as_str() {
                "$ref" => self.check_ref(arg, value, at, errors),
                "type" => {
                    let allowed: Vec<&str> = match arg {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                        _ => vec![],
                    };
                    if !allowed.iter().any(|t| has_type(value, t)) {
                        errors.push(format!(
                            "{here}: expected {}, found {}",
                            allowed.join(" or "),
                            type_name(value)
                        ));
                    }
                }
                "format" => check_format(arg.as_str().unwrap_or(""), value, here, errors),
                "minimum" => {
                    if let (Some(n), Some(min)) = (value.as_f64(), arg.as_f64())
                        && n < min
                    {
                        errors.push(format!("{here}: {value} is below the minimum {arg}"));
                    }
                }
                "maximum" => {
                    if let (Some(n), Some(max)) = (value.as_f64(), arg.as_f64())
                        && n > max
                    {
                        errors.push(format!("{here}: {value} is above the maximum {arg}"));
                    }
                }
                "const" => {
                    if value != arg {
                        errors.push(format!("{here}: expected {arg}, found {value}"));
                    }
                }
                "enum" => {
                    if !arg.as_array().is_some_and(|options| options.contains(value)) {
                        errors.push(format!("{here}: {value} is not one of {arg}"));
                    }
                }
                "oneOf" | "anyOf" => {
                    let options = arg.as_array().map(Vec::as_slice).unwrap_or_default();
                    let matching = options
                        .iter()
                        .filter(|option| {
                            let mut sub = Vec::new();
                            self.check(option, value, at, &mut sub);
                            sub.is_empty()
                        })
                        .count();
                    let ok = if keyword == "oneOf" { matching == 1 } else { matching >= 1 };
                    if !ok {
                        errors.push(format!(
                            "{here}: {value} matches {matching} of the {keyword} alternatives"
                        ));
                    }
                }
                "properties" | "required" | "additionalProperties" | "propertyNames" => {
                    // Checked together below, once per object.
                }
                "items" | "prefixItems" | "minItems" | "maxItems" => {
                    // Checked together below, once per array.
                }
                k if ANNOTATIONS.contains(&k) => {}
                "$defs" if at.is_empty() => {}
                other => errors.push(format!(
                    "{here}: the schema uses the keyword {other:?}, which this validator does \
                     not implement (teach it: tracer/src/api/schema/validate.rs)"
                )),
            }
        }
        if let Value::Object(fields) = value {
            self.check_object(schema, fields, at, errors);
        }
        if let Value::Array(items) = value {
            self.check_array(schema, items, at, errors);
        }
    }

    fn check_ref(&self, reference: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let target = reference
            .as_str()
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| self.root.pointer(pointer));
        match target {
            Some(schema) => self.check(schema, value, at, errors),
            None => errors.push(format!("{at}: unresolvable $ref {reference}")),
        }
    }

    fn check_object(
        &self,
        schema: &serde_json::Map<String, Value>,
        fields: &serde_json::Map<String, Value>,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let here = if at.is_empty() { "/" } else { at };
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = name.as_str()
                && !fields.contains_key(name)
            {
                errors.push(format!("{here}: the required field {name:?} is missing"));
            }
        }
        for (name, field) in fields {
            let path = format!("{at}/{}", name.replace('~', "~0").replace('/', "~1"));
            if let Some(names) = schema.get("propertyNames") {
                self.check(names, &Value::String(name.clone()), &path, errors);
            }
            match properties.and_then(|p| p.get(name)) {
                Some(sub) => self.check(sub, field, &path, errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{here}: the field {name:?} is not in the schema"));
                    }
                    Some(sub) => self.check(sub, field, &path, errors),
                    None => {}
                },
            }
        }
    }

    fn check_array(
        &self,
        schema: &serde_json::Map<String, Value>,
        items: &[Value],
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let here = if at.is_empty() { "/" } else { at };
        let len = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && len < min
        {
            errors.push(format!("{here}: {len} items, at least {min} expected"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && len > max
        {
            errors.push(format!("{here}: {len} items, at most {max} expected"));
        }
        let prefix = schema.get("prefixItems").and_then(Value::as_array);
        let prefix_len = prefix.map_or(0, Vec::len);
        for (i, item) in items.iter().enumerate() {
            let path = format!("{at}/{i}");
            match prefix.and_then(|p| p.get(i)) {
                Some(sub) => self.check(sub, item, &path, errors),
                None if i >= prefix_len => {
                    if let Some(sub) = schema.get("items") {
                        self.check(sub, item, &path, errors);
                    }
                }
                None => {}
            }
        }
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The number formats schemars gives Rust's number types; an integer outside the type's range
/// fails. Formats only apply to numbers (a `null` of an `Option` passes).
fn check_format(format: &str, value: &Value, here: &str, errors: &mut Vec<String>) {
    // Any JSON number is an f64 (the `type` keyword has checked it is a number).
    if format == "double" {
        return;
    }
    let range: (i128, i128) = match format {
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" => (0, u64::MAX.into()),
        "uint" => (0, usize::MAX as i128),
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" => (i64::MIN.into(), i64::MAX.into()),
        "int" => (isize::MIN as i128, isize::MAX as i128),
        other => {
            errors.push(format!(
                "{here}: the schema uses the format {other:?}, which this validator does not \
                 implement (teach it: tracer/src/api/schema/validate.rs)"
            ));
            return;
        }
    };
    let Value::Number(n) = value else { return };
    let n = n.as_u64().map(i128::from).or_else(|| n.as_i64().map(i128::from));
    if !n.is_some_and(|n| (range.0..=range.1).contains(&n)) {
        errors.push(format!("{here}: {value} is not a {format}"));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(schema: Value, value: Value) -> Vec<String> {
        let root = json!({ "$defs": { "T": schema } });
        let mut errors = Vec::new();
        Validator { root: &root }.check(&json!({"$ref": "#/$defs/T"}), &value, "", &mut errors);
        errors
    }

    #[test]
    fn objects_need_their_required_fields_and_nothing_else() {
        let schema = json!({
            "type": "object",
            "properties": { "a": { "type": "integer", "format": "uint32", "minimum": 0 },
                            "b": { "type": ["string", "null"] } },
            "required": ["a"],
            "additionalProperties": false,
        });
        assert!(errors(schema.clone(), json!({"a": 1, "b": null})).is_empty());
        assert!(errors(schema.clone(), json!({"a": 1})).is_empty());
        let e = errors(schema.clone(), json!({"b": "x"}));
        assert!(e.iter().any(|e| e.contains("\"a\" is missing")), "{e:?}");
        let e = errors(schema.clone(), json!({"a": 1, "c": 2}));
        assert!(e.iter().any(|e| e.contains("\"c\" is not in the schema")), "{e:?}");
        let e = errors(schema.clone(), json!({"a": -1}));
        assert!(e.iter().any(|e| e.starts_with("/a:")), "{e:?}");
        let e = errors(schema.clone(), json!({"a": 5_000_000_000u64}));
        assert!(e.iter().any(|e| e.contains("not a uint32")), "{e:?}");
        let e = errors(schema, json!({"a": "1"}));
        assert!(e.iter().any(|e| e.contains("expected integer, found string")), "{e:?}");
    }

    #[test]
    fn maps_arrays_tuples_and_enums() {
        let map = json!({ "type": "object", "additionalProperties": { "type": "integer" },
                          "propertyNames": { "enum": ["x", "y"] } });
        assert!(errors(map.clone(), json!({"x": 1, "y": 2})).is_empty());
        assert!(!errors(map.clone(), json!({"z": 1})).is_empty());
        assert!(!errors(map, json!({"x": "1"})).is_empty());
        let tuples = json!({ "type": "array", "items": { "type": "array",
            "prefixItems": [{ "type": ["integer", "null"] }, { "type": "integer" }],
            "minItems": 2, "maxItems": 2 } });
        assert!(errors(tuples.clone(), json!([[1, 2], [null, 3]])).is_empty());
        assert!(!errors(tuples.clone(), json!([[1]])).is_empty());
        assert!(!errors(tuples.clone(), json!([[1, 2, 3]])).is_empty());
        assert!(!errors(tuples, json!([["1", 2]])).is_empty());
        let one_of = json!({ "oneOf": [{ "type": "string", "const": "in" },
                                       { "type": "string", "const": "out" }] });
        assert!(errors(one_of.clone(), json!("in")).is_empty());
        assert!(!errors(one_of, json!("sideways")).is_empty());
    }

    #[test]
    fn an_unknown_keyword_or_format_fails_rather_than_passes() {
        let e = errors(json!({ "type": "string", "pattern": "^a" }), json!("a"));
        assert!(e.iter().any(|e| e.contains("\"pattern\"")), "{e:?}");
        let e = errors(json!({ "type": "string", "format": "ipv4" }), json!("1.2.3.4"));
        assert!(e.iter().any(|e| e.contains("\"ipv4\"")), "{e:?}");
    }
}
