//! A cached pool of worker threads for requests: a request goes to an idle
//! worker if there is one, else to a new thread; a worker that stays idle
//! for a minute exits. Requests can run for long (an exec), so the pool is
//! unbounded, like spawning a thread per request, but in steady state no
//! thread is created or torn down. That matters in a forked child under
//! TCG, whose translation cache starts empty: clone(2), thread start-up and
//! exit are kernel paths the identity step no longer has to translate, and
//! the worker that rehearsed it (`WarmFork`) is the one that runs it.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long a worker waits for its next request before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(60);

type Job = Box<dyn FnOnce() + Send>;

/// The pool.
#[derive(Debug, Default)]
pub struct Workers {
    idle: Mutex<Vec<Sender<Job>>>,
}

impl Workers {
    /// Runs `job` on an idle worker or a new one.
    pub fn run(self: &Arc<Self>, name: String, job: Job) -> std::io::Result<()> {
        let mut job = job;
        loop {
            let tx = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(tx) = tx else { break };
            match tx.send(job) {
                Ok(()) => return Ok(()),
                // That worker exited while idle; try the next.
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let me = Arc::clone(self);
        std::thread::Builder::new().name(name).spawn(move || {
            job();
            loop {
                me.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(tx.clone());
                match rx.recv_timeout(IDLE_EXIT) {
                    Ok(next) => next(),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn workers_are_reused_and_long_jobs_do_not_block_others() {
        let w = Arc::new(Workers::default());
        let (done_tx, done_rx) = mpsc::channel();
        let ids = Arc::new(Mutex::new(std::collections::HashSet::new()));
        for _ in 0..5 {
            let (done_tx, ids) = (done_tx.clone(), ids.clone());
            w.run(
                "t".into(),
                Box::new(move || {
                    ids.lock().unwrap().insert(std::thread::current().id());
                    done_tx.send(()).unwrap();
                }),
            )
            .unwrap();
            done_rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            ids.lock().unwrap().len(),
            1,
            "one worker served every sequential request"
        );
        // A job that blocks does not hold up the next one.
        let (block_tx, block_rx) = mpsc::channel::<()>();
        let ran = Arc::new(AtomicUsize::new(0));
        w.run(
            "t".into(),
            Box::new(move || {
                let _ = block_rx.recv();
            }),
        )
        .unwrap();
        let r = ran.clone();
        let (ok_tx, ok_rx) = mpsc::channel();
        w.run(
            "t".into(),
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
                ok_tx.send(()).unwrap();
            }),
        )
        .unwrap();
        ok_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        drop(block_tx);
    }
}
