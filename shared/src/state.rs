//! The orchestration domain as types: step kinds (with their phase order and hook), step
//! states, cluster phases, host roles, and the one pure function that says which report
//! may move a step from which state.
//!
//! The controller stores these as TEXT (with CHECK constraints in the database); the agent
//! reports them; nothing else spells them as strings.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: stringify!($name),
                        value: s.chars().take(64).collect(),
                        allowed: &[$($text),+],
                    }),
                }
            }
        }
    };
}

/// A string that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {what}; allowed: {}", allowed.join(", "))]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub allowed: &'static [&'static str],
}

text_enum!(
    /// What a step does. Phases run in the order of `StepKind::base_ord`.
    StepKind {
        Check = "check",
        Distribute = "distribute",
        Install = "install",
        Init = "init",
        JoinMaster = "join-master",
        JoinNode = "join-node",
        CleanApps = "clean-apps",
        Apps = "apps",
        Leave = "leave",
        Remove = "remove",
        Upgrade = "upgrade",
        Rollback = "rollback",
        Exec = "exec",
        Clean = "clean",
    }
);

impl StepKind {
    /// The hook this step runs in each bundle (`apps` runs app bundles' `cmd`; distribute
    /// runs none).
    pub fn hook(self) -> Option<&'static str> {
        match self {
            StepKind::Distribute | StepKind::Exec => None,
            StepKind::Apps => Some("cmd"),
            StepKind::CleanApps => Some("clean"),
            k => Some(k.as_str()),
        }
    }

    /// The step's place in the phase order: steps with a lower ord finish first, equal ords
    /// run in parallel. join-master and remove add an index so they run one at a time;
    /// upgrade and rollback add their rollout wave (`scheduler::waves`). Clean comes after
    /// everything: a reset's clean waits for what was running when it began.
    pub fn base_ord(self) -> i64 {
        match self {
            StepKind::Check => 1000,
            StepKind::Distribute => 2000,
            StepKind::Install => 3000,
            StepKind::Init => 4000,
            StepKind::JoinMaster => 5000,
            StepKind::JoinNode => 6000,
            StepKind::CleanApps => 6900,
            StepKind::Apps => 7000,
            StepKind::Leave => 8000,
            StepKind::Remove => 9000,
            StepKind::Upgrade => 100_000,
            StepKind::Rollback => 200_000,
            StepKind::Exec => 300_000,
            StepKind::Clean => 1_000_000,
        }
    }
}

text_enum!(
    /// Where a step is. `pending` → `released` (in the host's plan) → `running` →
    /// `succeeded` | `failed` | `interrupted`; `cancelled` by a reset or a host removal.
    StepState {
        Pending = "pending",
        Released = "released",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Interrupted = "interrupted",
        Cancelled = "cancelled",
    }
);

impl StepState {
    /// Released to a host and not finished: the host owns it.
    pub fn is_active(self) -> bool {
        matches!(self, StepState::Released | StepState::Running)
    }

    /// A state an agent may report.
    pub fn is_reportable(self) -> bool {
        matches!(
            self,
            StepState::Running | StepState::Succeeded | StepState::Failed | StepState::Interrupted
        )
    }
}

text_enum!(
    /// A cluster's phase.
    ClusterPhase {
        Reconciling = "Reconciling",
        Running = "Running",
        Failed = "Failed",
        Resetting = "Resetting",
        /// A reset whose `clean` failed or was lost on some host: the cluster stays until an
        /// operator retries or forces it.
        ResetFailed = "ResetFailed",
    }
);

impl ClusterPhase {
    /// Reset started and not finished: nothing but retry and `reset --force` applies.
    pub fn is_reset(self) -> bool {
        matches!(self, ClusterPhase::Resetting | ClusterPhase::ResetFailed)
    }
}

text_enum!(
    /// A host's role in a cluster.
    HostRole {
        Master = "master",
        Node = "node",
    }
);

/// What a report does to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Store the reported state.
    Apply(StepState),
    /// The step is already there (a report sent twice): accepted, nothing changes.
    Duplicate,
}

/// Why a report may not move a step. Each has a stable `code` for the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("step is {state}, not released to a host")]
    NotReleased { state: StepState },
    #[error("report for attempt {reported}, the step is at attempt {current}")]
    StaleAttempt { current: u32, reported: u32 },
    #[error("a step that is {from} cannot become {to}")]
    Illegal { from: StepState, to: StepState },
}

/// The state machine: may a report of `to` at `attempt` move a step that is `from` at
/// `current_attempt`?
///
/// - Only reportable states (running, succeeded, failed, interrupted) are accepted.
/// - The attempt must be the step's current one.
/// - A pending or cancelled step belongs to no host.
/// - released → any reportable state; running → running (duplicate) or an end state.
/// - interrupted → running, succeeded or failed: the controller declared the step lost
///   (its host stopped answering) and the host came back with the real result.
/// - succeeded and failed are final for the attempt; the same report again is a duplicate.
pub fn transition(
    from: StepState,
    current_attempt: u32,
    to: StepState,
    attempt: u32,
) -> Result<Transition, TransitionError> {
    use StepState::*;
    if attempt != current_attempt {
        return Err(TransitionError::StaleAttempt {
            current: current_attempt,
            reported: attempt,
        });
    }
    if matches!(from, Pending | Cancelled) {
        return Err(TransitionError::NotReleased { state: from });
    }
    if !to.is_reportable() {
        return Err(TransitionError::Illegal { from, to });
    }
    if from == to {
        return Ok(Transition::Duplicate);
    }
    match (from, to) {
        (Released, _) => Ok(Transition::Apply(to)),
        (Running, Succeeded | Failed | Interrupted) => Ok(Transition::Apply(to)),
        (Interrupted, Running | Succeeded | Failed) => Ok(Transition::Apply(to)),
        _ => Err(TransitionError::Illegal { from, to }),
    }
}

#[cfg(test)]
mod tests {
    use super::StepState::*;
    use super::*;

    #[test]
    fn text_round_trips_and_unknown_values_are_refused() {
        for k in StepKind::ALL {
            assert_eq!(k.as_str().parse::<StepKind>(), Ok(*k));
            assert_eq!(
                serde_json::to_string(k).unwrap_or_default(),
                format!("\"{k}\"")
            );
        }
        for s in StepState::ALL {
            assert_eq!(s.as_str().parse::<StepState>(), Ok(*s));
        }
        let e = "banana".parse::<StepState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "`banana` is not a StepState; allowed: pending, released, running, succeeded, failed, interrupted, cancelled"
        );
        assert!(serde_json::from_str::<StepState>("\"banana\"").is_err());
        assert_eq!("join-master".parse(), Ok(StepKind::JoinMaster));
        assert_eq!(StepKind::Apps.hook(), Some("cmd"));
        assert_eq!(StepKind::Distribute.hook(), None);
    }

    #[test]
    fn the_transition_table() {
        let ok = |f, t| transition(f, 1, t, 1);
        // From released and running.
        for to in [Running, Succeeded, Failed, Interrupted] {
            assert_eq!(ok(Released, to), Ok(Transition::Apply(to)));
        }
        assert_eq!(ok(Running, Running), Ok(Transition::Duplicate));
        for to in [Succeeded, Failed, Interrupted] {
            assert_eq!(ok(Running, to), Ok(Transition::Apply(to)));
        }
        // Lost, then the real result.
        for to in [Running, Succeeded, Failed] {
            assert_eq!(ok(Interrupted, to), Ok(Transition::Apply(to)));
        }
        // Final states: duplicates only.
        assert_eq!(ok(Succeeded, Succeeded), Ok(Transition::Duplicate));
        assert_eq!(ok(Failed, Failed), Ok(Transition::Duplicate));
        for (from, to) in [
            (Succeeded, Failed),
            (Succeeded, Running),
            (Failed, Succeeded),
            (Failed, Interrupted),
            (Running, Released),
            (Released, Pending),
            (Running, Cancelled),
        ] {
            assert_eq!(
                ok(from, to),
                Err(TransitionError::Illegal { from, to }),
                "{from} -> {to}"
            );
        }
        for from in [Pending, Cancelled] {
            assert_eq!(
                ok(from, Running).map_err(|e| e.code()),
                Err("step_not_released")
            );
        }
        assert_eq!(
            transition(Running, 2, Succeeded, 1).map_err(|e| e.code()),
            Err("stale_attempt")
        );
    }
}
