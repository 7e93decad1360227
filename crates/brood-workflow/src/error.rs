//! Errors of definitions and runs.

/// A definition that cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum DefError {
    /// It does not parse.
    #[error("the workflow definition does not parse: {0}")]
    Syntax(String),
    /// It parses but cannot run as written.
    #[error("the workflow definition is not valid: {0}")]
    Invalid(String),
}

/// A run that could not be carried out (as opposed to one that ran and
/// failed, which is an [`crate::Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job's data does not fit the workflow's inputs.
    #[error("the job's data does not fit workflow {workflow}: {message}")]
    Data {
        /// The workflow.
        workflow: String,
        /// What is wrong.
        message: String,
    },
    /// The journal could not record a step: the run stops where it is (and
    /// resumes from the journal).
    #[error("the job's journal could not record a step: {0}")]
    Journal(String),
    /// The journal holds events that do not belong to this workflow.
    #[error("the job's journal does not match workflow {workflow}: {message}")]
    Mismatch {
        /// The workflow.
        workflow: String,
        /// What does not match.
        message: String,
    },
}
