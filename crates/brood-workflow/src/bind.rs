//! Bindings and secrets. A parameter is a literal, or holds `${data.NAME}`
//! (a data item of the job) or `${TASK.OUTPUT}` (an output of an earlier
//! task) anywhere in a string. A string that is one binding and nothing
//! else takes the bound value with its type (a number stays a number);
//! inside a longer string the value is written in as text.
//!
//! Secrets are data items marked `secret`: tasks get their values, and
//! everything that leaves the executor (its log, a job's outputs, errors)
//! passes through [`Secrets::redact`], which writes `***` in their place.

use std::collections::BTreeMap;

use serde_json::Value;

/// Longest binding expression, `${...}` included.
const MAX_BINDING: usize = 200;

/// What a `${...}` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// `${data.NAME}`.
    Data(String),
    /// `${TASK.OUTPUT}`.
    Output {
        /// The earlier task's id.
        task: String,
        /// Its output.
        key: String,
    },
}

fn parse_one(expr: &str) -> Result<Binding, String> {
    let Some((a, b)) = expr.split_once('.') else {
        return Err(format!(
            "${{{expr}}} is not a binding: write ${{data.NAME}} or ${{TASK.OUTPUT}}"
        ));
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
    };
    if !ok(a) || !ok(b) {
        return Err(format!(
            "${{{expr}}} is not a binding: names are letters, digits, '_' and '-'"
        ));
    }
    Ok(if a == "data" {
        Binding::Data(b.to_string())
    } else {
        Binding::Output {
            task: a.to_string(),
            key: b.to_string(),
        }
    })
}

/// The pieces of a string: text and bindings, in order.
enum Piece<'a> {
    Text(&'a str),
    Bind(Binding),
}

fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("a binding in {s:?} is not closed with '}}'"));
        };
        if end + 3 > MAX_BINDING {
            return Err(format!(
                "a binding in {s:?} is longer than {MAX_BINDING} characters"
            ));
        }
        out.push(Piece::Bind(parse_one(&after[..end])?));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Every binding in a parameter value (strings inside arrays and objects too).
pub fn bindings_in(v: &Value) -> Result<Vec<Binding>, String> {
    let mut out = Vec::new();
    walk(v, &mut |s| {
        for p in pieces(s)? {
            if let Piece::Bind(b) = p {
                out.push(b);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

fn walk(v: &Value, f: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), String> {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().try_for_each(|x| walk(x, f)),
        Value::Object(o) => o.values().try_for_each(|x| walk(x, f)),
        _ => Ok(()),
    }
}

/// What bindings are resolved against.
#[derive(Debug, Default, Clone)]
pub struct Scope {
    /// The job's data items.
    pub data: BTreeMap<String, Value>,
    /// Each finished task's outputs.
    pub outputs: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Scope {
    fn lookup(&self, b: &Binding) -> Result<&Value, String> {
        match b {
            Binding::Data(d) => self
                .data
                .get(d)
                .ok_or_else(|| format!("the job has no data item {d:?}")),
            Binding::Output { task, key } => {
                let outs = self
                    .outputs
                    .get(task)
                    .ok_or_else(|| format!("task {task} has no outputs (skipped, or not run)"))?;
                outs.get(key).ok_or_else(|| {
                    format!(
                        "task {task} has no output {key:?} (it has: {})",
                        outs.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
            }
        }
    }

    /// A parameter with its bindings replaced by their values.
    pub fn resolve(&self, v: &Value) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => {
                let ps = pieces(s)?;
                if let [Piece::Bind(b)] = ps.as_slice() {
                    return self.lookup(b).cloned();
                }
                let mut out = String::new();
                for p in ps {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Bind(b) => match self.lookup(&b)? {
                            Value::String(x) => out.push_str(x),
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(out)
            }
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.resolve(x))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), self.resolve(x)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }
}

/// The values of a job's secret data items.
#[derive(Default, Clone)]
pub struct Secrets(Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} hidden)", self.0.len())
    }
}

impl Secrets {
    /// Remembers a secret value (strings shorter than 3 bytes are kept too:
    /// a short password is still a password).
    pub fn add(&mut self, v: &Value) {
        let s = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !s.is_empty() && !self.0.contains(&s) {
            self.0.push(s);
            // Longest first, so a secret inside another is not half-redacted.
            self.0.sort_by_key(|x| std::cmp::Reverse(x.len()));
        }
    }

    /// `s` with every secret replaced by `***`.
    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for x in &self.0 {
            out = out.replace(x.as_str(), "***");
        }
        out
    }

    /// `v` with every secret in its strings replaced by `***`.
    pub fn redact_value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.redact_value(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (k.clone(), self.redact_value(x)))
                    .collect(),
            ),
            Value::Number(n) if self.0.iter().any(|x| *x == n.to_string()) => {
                Value::String("***".into())
            }
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scope() -> Scope {
        let mut s = Scope::default();
        s.data.insert("size".into(), json!(256));
        s.data.insert("who".into(), json!("web"));
        s.outputs.insert(
            "make".into(),
            BTreeMap::from([("name".into(), json!("web-1"))]),
        );
        s
    }

    #[test]
    fn a_lone_binding_keeps_its_type_and_text_interpolates() {
        let s = scope();
        assert_eq!(s.resolve(&json!("${data.size}")).unwrap(), json!(256));
        assert_eq!(
            s.resolve(&json!("vm ${make.name} of ${data.size} MiB"))
                .unwrap(),
            json!("vm web-1 of 256 MiB")
        );
        assert_eq!(
            s.resolve(&json!({"a": ["${data.who}", 3]})).unwrap(),
            json!({"a": ["web", 3]})
        );
        let e = s.resolve(&json!("${make.pid}")).unwrap_err();
        assert!(e.contains("no output \"pid\"") && e.contains("name"), "{e}");
        assert!(
            s.resolve(&json!("${gone.x}"))
                .unwrap_err()
                .contains("no outputs")
        );
    }

    #[test]
    fn bindings_are_found_anywhere_and_bad_ones_refused() {
        let b = bindings_in(&json!({"x": ["${data.a} and ${t1.out}"]})).unwrap();
        assert_eq!(
            b,
            [
                Binding::Data("a".into()),
                Binding::Output {
                    task: "t1".into(),
                    key: "out".into()
                }
            ]
        );
        for bad in ["${nodot}", "${a.b c}", "${x", "${.y}"] {
            assert!(bindings_in(&json!(bad)).is_err(), "{bad}");
        }
        assert!(
            bindings_in(&json!("no bindings $ here {}"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let mut s = Secrets::default();
        s.add(&json!("hunter2"));
        s.add(&json!("hunter"));
        assert_eq!(s.redact("pw=hunter2, hint=hunter"), "pw=***, hint=***");
        assert_eq!(
            s.redact_value(&json!({"out": ["say hunter2"], "n": 1})),
            json!({"out": ["say ***"], "n": 1})
        );
        assert_eq!(format!("{s:?}"), "Secrets(2 hidden)");
    }
}
