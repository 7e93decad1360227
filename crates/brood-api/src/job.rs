//! Jobs and workflows: `/v1/jobs` and `/v1/workflows`.
//!
//! Every mutating action of a unit (define, start, stop, save, restore,
//! delete, pause, resume, kill, fork, service requests, workflow runs) is a
//! [`Job`]: admitted or refused, queued, run, with its state, progress and
//! result kept. A route that submits one waits for it and answers as it
//! always did; with `?wait=false` it answers 202 with the [`Job`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a job waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobQueue {
    /// Light jobs (start, stop, kill, save, restore, pause, resume): run first.
    High,
    /// Heavy jobs (create, fork, delete, service requests, workflows).
    Normal,
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Admitted, waiting for its turn.
    Queued,
    /// Running.
    Running,
    /// Done: `result` holds what it returned.
    Succeeded,
    /// Ran and failed; what it had done was undone. `error` says why.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Not admitted; `error` says why.
    Refused,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Refused => "refused",
        }
    }
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Its number.
    pub id: u64,
    /// What it does: `partition.define`, `partition.start`, ...,
    /// `template.fork`, `service.request`, `workflow.run`.
    pub kind: String,
    /// What it acts on (a partition, template, service class or workflow).
    pub target: String,
    /// The unit it acts for (none for an administrator's job).
    pub unit: Option<Uuid>,
    /// Who submitted it.
    pub actor: String,
    /// Its queue.
    pub queue: JobQueue,
    /// Its priority within the queue (the partition's; higher runs first).
    pub priority: i64,
    /// Its state.
    pub state: JobState,
    /// Its parameters (secrets shown as `***`).
    #[schema(value_type = Object)]
    pub params: Value,
    /// What it is doing now.
    pub progress: String,
    /// What it returned (the body the route answers with, or a workflow's outputs).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why it failed or was refused.
    pub error: Option<String>,
    /// When it was submitted (RFC 3339).
    pub created_at: String,
    /// When it began to run.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Its log, oldest first (only `GET /v1/jobs/{id}` fills it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<JobEvent>,
}

/// One entry of a job's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobEvent {
    /// Its place in the log, from 0.
    pub seq: u64,
    /// When (RFC 3339).
    pub time: String,
    /// `state` (a state change) or `task` (a workflow task's step).
    pub kind: String,
    /// What happened.
    #[schema(value_type = Object)]
    pub body: Value,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    /// The jobs.
    pub items: Vec<Job>,
    /// Pass as `before` for the next page; none when this is the last.
    pub next: Option<u64>,
}

/// `POST /v1/workflows`: a definition to store (a new version if the name exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowCreateRequest {
    /// The definition, JSON or YAML text.
    pub definition: String,
}

/// A stored workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowInfo {
    /// Its name.
    pub name: String,
    /// Its version (the newest unless one was asked for).
    pub version: u64,
    /// The definition, as JSON.
    #[schema(value_type = Object)]
    pub definition: Value,
    /// Who stored this version.
    pub created_by: String,
    /// When (RFC 3339).
    pub created_at: String,
}

/// The stored workflows, by name (newest versions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowList {
    /// The workflows.
    pub items: Vec<WorkflowInfo>,
}

/// `POST /v1/workflows/{name}/run`: the job's data items.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRunRequest {
    /// Values of the workflow's inputs (`${data.NAME}`); secrets among them
    /// reach the tasks only.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: BTreeMap<String, Value>,
    /// Run this version instead of the newest.
    #[serde(default)]
    pub version: Option<u64>,
}

/// An action bound to a template: the workflow that `POST
/// /v1/templates/{name}/actions/{action}/run` runs, with `data.template` set
/// to the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateAction {
    /// The template's name.
    pub template: String,
    /// The action's name (1-64 of `a-z`, `0-9`, `_`, `.`, `-`).
    pub action: String,
    /// The workflow it runs (its newest version when run).
    pub workflow: String,
    /// Who bound it.
    pub created_by: String,
    /// When (RFC 3339).
    pub created_at: String,
}

/// A template's actions, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateActionList {
    /// The actions.
    pub items: Vec<TemplateAction>,
}

/// `PUT /v1/templates/{name}/actions/{action}`: the workflow to bind (it
/// must declare an input `template`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBindRequest {
    /// The stored workflow's name.
    pub workflow: String,
}
