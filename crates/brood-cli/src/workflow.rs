//! `brood workflow`: workflow definitions stored and versioned by broodd
//! (`/v1/workflows`), runs of them as jobs, and actions: workflows bound to
//! templates (`/v1/templates/{name}/actions`), run with `data.template` set.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use brood_api::job::{ActionBindRequest, TemplateAction, TemplateActionList};
use brood_api::{Job, WorkflowCreateRequest, WorkflowInfo, WorkflowList, WorkflowRunRequest};
use clap::Subcommand;
use serde_json::Value;

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, print_json};

/// Largest definition file read.
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// Commands on workflows.
#[derive(Debug, Subcommand)]
pub enum WorkflowCmd {
    /// Store a workflow from a JSON or YAML file (a new version if its name exists).
    #[command(after_help = "Examples:\n  brood workflow create --file web.yaml")]
    Create {
        /// The definition (JSON or YAML).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// List the stored workflows.
    List,
    /// Show a workflow's definition.
    #[command(
        after_help = "Examples:\n  brood workflow show web\n  brood workflow show web --version 1 -o json"
    )]
    Show {
        /// Workflow name.
        name: String,
        /// This version instead of the newest.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Delete every version of a workflow.
    Delete {
        /// Workflow name.
        name: String,
    },
    /// Run a workflow as a job and wait for it (unless --no-wait).
    #[command(after_help = "Examples:
  brood workflow run web --set name=web-1 --set size=512
  brood workflow run web --set name=web-2 --no-wait

A value that parses as JSON (a number, true, [..], {..}) is passed as that;
anything else as a string.")]
    Run {
        /// Workflow name.
        name: String,
        /// A data item, KEY=VALUE (repeat).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run this version instead of the newest.
        #[arg(long)]
        version: Option<u64>,
        /// Answer at once with the job instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Bind a workflow to a template as an action (replacing one of that name).
    #[command(after_help = "Examples:
  brood workflow bind mkweb --template web --action create-web-server

The workflow must declare an input `template`: running the action sets it
to the template's name (use ${data.template} in its tasks).")]
    Bind {
        /// Workflow name.
        workflow: String,
        /// Template name.
        #[arg(long)]
        template: String,
        /// Action name (1-64 of a-z, 0-9, '_', '.', '-').
        #[arg(long)]
        action: String,
    },
    /// Remove an action from a template (the workflow stays).
    #[command(
        after_help = "Examples:\n  brood workflow unbind --template web --action create-web-server"
    )]
    Unbind {
        /// Template name.
        #[arg(long)]
        template: String,
        /// Action name.
        #[arg(long)]
        action: String,
    },
    /// List a template's actions.
    #[command(after_help = "Examples:\n  brood workflow actions --template web")]
    Actions {
        /// Template name.
        #[arg(long)]
        template: String,
    },
    /// Run a template's action: its workflow as a job, with data.template set.
    #[command(after_help = "Examples:
  brood workflow run-action web create-web-server --set greeting=hi
  brood workflow run-action web create-web-server --no-wait")]
    RunAction {
        /// Template name.
        template: String,
        /// Action name.
        action: String,
        /// A data item, KEY=VALUE (repeat); `template` is set by the action.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run this version of its workflow instead of the newest.
        #[arg(long)]
        version: Option<u64>,
        /// Answer at once with the job instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `brood template action`: a template's actions, seen from the template.
#[derive(Debug, Subcommand)]
pub enum ActionCmd {
    /// Run one of the template's actions (as `brood workflow run-action`).
    #[command(after_help = "Examples:
  brood template action run web create-web-server --set greeting=hi")]
    Run {
        /// Template name.
        template: String,
        /// Action name.
        action: String,
        /// A data item, KEY=VALUE (repeat); `template` is set by the action.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run this version of its workflow instead of the newest.
        #[arg(long)]
        version: Option<u64>,
        /// Answer at once with the job instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the template's actions (as `brood workflow actions`).
    #[command(after_help = "Examples:\n  brood template action list web")]
    List {
        /// Template name.
        template: String,
    },
}

/// Runs a `brood template action` command; returns the exit code.
pub async fn run_action(cmd: ActionCmd, client: &Client, out: Output) -> Result<i32> {
    let cmd = match cmd {
        ActionCmd::Run {
            template,
            action,
            set,
            version,
            no_wait,
        } => WorkflowCmd::RunAction {
            template,
            action,
            set,
            version,
            no_wait,
        },
        ActionCmd::List { template } => WorkflowCmd::Actions { template },
    };
    run(cmd, client, out).await
}

/// Posts a run (of a workflow or an action) at `path` and prints its outcome.
async fn run_at(
    client: &Client,
    out: Output,
    path: &str,
    what: &str,
    req: &WorkflowRunRequest,
    no_wait: bool,
) -> Result<i32> {
    let path = format!("{path}?wait={}", !no_wait);
    if no_wait {
        let j: Job = client.post(&path, req).await?;
        return crate::job::queued(&j, out);
    }
    // A workflow may run for as long as its own timeout.
    let v: Value = client.post_within(&path, req, None).await?;
    match out {
        Output::Json => print_json(&v)?,
        Output::Text => {
            println!("{what} succeeded");
            if let Some(o) = v["outputs"].as_object() {
                for (task, outs) in o {
                    println!("  {task}: {outs}");
                }
            }
        }
    }
    Ok(0)
}

fn actions_path(template: &str, action: &str) -> String {
    format!(
        "/v1/templates/{}/actions/{}",
        encode(template),
        encode(action)
    )
}

fn data(set: &[String]) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for kv in set {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--set {kv:?} is not KEY=VALUE: write --set name=web-1");
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        if out.insert(k.to_owned(), value).is_some() {
            bail!("--set {k} is given twice: give each data item once");
        }
    }
    Ok(out)
}

/// Runs a `brood workflow` command; returns the exit code.
pub async fn run(cmd: WorkflowCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        WorkflowCmd::Create { file } => {
            let len = tokio::fs::metadata(&file)
                .await
                .with_context(|| format!("read {}", file.display()))?
                .len();
            if len > MAX_FILE_BYTES {
                bail!(
                    "{} is {len} bytes; a definition is at most {MAX_FILE_BYTES}",
                    file.display()
                );
            }
            let definition = tokio::fs::read_to_string(&file)
                .await
                .with_context(|| format!("read {}", file.display()))?;
            let w: WorkflowInfo = client
                .post("/v1/workflows", &WorkflowCreateRequest { definition })
                .await?;
            match out {
                Output::Json => print_json(&w)?,
                Output::Text => println!("workflow {} version {}", w.name, w.version),
            }
            Ok(0)
        }
        WorkflowCmd::List => {
            let l: WorkflowList = client.get("/v1/workflows").await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t =
                        Table::new(&["NAME", "VERSION", "TASKS", "BY", "CREATED"]).right(&[1, 2]);
                    for w in &l.items {
                        t.row(vec![
                            w.name.clone(),
                            w.version.to_string(),
                            w.definition["tasks"]
                                .as_array()
                                .map_or(0, Vec::len)
                                .to_string(),
                            w.created_by.clone(),
                            w.created_at.clone(),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
            Ok(0)
        }
        WorkflowCmd::Show { name, version } => {
            let mut path = format!("/v1/workflows/{}", encode(&name));
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let w: WorkflowInfo = client.get(&path).await?;
            match out {
                Output::Json => print_json(&w)?,
                Output::Text => {
                    println!(
                        "# {} version {} by {} at {}",
                        w.name, w.version, w.created_by, w.created_at
                    );
                    println!("{}", serde_json::to_string_pretty(&w.definition)?);
                }
            }
            Ok(0)
        }
        WorkflowCmd::Delete { name } => {
            client
                .delete(&format!("/v1/workflows/{}", encode(&name)))
                .await?;
            if out == Output::Text {
                println!("deleted workflow {name}");
            }
            Ok(0)
        }
        WorkflowCmd::Run {
            name,
            set,
            version,
            no_wait,
        } => {
            let req = WorkflowRunRequest {
                data: data(&set)?,
                version,
            };
            let path = format!("/v1/workflows/{}/run", encode(&name));
            run_at(
                client,
                out,
                &path,
                &format!("workflow {name}"),
                &req,
                no_wait,
            )
            .await
        }
        WorkflowCmd::Bind {
            workflow,
            template,
            action,
        } => {
            let a: TemplateAction = client
                .put(
                    &actions_path(&template, &action),
                    &ActionBindRequest { workflow },
                )
                .await?;
            match out {
                Output::Json => print_json(&a)?,
                Output::Text => println!(
                    "template {} action {} runs workflow {}",
                    a.template, a.action, a.workflow
                ),
            }
            Ok(0)
        }
        WorkflowCmd::Unbind { template, action } => {
            client.delete(&actions_path(&template, &action)).await?;
            if out == Output::Text {
                println!("template {template} has no action {action} now");
            }
            Ok(0)
        }
        WorkflowCmd::Actions { template } => {
            let l: TemplateActionList = client
                .get(&format!("/v1/templates/{}/actions", encode(&template)))
                .await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t = Table::new(&["ACTION", "WORKFLOW", "BY", "CREATED"]);
                    for a in &l.items {
                        t.row(vec![
                            a.action.clone(),
                            a.workflow.clone(),
                            a.created_by.clone(),
                            a.created_at.clone(),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
            Ok(0)
        }
        WorkflowCmd::RunAction {
            template,
            action,
            set,
            version,
            no_wait,
        } => {
            let req = WorkflowRunRequest {
                data: data(&set)?,
                version,
            };
            let path = format!("{}/run", actions_path(&template, &action));
            let what = format!("action {action} of template {template}");
            run_at(client, out, &path, &what, &req, no_wait).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_takes_json_or_strings_and_refuses_the_rest() {
        let d = data(&["a=1".into(), "b=web".into(), "c=[1]".into()]).unwrap();
        assert_eq!(d["a"], Value::from(1));
        assert_eq!(d["b"], Value::from("web"));
        assert_eq!(d["c"], serde_json::json!([1]));
        assert!(
            data(&["nokey".into()])
                .unwrap_err()
                .to_string()
                .contains("KEY=VALUE")
        );
        assert!(
            data(&["a=1".into(), "a=2".into()])
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
