//! `brood template ...`: makes a running partition a template that children
//! are forked from, and lists, shows and deletes templates. Forking itself
//! is `brood fork` (`fork`); saving the state and keeping the template's
//! warm children (child VMs waiting to be handed out) is broodd's.

use anyhow::Result;
use brood_api::{Template, TemplateCreateRequest, TemplateList};
use clap::Subcommand;

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, key_values, mib, or_dash, print_json};

/// Commands on templates.
#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Freeze a running partition into a template children are forked from.
    #[command(after_help = "Examples:
  brood template create web
  brood template create web --name web-v2 --warm 8
  brood template create web --persist   # survives a host reboot
  brood template create web -o json
  brood template create web-tpl --from web --keep   # web runs on; prints its downtime

The VM is frozen and never runs again; without --name the template takes
its name. With --keep it goes on running (paused only while its state is
saved; its disks switch to new overlays) and the template is a new one,
NAME, made from the VM given with --from; not for a forked child.")]
    Create {
        /// The running partition to freeze (name or uuid); with --from, the
        /// template's name.
        vm: String,
        /// The running partition to make the template of; the positional
        /// argument is then the template's name.
        #[arg(long, value_name = "VM")]
        from: Option<String>,
        /// Keep the VM running: the template is made beside it.
        #[arg(long)]
        keep: bool,
        /// The template's name [default: the VM's].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Warm children: child VMs kept started and waiting for a fork [default: 2].
        #[arg(long, value_name = "N")]
        warm: Option<u32>,
        /// Keep the template's memory in the data directory, not on the
        /// tmpfs, so it survives a host reboot.
        #[arg(long)]
        persist: bool,
        #[command(flatten)]
        wait: crate::job::NoWait,
    },
    /// List templates.
    #[command(after_help = "Examples:
  brood template list
  brood template list -o json")]
    List,
    /// Show one template: memory, state, children, warm children.
    #[command(after_help = "Examples:
  brood template show web
  brood template show web -o json")]
    Show {
        /// Template name.
        name: String,
    },
    /// Delete a template.
    #[command(after_help = "Examples:
  brood template delete web
  brood template delete web --cascade   # its children and derived templates too

Without --cascade broodd refuses a template that still has live children or
derived templates.")]
    Delete {
        /// Template name.
        name: String,
        /// Delete its children and the templates derived from them too.
        #[arg(long)]
        cascade: bool,
    },
    /// The template's actions: workflows bound to it (`brood workflow bind`).
    #[command(subcommand)]
    Action(crate::workflow::ActionCmd),
}

fn template_path(name: &str) -> String {
    format!("/v1/templates/{}", encode(name))
}

/// Runs a `brood template` command; returns the exit code.
pub async fn run(cmd: TemplateCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        TemplateCmd::Action(cmd) => crate::workflow::run_action(cmd, client, out).await,
        TemplateCmd::Create {
            vm,
            from,
            keep,
            name,
            warm,
            persist,
            wait,
        } => {
            let (vm, name) = match from {
                Some(from) if name.is_some() => {
                    return Err(anyhow::anyhow!(
                        "--from {from} makes {vm} the template's name; drop --name"
                    ));
                }
                Some(from) => (from, Some(vm)),
                None => (vm, name),
            };
            let req = TemplateCreateRequest {
                vm: vm.clone(),
                name,
                warm,
                persist,
                keep,
            };
            if wait.no_wait {
                let req = crate::job::Submit::Post("/v1/templates", &req);
                return crate::job::submit(client, req, out).await;
            }
            let t: Template = client.post("/v1/templates", &req).await?;
            match out {
                Output::Json => print_json(&t)?,
                Output::Text => println!("{}", created(&t, &vm)),
            }
            Ok(0)
        }
        TemplateCmd::List => {
            let list: TemplateList = client.get("/v1/templates").await?;
            match out {
                Output::Json => print_json(&list)?,
                Output::Text => print!("{}", list_table(&list.items)),
            }
            Ok(0)
        }
        TemplateCmd::Show { name } => {
            let t: Template = client.get(&template_path(&name)).await?;
            match out {
                Output::Json => print_json(&t)?,
                Output::Text => print!("{}", show(&t)),
            }
            Ok(0)
        }
        TemplateCmd::Delete { name, cascade } => {
            let path = format!("{}?cascade={cascade}", template_path(&name));
            // Its actions are deleted with it (in the same ledger
            // transaction): read them first to say which.
            let actions = client
                .get::<brood_api::job::TemplateActionList>(&format!(
                    "{}/actions",
                    template_path(&name)
                ))
                .await
                .map(|l| l.items.into_iter().map(|a| a.action).collect::<Vec<_>>())
                .unwrap_or_default();
            client.delete(&path).await?;
            if out == Output::Text {
                println!("{}", deleted(&name, &actions));
            }
            Ok(0)
        }
    }
}

/// The line `brood template delete` prints: the template, and the actions
/// that went with it.
pub fn deleted(name: &str, actions: &[String]) -> String {
    if actions.is_empty() {
        format!("deleted template {name}")
    } else {
        format!(
            "deleted template {name} and its actions: {}",
            actions.join(", ")
        )
    }
}

/// The line `brood template create` prints.
pub fn created(t: &Template, vm: &str) -> String {
    let line = format!(
        "template {} from {vm}: {} bytes of state, memory {}",
        t.name,
        t.state_bytes,
        mib(t.memory_mib)
    );
    match t.downtime_ms {
        Some(ms) => format!("{line}; {vm} runs on (paused {ms} ms)"),
        None => line,
    }
}

/// The table of `brood template list`; WARM is ready/target.
pub fn list_table(items: &[Template]) -> String {
    let mut t =
        Table::new(&["NAME", "MEMORY", "VCPUS", "CHILDREN", "WARM", "PARENT"]).right(&[1, 2, 3, 4]);
    for tpl in items {
        t.row(vec![
            tpl.name.clone(),
            mib(tpl.memory_mib),
            tpl.vcpus.to_string(),
            tpl.children.len().to_string(),
            format!("{}/{}", tpl.warm_ready, tpl.warm),
            or_dash(tpl.parent.as_deref()),
        ]);
    }
    t.render()
}

/// The key/value listing of `brood template show`.
pub fn show(t: &Template) -> String {
    let mut kv: Vec<(&str, String)> = vec![
        ("name", t.name.clone()),
        ("uuid", t.uuid.to_string()),
        ("parent", or_dash(t.parent.as_deref())),
        ("memory", mib(t.memory_mib)),
        ("vcpus", t.vcpus.to_string()),
        ("state", format!("{} bytes", t.state_bytes)),
        ("warm", format!("{} ready of {}", t.warm_ready, t.warm)),
        (
            "persist",
            if t.persistent {
                "yes (survives a host reboot)"
            } else {
                "no (on the tmpfs)"
            }
            .to_string(),
        ),
    ];
    push_list(&mut kv, "children", &t.children);
    push_list(&mut kv, "derived", &t.derived);
    push_list(&mut kv, "disks", &t.disks);
    kv.push(("created", t.created_at.clone()));
    key_values(&kv)
}

/// One line per item under `key`, or `-` when there is none.
fn push_list<'a>(kv: &mut Vec<(&'a str, String)>, key: &'a str, items: &[String]) {
    if items.is_empty() {
        kv.push((key, "-".to_string()));
    }
    for (i, item) in items.iter().enumerate() {
        kv.push((if i == 0 { key } else { "" }, item.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_says_which_actions_went_with_the_template() {
        assert_eq!(deleted("web", &[]), "deleted template web");
        assert_eq!(
            deleted("web", &["serve".into(), "db".into()]),
            "deleted template web and its actions: serve, db"
        );
    }

    fn template(name: &str, parent: Option<&str>, children: &[&str]) -> Template {
        Template {
            name: name.into(),
            uuid: uuid::Uuid::from_u128(2),
            parent: parent.map(Into::into),
            memory_mib: 512,
            vcpus: 2,
            state_bytes: 1_048_576,
            fork_point: 1,
            children: children.iter().map(|c| (*c).to_string()).collect(),
            derived: Vec::new(),
            warm_ready: 1,
            warm: 2,
            disks: vec!["/data/templates/web/root.qcow2".into()],
            created_at: "2025-01-01T00:00:00Z".into(),
            persistent: false,
            downtime_ms: None,
        }
    }

    #[test]
    fn created_line() {
        assert_eq!(
            created(&template("web-v2", None, &[]), "web"),
            "template web-v2 from web: 1048576 bytes of state, memory 512 MiB"
        );
    }

    #[test]
    fn list_renders_a_table() {
        let items = [
            template("web", None, &["web-1", "web-2", "web-3"]),
            template("web-2-tpl", Some("web"), &[]),
        ];
        assert_eq!(
            list_table(&items),
            "NAME        MEMORY  VCPUS  CHILDREN  WARM  PARENT\n\
             web        512 MiB      2         3   1/2  -\n\
             web-2-tpl  512 MiB      2         0   1/2  web\n"
        );
    }

    #[test]
    fn show_lists_children_one_a_line() {
        let s = show(&template("web", None, &["web-1", "web-2"]));
        assert!(s.starts_with("name      web\n"), "{s}");
        assert!(s.contains("parent    -\n"), "{s}");
        assert!(s.contains("state     1048576 bytes\n"), "{s}");
        assert!(s.contains("warm      1 ready of 2\n"), "{s}");
        assert!(s.contains("children  web-1\n          web-2\n"), "{s}");
        assert!(s.contains("derived   -\n"), "{s}");
        assert!(s.contains("persist   no (on the tmpfs)\n"), "{s}");
        assert!(
            s.contains("disks     /data/templates/web/root.qcow2\n"),
            "{s}"
        );
    }
}
