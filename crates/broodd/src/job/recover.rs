//! What a broodd that died left of its jobs, settled at start (after
//! `reconcile` has matched the partitions with the VMs still running):
//!
//! - a workflow job that was running or queued resumes from its journal:
//!   finished tasks are not run again, a task that had started runs again
//!   only if it is marked idempotent, otherwise the job fails there and
//!   unwinds (`brood_workflow::run`);
//! - any other job that was running is failed: its work (one host
//!   operation) lived in the dead broodd's memory; what it did to its
//!   partition is what `reconcile` found and settled, and a cut define
//!   removes the partition it made unless it runs (a failed define leaves
//!   no definition);
//! - any other job still queued is cancelled with the reason (its work was
//!   never started; submit it again).

use std::sync::Arc;

use brood_ledger::{JobChange, JobFilter, JobRecord, JobState};
use tracing::{info, warn};

use super::{Class, Jobs, Key, Pending, publish};
use crate::host::Host;

/// Settles every job a previous broodd left queued or running.
pub async fn run(host: &Arc<Host>) -> anyhow::Result<()> {
    let jobs = host.feature::<Jobs>();
    let mut left: Vec<JobRecord> = Vec::new();
    for state in [JobState::Running, JobState::Queued] {
        left.extend(
            host.jobs
                .jobs(JobFilter {
                    state: Some(state),
                    limit: usize::MAX >> 1,
                    ..JobFilter::default()
                })
                .await?,
        );
    }
    // Oldest first, so resumed workflows keep their order.
    left.sort_by_key(|j| j.id);
    for j in left {
        if j.runner.as_deref() == Some(jobs.runner()) {
            continue;
        }
        if j.kind == "workflow.run" {
            info!(
                job = j.id,
                "resuming workflow job {} from its journal", j.id
            );
            let rec = if j.state == JobState::Running {
                // Back to queued: it takes its turn again, and `run_one`
                // marks it running under this broodd.
                let mut c = JobChange::new(j.id, &[JobState::Running], JobState::Queued);
                c.progress = Some("resuming after a restart of broodd".into());
                host.jobs.set_job_state(c).await?
            } else {
                j
            };
            let key = Key {
                queue: rec.queue,
                neg_priority: -rec.priority,
                id: rec.id,
            };
            jobs.lock().waiting.insert(
                key,
                Pending {
                    rec,
                    class: Class::Workflow,
                    work: Box::new(|ctx| Box::pin(super::workflow::run(ctx, None))),
                    reply: None,
                },
            );
            continue;
        }
        let (to, why) = match j.state {
            JobState::Running => (
                JobState::Failed,
                "broodd stopped while the job ran; what it had done to its partition was \
                 settled when broodd started again (`brood vm show`)",
            ),
            _ => (
                JobState::Cancelled,
                "broodd stopped before the job ran: submit it again",
            ),
        };
        // A define that was to start it promised to leave nothing if the
        // start failed: a partition it made and that does not run goes.
        // One job that cannot be settled must not keep broodd from
        // starting (every later start would fail the same way): it is
        // logged, and `brood ledger verify` names what it left.
        if let Err(e) = settle(host, &j, to, why).await {
            warn!(job = j.id, kind = %j.kind, "could not settle the job: {e:#}");
        }
    }
    Jobs::pump(host);
    Ok(())
}

/// Fails or cancels job `j` (state `to`, reason `why`); a cut define
/// first removes the partition it made (a failed define leaves nothing,
/// whether or not it was to start it).
async fn settle(host: &Arc<Host>, j: &JobRecord, to: JobState, why: &str) -> anyhow::Result<()> {
    if j.state == JobState::Running
        && j.kind.starts_with("partition.define")
        && let Some(p) = host.ledger.partition_by_name(&j.target).await?
        && super::made_by(j, &p)
        && !p.run_state.is_active()
    {
        crate::partition::lifecycle::delete(host, &j.actor, p.uuid, true).await?;
        info!(
            job = j.id,
            "removed {}, which the cut define had made", p.name
        );
    }
    let mut c = JobChange::new(j.id, &[j.state], to);
    c.error = Some(why.into());
    let rec = host.jobs.set_job_state(c).await?;
    info!(job = rec.id, kind = %rec.kind, "{}: {why}", rec.state.as_str());
    publish(host, &rec);
    Ok(())
}
