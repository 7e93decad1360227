//! `brood job`: the jobs every VM action became (`/v1/jobs`): list, show,
//! wait for and cancel them.

use anyhow::Result;
use brood_api::{Job, JobList, JobState};
use clap::Subcommand;

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, key_values, or_dash, print_json, wire_name};

/// Commands on jobs.
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// List jobs, newest first (your unit's; all for an administrator).
    #[command(after_help = "Examples:
  brood job list
  brood job list --state running
  brood job list --target web -o json")]
    List {
        /// Only jobs in this state (queued, running, succeeded, failed, cancelled, refused).
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        /// Only jobs acting on this partition, template or workflow.
        #[arg(long)]
        target: Option<String>,
        /// Show at most N jobs.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
    },
    /// Show a job and its log.
    #[command(after_help = "Examples:\n  brood job show 12\n  brood job show 12 -o json")]
    Show {
        /// Job number.
        id: u64,
    },
    /// Wait until a job ends; exits 0 if it succeeded, 1 otherwise.
    #[command(after_help = "Examples:\n  brood job wait 12\n  brood job wait 12 --timeout 600")]
    Wait {
        /// Job number.
        id: u64,
        /// Seconds to wait at most (0-3600).
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        timeout: u64,
    },
    /// Cancel a job: a queued one at once, a running workflow before its next
    /// task, a running create, start, restore or fork at its next safe point
    /// (each undoes what it did).
    #[command(after_help = "Examples:\n  brood job cancel 12")]
    Cancel {
        /// Job number.
        id: u64,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    crate::render::parse_wire(s, "queued, running, succeeded, failed, cancelled, refused")
}

/// One line about a job.
pub fn summary(j: &Job) -> String {
    let mut s = format!("job {} {} {}: {}", j.id, j.kind, j.target, j.state.as_str());
    if let Some(e) = &j.error {
        s.push_str(&format!(" ({e})"));
    }
    s
}

fn show_text(j: &Job) -> String {
    let mut out = key_values(&[
        ("id", j.id.to_string()),
        ("kind", j.kind.clone()),
        ("target", j.target.clone()),
        ("state", j.state.as_str().to_string()),
        ("queue", wire_name(&j.queue)),
        ("priority", j.priority.to_string()),
        ("actor", j.actor.clone()),
        ("progress", j.progress.clone()),
        ("error", or_dash(j.error.clone())),
        ("created", j.created_at.clone()),
        ("started", or_dash(j.started_at.clone())),
        ("finished", or_dash(j.finished_at.clone())),
    ]);
    if !j.events.is_empty() {
        let mut t = Table::new(&["SEQ", "TIME", "KIND", "WHAT"]).right(&[0]);
        for e in &j.events {
            t.row(vec![
                e.seq.to_string(),
                e.time.clone(),
                e.kind.clone(),
                e.body.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// Runs a `brood job` command; returns the exit code.
pub async fn run(cmd: JobCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        JobCmd::List {
            state,
            target,
            limit,
        } => {
            let mut path = format!("/v1/jobs?limit={}", limit.clamp(1, brood_api::MAX_PAGE));
            if let Some(s) = state {
                path.push_str(&format!("&state={}", s.as_str()));
            }
            if let Some(t) = target {
                path.push_str(&format!("&target={}", encode(&t)));
            }
            if let Some(u) = client.unit() {
                path.push_str(&format!("&unit={}", encode(u)));
            }
            let l: JobList = client.get(&path).await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t = Table::new(&["ID", "KIND", "TARGET", "STATE", "QUEUE", "CREATED"])
                        .right(&[0]);
                    for j in &l.items {
                        t.row(vec![
                            j.id.to_string(),
                            j.kind.clone(),
                            j.target.clone(),
                            j.state.as_str().to_string(),
                            wire_name(&j.queue),
                            j.created_at.clone(),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
            Ok(0)
        }
        JobCmd::Show { id } => {
            let j: Job = client.get(&format!("/v1/jobs/{id}")).await?;
            print_job(&j, out, true)?;
            Ok(0)
        }
        JobCmd::Wait { id, timeout } => {
            if timeout > 3600 {
                anyhow::bail!("--timeout {timeout} is over 3600 seconds: wait again after it");
            }
            let j = wait(client, id, timeout).await?;
            print_job(&j, out, false)?;
            Ok(match j.state {
                JobState::Succeeded => 0,
                JobState::Queued | JobState::Running => {
                    eprintln!(
                        "brood: job {id} is still {}: `brood job wait {id}` again",
                        j.state.as_str()
                    );
                    2
                }
                _ => 1,
            })
        }
        JobCmd::Cancel { id } => {
            let j: Job = client
                .post(&format!("/v1/jobs/{id}/cancel"), &serde_json::json!({}))
                .await?;
            print_job(&j, out, false)?;
            Ok(0)
        }
    }
}

/// Waits for a job (`GET /v1/jobs/{id}/wait`).
pub async fn wait(client: &Client, id: u64, timeout: u64) -> Result<Job> {
    let deadline = std::time::Duration::from_secs(timeout) + crate::client::REQUEST_TIMEOUT;
    Ok(client
        .get_within(
            &format!("/v1/jobs/{id}/wait?timeout_s={timeout}"),
            Some(deadline),
        )
        .await?)
}

/// Prints a job: JSON, its whole text, or one line.
pub fn print_job(j: &Job, out: Output, full: bool) -> Result<()> {
    match out {
        Output::Json => print_json(j)?,
        Output::Text if full => print!("{}", show_text(j)),
        Output::Text => println!("{}", summary(j)),
    }
    Ok(())
}

/// `--no-wait` for a command whose request broodd runs as a job.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct NoWait {
    /// Answer at once with the job instead of waiting for it (`brood job wait ID`).
    #[arg(long)]
    pub no_wait: bool,
}

/// How a command without waiting sends its request: `?wait=false` added to
/// `path`, and the job broodd answers (202) printed as `--no-wait` prints it.
pub enum Submit<'a, B: serde::Serialize> {
    /// `POST path` with a body.
    Post(&'a str, &'a B),
    /// `PUT path` with a body.
    Put(&'a str, &'a B),
    /// `PATCH path` with a body.
    Patch(&'a str, &'a B),
    /// `DELETE path`.
    Delete(&'a str),
}

impl<B: serde::Serialize> Submit<'_, B> {
    /// Sends it, with `wait=false` added to its path when `no_wait`, and
    /// decodes the answer.
    pub async fn send<T: serde::de::DeserializeOwned>(
        &self,
        client: &Client,
        no_wait: bool,
    ) -> Result<T, crate::client::ClientError> {
        let q = |path: &str| {
            if !no_wait {
                return path.to_string();
            }
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}wait=false")
        };
        match self {
            Submit::Post(path, body) => client.post(&q(path), *body).await,
            Submit::Put(path, body) => client.put(&q(path), *body).await,
            Submit::Patch(path, body) => client.patch(&q(path), *body).await,
            Submit::Delete(path) => client.delete_json(&q(path)).await,
        }
    }
}

/// Sends `req` with `wait=false` and prints the job it became.
pub async fn submit<B: serde::Serialize>(
    client: &Client,
    req: Submit<'_, B>,
    out: Output,
) -> Result<i32> {
    let j: Job = req.send(client, true).await?;
    queued(&j, out)
}

/// What `--no-wait` prints: the job, and how to follow it.
pub fn queued(j: &Job, out: Output) -> Result<i32> {
    match out {
        Output::Json => print_json(j)?,
        Output::Text => println!("{}; `brood job wait {}` waits for it", summary(j), j.id),
    }
    Ok(0)
}
