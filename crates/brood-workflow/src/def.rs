//! A workflow definition: what an operator writes (JSON or YAML), parsed
//! with limits and checked before it is stored, so that a stored workflow
//! can always be run: task ids are unique, every binding names a data item
//! the workflow declares or an earlier task, every step has the parameters
//! it needs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bind::{Binding, bindings_in};
use crate::error::DefError;

/// Largest definition accepted, in bytes.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;
/// Most tasks in one workflow.
pub const MAX_TASKS: usize = 256;
/// Longest timeout a task or workflow may ask for (a day).
pub const MAX_TIMEOUT_S: u64 = 86_400;

/// A workflow: inputs and an ordered list of tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Its name: 1-64 of `[a-z0-9_.-]`.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// The whole workflow's timeout: a task with no timeout of its own
    /// still ends when this one does.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// The data items a job of this workflow carries (`${data.NAME}`).
    #[serde(default)]
    pub inputs: BTreeMap<String, Input>,
    /// The tasks, run in order.
    pub tasks: Vec<Task>,
}

fn default_timeout() -> u64 {
    3600
}

/// A data item of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// A secured string: never logged, shown, stored in a job's output or
    /// in the audit log; tasks get its value, everything else `***`.
    #[serde(default)]
    pub secret: bool,
    /// Its value when the job does not set it; no default makes it required.
    #[serde(default)]
    pub default: Option<Value>,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Its id, unique in the workflow; later tasks bind `${ID.OUTPUT}`.
    pub id: String,
    /// What it does.
    pub step: Step,
    /// A disabled task is skipped (and says so in the job's log).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Its own timeout; none means only the workflow's applies.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Return codes that count as success (the first return value counts);
    /// none means success unless the step fails.
    #[serde(default)]
    pub success_codes: Option<Vec<i64>>,
    /// A script error or a timeout does not fail the job (default false).
    #[serde(default)]
    pub continue_on_error: bool,
    /// Running it twice does no harm: after a crash in the middle of it, it
    /// is run again rather than failing the job.
    #[serde(default)]
    pub idempotent: bool,
    /// Its parameters: literals, or bindings (`${data.X}`, `${task.Y}`)
    /// anywhere in a string.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
}

fn yes() -> bool {
    true
}

/// What a task does: a built-in step or a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Define and start a VM (`name`, `template` or `memory_mib`...); undo: delete it.
    Create,
    /// Start a VM (`vm`); undo: stop it.
    Start,
    /// Stop a VM (`vm`).
    Stop,
    /// Delete a VM (`vm`).
    Delete,
    /// Fork children of a template (`template`, `count`); undo: delete them.
    Fork,
    /// Wait until a VM's agent answers (`vm`).
    WaitAgent,
    /// Run a command in a VM through its agent (`vm`, `command`); returns its exit code.
    Exec,
    /// An HTTP request (`method`, `url`, `body`); returns the status code.
    Http,
    /// Request a service domain (`class`, `for`); undo: release it.
    RequestService,
    /// A script run in a VM through its agent (`vm`, `script`); returns its exit code.
    GuestScript,
    /// A script run on the host in a sandbox (`script`); returns its exit code.
    HostScript,
}

impl Step {
    /// Parameters the step cannot run without.
    pub fn required(self) -> &'static [&'static str] {
        match self {
            Step::Create => &["name"],
            Step::Start | Step::Stop | Step::Delete | Step::WaitAgent => &["vm"],
            Step::Fork => &["template"],
            Step::Exec => &["vm", "command"],
            Step::Http => &["url"],
            Step::RequestService => &["class"],
            Step::GuestScript => &["vm", "script"],
            Step::HostScript => &["script"],
        }
    }

    /// Whether an error or timeout of it is a script's (which
    /// `continue_on_error` makes non-fatal).
    pub fn is_script(self) -> bool {
        matches!(self, Step::Exec | Step::GuestScript | Step::HostScript)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Start => "start",
            Step::Stop => "stop",
            Step::Delete => "delete",
            Step::Fork => "fork",
            Step::WaitAgent => "wait_agent",
            Step::Exec => "exec",
            Step::Http => "http",
            Step::RequestService => "request_service",
            Step::GuestScript => "guest_script",
            Step::HostScript => "host_script",
        }
    }
}

fn check_id(what: &str, id: &str) -> Result<(), DefError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
        && id != "data";
    if ok {
        Ok(())
    } else {
        Err(DefError::Invalid(format!(
            "{what} {id:?} is not valid: use 1-64 of a-z, 0-9, '_' and '-' (and not \"data\")"
        )))
    }
}

impl Workflow {
    /// Parses a definition (JSON, or YAML when it does not start with `{`)
    /// and checks it.
    pub fn parse(text: &str) -> Result<Self, DefError> {
        if text.len() > MAX_DEFINITION_BYTES {
            return Err(DefError::Invalid(format!(
                "the definition is {} bytes; at most {MAX_DEFINITION_BYTES} are accepted",
                text.len()
            )));
        }
        let wf: Workflow = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| DefError::Syntax(format!("JSON: {e}")))?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| DefError::Syntax(format!("YAML: {e}")))?
        };
        wf.check()?;
        Ok(wf)
    }

    /// Checks everything a run relies on.
    pub fn check(&self) -> Result<(), DefError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
            });
        if !name_ok {
            return Err(DefError::Invalid(format!(
                "workflow name {:?} is not valid: use 1-64 of a-z, 0-9, '_', '-' and '.'",
                self.name
            )));
        }
        if self.timeout_s == 0 || self.timeout_s > MAX_TIMEOUT_S {
            return Err(DefError::Invalid(format!(
                "timeout_s {} is out of range: 1 to {MAX_TIMEOUT_S}",
                self.timeout_s
            )));
        }
        if self.tasks.is_empty() || self.tasks.len() > MAX_TASKS {
            return Err(DefError::Invalid(format!(
                "a workflow has 1 to {MAX_TASKS} tasks; this one has {}",
                self.tasks.len()
            )));
        }
        for k in self.inputs.keys() {
            check_id("input", k)?;
        }
        let mut earlier: BTreeSet<&str> = BTreeSet::new();
        for t in &self.tasks {
            check_id("task id", &t.id)?;
            if earlier.contains(t.id.as_str()) {
                return Err(DefError::Invalid(format!(
                    "two tasks have the id {:?}",
                    t.id
                )));
            }
            if let Some(s) = t.timeout_s
                && (s == 0 || s > MAX_TIMEOUT_S)
            {
                return Err(DefError::Invalid(format!(
                    "task {}: timeout_s {s} is out of range: 1 to {MAX_TIMEOUT_S}",
                    t.id
                )));
            }
            if t.success_codes.as_ref().is_some_and(Vec::is_empty) {
                return Err(DefError::Invalid(format!(
                    "task {}: success_codes is empty (leave it out to mean \"success unless it fails\")",
                    t.id
                )));
            }
            for p in t.step.required() {
                if !t.params.contains_key(*p) {
                    return Err(DefError::Invalid(format!(
                        "task {}: step {} needs the parameter {p:?}",
                        t.id,
                        t.step.as_str()
                    )));
                }
            }
            for (k, v) in &t.params {
                for b in bindings_in(v)
                    .map_err(|e| DefError::Invalid(format!("task {}: parameter {k}: {e}", t.id)))?
                {
                    match &b {
                        Binding::Data(d) if !self.inputs.contains_key(d) => {
                            return Err(DefError::Invalid(format!(
                                "task {}: parameter {k} binds data item {d:?}, which the workflow does not declare in inputs",
                                t.id
                            )));
                        }
                        Binding::Output { task, .. } if !earlier.contains(task.as_str()) => {
                            return Err(DefError::Invalid(format!(
                                "task {}: parameter {k} binds the output of {task:?}, which is not an earlier task",
                                t.id
                            )));
                        }
                        _ => {}
                    }
                }
            }
            earlier.insert(&t.id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
name: web
inputs:
  size: {default: 256}
  password: {secret: true}
tasks:
  - id: make
    step: create
    params: {name: web-1, memory_mib: "${data.size}"}
  - id: hello
    step: exec
    timeout_s: 30
    success_codes: [0, 3]
    params: {vm: "${make.name}", command: "echo ${data.password} | chpasswd"}
"#;

    #[test]
    fn yaml_and_json_parse_to_the_same_workflow() {
        let y = Workflow::parse(TWO).unwrap();
        let j = Workflow::parse(&serde_json::to_string(&y).unwrap()).unwrap();
        assert_eq!(y, j);
        assert_eq!(y.tasks.len(), 2);
        assert!(y.tasks[0].enabled, "enabled by default");
        assert!(
            !y.tasks[1].continue_on_error,
            "continue_on_error false by default"
        );
        assert_eq!(y.timeout_s, 3600);
        assert!(y.inputs["password"].secret);
    }

    #[test]
    fn bad_definitions_name_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("name: x\ntasks: []", "1 to 256 tasks"),
            (
                "name: X\ntasks: [{id: a, step: stop, params: {vm: v}}]",
                "workflow name",
            ),
            (
                "name: x\ntasks: [{id: a, step: stop}]",
                "needs the parameter \"vm\"",
            ),
            ("name: x\ntasks: [{id: a, step: teleport}]", "YAML"),
            (
                "name: x\ntasks: [{id: a, step: stop, params: {vm: v}}, {id: a, step: stop, params: {vm: v}}]",
                "two tasks",
            ),
            (
                "name: x\ntasks: [{id: a, step: stop, params: {vm: \"${b.name}\"}}, {id: b, step: stop, params: {vm: v}}]",
                "not an earlier task",
            ),
            (
                "name: x\ntasks: [{id: a, step: stop, params: {vm: \"${data.nope}\"}}]",
                "does not declare",
            ),
            (
                "name: x\ntasks: [{id: a, step: stop, success_codes: [], params: {vm: v}}]",
                "success_codes is empty",
            ),
            (
                "name: x\ntasks: [{id: a, step: stop, timeout_s: 0, params: {vm: v}}]",
                "out of range",
            ),
            (
                "name: x\ntasks: [{id: a, step: stop, params: {vm: \"${unclosed\"}}]",
                "not closed",
            ),
            (
                "name: x\nbogus: 1\ntasks: [{id: a, step: stop, params: {vm: v}}]",
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let e = Workflow::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let big = "x".repeat(MAX_DEFINITION_BYTES + 1);
        assert!(
            Workflow::parse(&big)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }
}
