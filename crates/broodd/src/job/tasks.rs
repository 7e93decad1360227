//! The built-in steps of workflows, against the host's real operations,
//! each with its undo ([`HostRunner`], a `brood_workflow::Runner`):
//!
//! | step | does | outputs | undo |
//! |---|---|---|---|
//! | create | defines and starts a VM (`name`, `memory_mib`, `vcpus`, `config`) | name, uuid | delete it (force) |
//! | start | starts `vm` | name | kill it |
//! | stop | stops `vm` (`timeout_s`) | name | nothing |
//! | delete | deletes `vm` (force) | name | nothing (a deletion is not undone) |
//! | fork | forks `count` children of `template` | name (the first), names | delete them |
//! | wait_agent | waits for `vm`'s agent (`timeout_ms`) | name | nothing |
//! | exec, guest_script | runs `command` / `script` in `vm` | code, stdout, stderr | nothing |
//! | http | `method` `url` (`http://` only) with `body` | code, body | nothing |
//! | request_service | requests a service of `class` (`pool`, `name`) `for` guests | name | release it |
//! | host_script | runs `script` on the host in a sandbox | code, stdout, stderr | nothing |
//!
//! Every undo is idempotent: what is already gone counts as undone. The
//! steps that change state are idempotent too, keyed by the job and its
//! task, so a step run again (after a crash, or by the harness that runs
//! each twice, `JobConfig::replay_steps`) finds what its first run did:
//! a create finds the VM of that name made since the task first started
//! (its journal's first `started` event) within the job; a fork marks its
//! children with the values `brood.job` and `brood.task` and finds them
//! again; a service request is named for its job and task unless it names
//! itself, and the service of that name made since the task first started
//! is its result (one service, one member taken); a delete of what is gone
//! is done; start and stop see the state they were to reach. Every
//! step acts as the job's caller, through the checked lookups, so a
//! workflow reaches only what its submitter may reach.
//!
//! The host-script sandbox: `unshare` gives it new network (no interface
//! but a down loopback), mount (a fresh tmpfs on /tmp) and PID namespaces
//! (it sees only its own processes; all die with it); `setpriv` runs it as
//! `nobody:nogroup` with no supplementary groups and `no_new_privs`;
//! `prlimit` caps its address space (512 MiB), processes (64), open files
//! (256), file size (64 MiB) and CPU time (the task's timeout); its working
//! directory is a private, fresh directory; its environment is cleared
//! (only `PATH`, `HOME`, `TMPDIR`); it is killed when its task times out. It
//! can still read what `nobody` may read of the host's file system.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use brood_workflow::{Runner, Step, Task, TaskResult};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::host::runstate::EndMode;
use crate::host::{Host, HostError, chain};
use crate::partition::{define, lifecycle};
use crate::tenancy::{Action, Caller, Kind};

/// Most bytes of a command's stdout or stderr, or of an HTTP body, kept as
/// a task's output.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// broodd's steps, for one job.
#[derive(Debug)]
pub struct HostRunner {
    host: Arc<Host>,
    caller: Caller,
    cancelled: Arc<AtomicBool>,
    job: brood_ledger::JobRecord,
}

impl HostRunner {
    /// The steps of `job`, run by `caller`.
    pub fn new(
        host: Arc<Host>,
        caller: Caller,
        cancelled: Arc<AtomicBool>,
        job: brood_ledger::JobRecord,
    ) -> HostRunner {
        HostRunner {
            host,
            caller,
            cancelled,
            job,
        }
    }
}

/// The fork value naming the job that made a child.
pub const JOB_VALUE: &str = "brood.job";
/// The fork value naming the task that made a child.
pub const TASK_VALUE: &str = "brood.task";

fn text(params: &Value, key: &str) -> Result<String, String> {
    match params.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(format!("parameter {key:?} must be a string, not {other}")),
        None => Err(format!("parameter {key:?} is missing")),
    }
}

fn number(params: &Value, key: &str, default: u64) -> Result<u64, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("parameter {key:?} must be a whole number >= 0")),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("parameter {key:?} must be a whole number, not {s:?}")),
        Some(other) => Err(format!("parameter {key:?} must be a number, not {other}")),
    }
}

fn err(e: HostError) -> String {
    chain(&e)
}

/// A UTF-8 view of at most [`MAX_OUTPUT_BYTES`] of `b`.
fn cut(b: &[u8]) -> String {
    String::from_utf8_lossy(b.get(..MAX_OUTPUT_BYTES).unwrap_or(b)).into_owned()
}

fn named(name: &str) -> TaskResult {
    TaskResult {
        code: None,
        outputs: [("name".to_string(), Value::from(name))].into(),
    }
}

impl HostRunner {
    async fn vm(
        &self,
        params: &Value,
        action: Action,
    ) -> Result<brood_ledger::PartitionRecord, String> {
        let name = text(params, "vm")?;
        self.caller
            .partition(&self.host, &name, action)
            .await
            .map(|a| a.into_inner())
            .map_err(err)
    }

    /// When task `task` of this job first started (its journal's first
    /// `started` event), if it has.
    async fn first_started(&self, task: &str) -> Result<Option<std::time::SystemTime>, String> {
        let events = self
            .host
            .jobs
            .job_events(self.job.id)
            .await
            .map_err(|e| chain(&e))?;
        Ok(events
            .iter()
            .find(|e| e.kind == "task" && e.body["event"] == "started" && e.body["task"] == task)
            .and_then(|e| humantime::parse_rfc3339(&e.time).ok()))
    }

    async fn create(&self, task: &Task, params: &Value) -> Result<TaskResult, String> {
        self.caller
            .check(Action::Create, Kind::Partition)
            .map_err(err)?;
        let name = text(params, "name")?;
        // Run again: the VM of that name made since this task first
        // started, within this job, is its result.
        if let Ok(rec) = self
            .caller
            .partition(&self.host, &name, Action::Read)
            .await
            .map(|a| a.into_inner())
            && super::made_by(&self.job, &rec)
            && let Some(since) = self.first_started(&task.id).await?
            && humantime::parse_rfc3339(&rec.created_at).is_ok_and(|made| made >= since)
        {
            let mut r = named(&rec.name);
            r.outputs
                .insert("uuid".into(), Value::from(rec.uuid.to_string()));
            return Ok(r);
        }
        let config = match params.get("config") {
            Some(c) => c.clone(),
            None => json!({
                "memory_mib": number(params, "memory_mib", 256)?,
                "vcpus": number(params, "vcpus", 1)?,
            }),
        };
        let req: brood_api::DefineRequest = serde_json::from_value(json!({
            "name": name,
            "configs": {"default": config},
            "start": params.get("start").and_then(Value::as_bool).unwrap_or(true),
        }))
        .map_err(|e| format!("the VM to create is not valid: {e}"))?;
        crate::tenancy::units::check_networks(&self.host, &self.caller, req.configs.values())
            .await
            .map_err(err)?;
        let rec = define::define(&self.host, self.caller.actor(), self.caller.scope(), req)
            .await
            .map_err(err)?;
        let mut r = named(&rec.name);
        r.outputs
            .insert("uuid".into(), Value::from(rec.uuid.to_string()));
        Ok(r)
    }

    /// Deletes a VM if it is there (an undo): gone already is done.
    async fn delete_if_there(&self, name: &str) -> Result<(), String> {
        match self
            .caller
            .partition(&self.host, name, Action::Delete)
            .await
        {
            Ok(rec) => {
                match lifecycle::delete(&self.host, self.caller.actor(), rec.uuid, true).await {
                    Ok(()) | Err(HostError::NotFound(_)) => Ok(()),
                    Err(e) => Err(err(e)),
                }
            }
            Err(HostError::NotFound(_)) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    async fn exec(
        &self,
        params: &Value,
        command: brood_proto::Command,
    ) -> Result<TaskResult, String> {
        let rec = self.vm(params, Action::Operate).await?;
        let running = self
            .host
            .registry
            .running(rec.uuid)
            .ok_or_else(|| lifecycle::no_vm_hint(&rec))?;
        crate::host::boot_disk::needs_agent(&rec, "exec").map_err(|e| chain(&e))?;
        let ready = Duration::from_millis(number(params, "ready_timeout_ms", 60_000)?.min(600_000));
        running
            .vm
            .wait_ready(ready)
            .await
            .map_err(|e| format!("the agent of {}: {}", rec.name, chain(&e)))?;
        let agent = running.vm.agent().map_err(|e| chain(&e))?;
        let mut r = brood_proto::ExecRequest::shell("");
        r.command = command;
        let out = agent
            .exec(&r)
            .await
            .map_err(|e| format!("exec in {}: {}", rec.name, chain(&e)))?;
        let code = match (out.status.code, out.status.signal) {
            (Some(c), _) => i64::from(c),
            (None, Some(s)) => 128 + i64::from(s),
            (None, None) => -1,
        };
        Ok(TaskResult {
            code: Some(code),
            outputs: [
                ("code".to_string(), Value::from(code)),
                ("stdout".to_string(), Value::from(cut(&out.stdout))),
                ("stderr".to_string(), Value::from(cut(&out.stderr))),
            ]
            .into(),
        })
    }

    /// The children a fork task of this job made already (a task run
    /// again), in their order.
    async fn forked(
        &self,
        template: uuid::Uuid,
        task: &str,
    ) -> Result<Vec<brood_ledger::PartitionRecord>, String> {
        let job = self.job.id.to_string();
        let mut mine: Vec<_> = self
            .host
            .ledger
            .children_of(template)
            .await
            .map_err(|e| chain(&e))?
            .into_iter()
            .filter_map(|c| match &c.lineage {
                Some(brood_ledger::Lineage::Child(l))
                    if l.values.get(JOB_VALUE) == Some(&job)
                        && l.values.get(TASK_VALUE).map(String::as_str) == Some(task) =>
                {
                    Some((l.index, c))
                }
                _ => None,
            })
            .collect();
        mine.sort_by_key(|(i, _)| *i);
        Ok(mine.into_iter().map(|(_, c)| c).collect())
    }

    async fn fork(&self, task: &Task, params: &Value) -> Result<TaskResult, String> {
        let template = text(params, "template")?;
        let tpl = self
            .caller
            .template(&self.host, &template, Action::Operate)
            .await
            .map_err(err)?;
        self.caller
            .check(Action::Create, Kind::Partition)
            .map_err(err)?;
        let req: brood_api::ForkRequest = serde_json::from_value(json!({
            "count": number(params, "count", 1)?,
            "values": {JOB_VALUE: self.job.id.to_string(), TASK_VALUE: task.id},
        }))
        .map_err(|e| format!("the fork is not valid: {e}"))?;
        let count = req.count;
        let before = self.forked(tpl.uuid, &task.id).await?;
        let names: Vec<String> = if before.is_empty() {
            crate::fork::fork(
                &self.host,
                self.caller.actor(),
                self.caller.scope(),
                tpl.uuid,
                req,
            )
            .await
            .map_err(err)?
            .into_iter()
            .map(|c| c.name)
            .collect()
        } else {
            // Run again: what the first run forked is the result.
            before.into_iter().map(|c| c.name).collect()
        };
        if names.len() < usize::try_from(count).unwrap_or(usize::MAX) {
            // A fork of many where some children failed: the step fails
            // whole, and gives back the ones it made.
            for n in &names {
                self.delete_if_there(n).await?;
            }
            return Err(format!(
                "forked only {} of {count} children of {template}: the others failed \
                 (see broodd's log); the ones made were deleted",
                names.len()
            ));
        }
        let names: Vec<Value> = names.into_iter().map(Value::from).collect();
        let first = names.first().cloned().unwrap_or(Value::Null);
        Ok(TaskResult {
            code: None,
            outputs: [
                ("name".to_string(), first),
                ("names".to_string(), Value::Array(names)),
            ]
            .into(),
        })
    }

    async fn request_service(&self, task: &Task, params: &Value) -> Result<TaskResult, String> {
        self.caller
            .check(Action::Configure, Kind::Infra)
            .map_err(err)?;
        let class = text(params, "class")?;
        // Keyed by the job and its task: a request without a name gets one
        // of its own, so that a run again finds what the first run made.
        let name = match params.get("name") {
            Some(_) => text(params, "name")?,
            None => service_key(&class, self.job.id, &task.id),
        };
        // Run again: the service of that name made since this task first
        // started is its result (no second member is taken).
        if let Some(svc) = self
            .host
            .ledger
            .service(&name)
            .await
            .map_err(|e| err(e.into()))?
            && let Some(since) = self.first_started(&task.id).await?
            && humantime::parse_rfc3339(&svc.created_at).is_ok_and(|made| made >= since)
        {
            return Ok(named(&svc.name));
        }
        let mut req = json!({"class": class, "name": name});
        if let Some(f) = params.get("for") {
            req["for"] = match f {
                Value::String(s) => json!([s]),
                other => other.clone(),
            };
        }
        if let Some(p) = params.get("pool") {
            req["pool"] = p.clone();
        }
        let req: brood_api::service::ServiceRequest = serde_json::from_value(req)
            .map_err(|e| format!("the service request is not valid: {e}"))?;
        let svc = crate::pool::request::request(&self.host, req)
            .await
            .map_err(err)?;
        Ok(named(&svc.name))
    }
}

#[async_trait]
impl Runner for HostRunner {
    async fn run(&self, task: &Task, params: &Value) -> Result<TaskResult, String> {
        match task.step {
            Step::Create => self.create(task, params).await,
            Step::Start => {
                let rec = self.vm(params, Action::Operate).await?;
                if rec.run_state == brood_ledger::RunState::Running {
                    // Started already (a step run again): done.
                    return Ok(named(&rec.name));
                }
                lifecycle::start(&self.host, self.caller.actor(), rec.uuid)
                    .await
                    .map_err(err)?;
                Ok(named(&rec.name))
            }
            Step::Stop => {
                let rec = self.vm(params, Action::Operate).await?;
                if rec.run_state == brood_ledger::RunState::Stopped {
                    // Stopped already (a step run again): done.
                    return Ok(named(&rec.name));
                }
                let t = Duration::from_secs(number(params, "timeout_s", 30)?.min(3600));
                lifecycle::stop(
                    &self.host,
                    self.caller.actor(),
                    rec.uuid,
                    EndMode::Graceful(t),
                )
                .await
                .map_err(err)?;
                Ok(named(&rec.name))
            }
            Step::Delete => {
                let name = text(params, "vm")?;
                let rec = match self
                    .caller
                    .partition(&self.host, &name, Action::Delete)
                    .await
                {
                    Ok(rec) => rec,
                    // Deleted already (a step run again): done.
                    Err(HostError::NotFound(_)) => return Ok(named(&name)),
                    Err(e) => return Err(err(e)),
                };
                match lifecycle::delete(&self.host, self.caller.actor(), rec.uuid, true).await {
                    Ok(()) | Err(HostError::NotFound(_)) => Ok(named(&rec.name)),
                    Err(e) => Err(err(e)),
                }
            }
            Step::Fork => self.fork(task, params).await,
            Step::WaitAgent => {
                let rec = self.vm(params, Action::Operate).await?;
                let running = self
                    .host
                    .registry
                    .running(rec.uuid)
                    .ok_or_else(|| lifecycle::no_vm_hint(&rec))?;
                crate::host::boot_disk::needs_agent(&rec, "waiting for the agent")
                    .map_err(|e| chain(&e))?;
                let t = Duration::from_millis(number(params, "timeout_ms", 60_000)?.min(3_600_000));
                running
                    .vm
                    .wait_ready(t)
                    .await
                    .map_err(|e| format!("the agent of {}: {}", rec.name, chain(&e)))?;
                Ok(named(&rec.name))
            }
            Step::Exec => {
                let c = text(params, "command")?;
                self.exec(params, brood_proto::Command::Shell(c)).await
            }
            Step::GuestScript => {
                let s = text(params, "script")?;
                self.exec(
                    params,
                    brood_proto::Command::Argv(vec!["/bin/sh".into(), "-c".into(), s]),
                )
                .await
            }
            Step::Http => http(params).await,
            Step::RequestService => self.request_service(task, params).await,
            Step::HostScript => {
                self.caller
                    .check(Action::Configure, Kind::Infra)
                    .map_err(err)?;
                let limit = task.timeout_s.unwrap_or(3600);
                host_script(&self.host, &text(params, "script")?, limit).await
            }
        }
    }

    async fn undo(&self, task: &Task, params: &Value, done: &TaskResult) -> Result<(), String> {
        match task.step {
            Step::Create => {
                // A create cut off half-way has no outputs: its name is in
                // its parameters.
                let name = match done.outputs.get("name").and_then(Value::as_str) {
                    Some(n) => n.to_owned(),
                    None => text(params, "name")?,
                };
                self.delete_if_there(&name).await
            }
            Step::Fork => {
                let mut names: Vec<String> = done
                    .outputs
                    .get("names")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                // A fork cut off half-way has no outputs: its children
                // carry the job and the task in their values.
                if let Ok(t) = text(params, "template") {
                    match self.caller.template(&self.host, &t, Action::Operate).await {
                        Ok(tpl) => {
                            for c in self.forked(tpl.uuid, &task.id).await? {
                                if !names.contains(&c.name) {
                                    names.push(c.name);
                                }
                            }
                        }
                        Err(HostError::NotFound(_)) => {}
                        Err(e) => return Err(err(e)),
                    }
                }
                for n in names {
                    self.delete_if_there(&n).await?;
                }
                Ok(())
            }
            Step::Start => {
                let Ok(name) = text(params, "vm") else {
                    return Ok(());
                };
                match self
                    .caller
                    .partition(&self.host, &name, Action::Operate)
                    .await
                {
                    Ok(rec) if rec.run_state.is_active() => {
                        match lifecycle::stop(
                            &self.host,
                            self.caller.actor(),
                            rec.uuid,
                            EndMode::Kill,
                        )
                        .await
                        {
                            Ok(_) | Err(HostError::NotFound(_)) => Ok(()),
                            Err(e) => Err(err(e)),
                        }
                    }
                    Ok(_) | Err(HostError::NotFound(_)) => Ok(()),
                    Err(e) => Err(err(e)),
                }
            }
            Step::RequestService => match done.outputs.get("name").and_then(Value::as_str) {
                Some(n) => match crate::pool::request::release(&self.host, n).await {
                    Ok(()) | Err(HostError::NotFound(_)) => Ok(()),
                    Err(e) => Err(err(e)),
                },
                // Cut off before it answered: nothing is known to release.
                None => Ok(()),
            },
            Step::Stop
            | Step::Delete
            | Step::WaitAgent
            | Step::Exec
            | Step::GuestScript
            | Step::Http
            | Step::HostScript => Ok(()),
        }
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// The name of the service a `request_service` task without one asks for:
/// its class, job and task (1-48 of `[a-z0-9-]`, starting with a letter).
fn service_key(class: &str, job: u64, task: &str) -> String {
    let raw = format!("{class}-j{job}-{task}").to_ascii_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.replace_range(..1, "s");
    }
    name
}

/// An HTTP/1.1 request to an `http://` URL; the status is the task's code.
async fn http(params: &Value) -> Result<TaskResult, String> {
    use http_body_util::{BodyExt, Full};
    let url = text(params, "url")?;
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("url {url:?}: only http:// URLs are supported"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("url {url:?} has no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let method = text(params, "method").unwrap_or_else(|_| "GET".into());
    let method: hyper::Method = method
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("method {method:?} is not an HTTP method"))?;
    let body = match params.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(v) => v.to_string().into_bytes(),
    };
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP to {host}:{port}: {e}"))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Full::new(hyper::body::Bytes::from(body)))
        .map_err(|e| format!("the HTTP request is not valid: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP {url}: {e}"))?;
    let status = i64::from(resp.status().as_u16());
    let mut kept = Vec::new();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("read the answer of {url}: {e}"))?;
        if let Some(d) = frame.data_ref() {
            let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
            kept.extend_from_slice(d.get(..room.min(d.len())).unwrap_or_default());
            if room == 0 {
                break;
            }
        }
    }
    Ok(TaskResult {
        code: Some(status),
        outputs: [
            ("code".to_string(), Value::from(status)),
            ("body".to_string(), Value::from(cut(&kept))),
        ]
        .into(),
    })
}

/// Reads at most [`MAX_OUTPUT_BYTES`] of a pipe, then drains the rest.
async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(buf.get(..n.min(room)).unwrap_or_default());
            }
        }
    }
}

/// Runs `script` in the sandbox the module header describes.
async fn host_script(host: &Host, script: &str, cpu_s: u64) -> Result<TaskResult, String> {
    use std::os::unix::fs::PermissionsExt;
    let base = host.paths.data.join("sandbox");
    std::fs::create_dir_all(&base).map_err(|e| format!("make {}: {e}", base.display()))?;
    let dir = base.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir(&dir).map_err(|e| format!("make {}: {e}", dir.display()))?;
    let cleanup = Cleanup(dir.clone());
    // nobody must be able to write its own working directory.
    nix::unistd::chown(
        &dir,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .map_err(|e| format!("hand {} to nobody: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("restrict {}: {e}", dir.display()))?;
    // Inside the new mount namespace: a private /tmp, then drop to nobody.
    let inner = "mount -t tmpfs -o size=64m,mode=1777 tmpfs /tmp && exec setpriv \
                 --reuid=65534 --regid=65534 --clear-groups --no-new-privs -- \
                 /bin/sh -c \"$0\"";
    let mut cmd = tokio::process::Command::new("prlimit");
    cmd.args([
        "--as=536870912",
        "--nproc=64",
        "--nofile=256",
        "--fsize=67108864",
        &format!("--cpu={}", cpu_s.max(1)),
        "--",
        "unshare",
        "--net",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--",
        "/bin/sh",
        "-c",
        inner,
        script,
    ])
    .current_dir(&dir)
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("HOME", &dir)
    .env("TMPDIR", "/tmp")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("start the host-script sandbox (prlimit, unshare): {e}"))?;
    let out = child.stdout.take();
    let errs = child.stderr.take();
    let (stdout, stderr) = tokio::join!(
        async {
            match out {
                Some(o) => read_capped(o).await,
                None => Vec::new(),
            }
        },
        async {
            match errs {
                Some(e) => read_capped(e).await,
                None => Vec::new(),
            }
        }
    );
    let status = child
        .wait()
        .await
        .map_err(|e| format!("wait for the host script: {e}"))?;
    drop(cleanup);
    let code = status.code().map_or_else(
        || {
            use std::os::unix::process::ExitStatusExt;
            128 + i64::from(status.signal().unwrap_or(0))
        },
        i64::from,
    );
    Ok(TaskResult {
        code: Some(code),
        outputs: [
            ("code".to_string(), Value::from(code)),
            ("stdout".to_string(), Value::from(cut(&stdout))),
            ("stderr".to_string(), Value::from(cut(&stderr))),
        ]
        .into(),
    })
}

/// Removes a sandbox's directory when the script ends or is cut off.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::service_key;

    #[test]
    fn a_service_request_without_a_name_is_named_for_its_job_and_task() {
        assert_eq!(service_key("http", 7, "web"), "http-j7-web");
        assert_eq!(service_key("http", 7, "Web_1"), "http-j7-web-1");
        // Always a valid service name: starts with a letter, at most 48.
        assert_eq!(service_key("", 7, "x"), "sj7-x");
        let long = service_key("http", u64::MAX, &"t".repeat(100));
        assert_eq!(long.len(), 48);
        assert!(long.starts_with("http-j18446744073709551615-t"));
    }
}
