//! The rollout policy, pure: in which waves a change rolls over the hosts ([`waves`]), and
//! which steps to release now ([`next_release`]). This is the only place a release is
//! decided: the store answers the few indexed questions a [`View`] holds and persists what
//! is decided here; the engine asks here on apply, on every tick, on reset and on retry.
//!
//! Steps carry an `ord`: every step with a lower ord must be finished before a step is
//! released; steps of equal ord run in parallel. The planner lays a change out in ords
//! (phases by `StepKind::base_ord`, rollout waves as consecutive ords), so the rule stays
//! one line and costs a few index seeks however many hosts there are.

use berth_shared::state::{HostRole, StepState};
use serde::{Deserialize, Serialize};

/// How a change rolls over the hosts of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Nodes upgraded (or rolled back) at once; masters always go one at a time. ≥ 1.
    pub max_unavailable: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { max_unavailable: 1 }
    }
}

/// What the release rule needs to know of a step.
pub trait Scheduled {
    fn ord(&self) -> i64;
    fn state(&self) -> StepState;
    /// A best-effort step that fails does not stop the rollout (leave, clean).
    fn best_effort(&self) -> bool;
}

/// What the release rule reads of a cluster's steps: the first failure that stops it, the
/// lowest ord with an unfinished step, and the pending steps at that ord. The store reads
/// exactly this by index (`Store::tick_view`); [`View::of`] builds it from a list.
#[derive(Debug)]
pub struct View<S> {
    /// A step that failed or was interrupted and is not best-effort (the lowest ord's).
    pub failure: Option<S>,
    /// The lowest ord with a pending, released or running step.
    pub open_ord: Option<i64>,
    /// The pending steps at `open_ord`.
    pub pending: Vec<S>,
}

impl<S> Default for View<S> {
    fn default() -> Self {
        View {
            failure: None,
            open_ord: None,
            pending: Vec::new(),
        }
    }
}

fn is_open(s: StepState) -> bool {
    matches!(
        s,
        StepState::Pending | StepState::Released | StepState::Running
    )
}

impl<S: Scheduled + Clone> View<S> {
    /// The view of every step of a cluster, as the store's indexed reads give it.
    pub fn of<'a>(steps: impl IntoIterator<Item = &'a S> + Clone) -> View<S>
    where
        S: 'a,
    {
        let failure = steps
            .clone()
            .into_iter()
            .filter(|s| {
                !s.best_effort() && matches!(s.state(), StepState::Failed | StepState::Interrupted)
            })
            .min_by_key(|s| s.ord())
            .cloned();
        let open_ord = steps
            .clone()
            .into_iter()
            .filter(|s| is_open(s.state()))
            .map(|s| s.ord())
            .min();
        let pending = steps
            .into_iter()
            .filter(|s| s.state() == StepState::Pending && Some(s.ord()) == open_ord)
            .cloned()
            .collect();
        View {
            failure,
            open_ord,
            pending,
        }
    }
}

/// What to do next.
#[derive(Debug, PartialEq)]
pub enum Next<S> {
    /// A step that must succeed failed: nothing more is released (`berth retry`
    /// continues, `berth rollback` turns back an upgrade).
    Stop(S),
    /// Nothing is left to run.
    Done,
    /// Release these (none: wait for the open ord's running steps).
    Release(Vec<S>),
}

/// The release rule: stop at a failure; else release every pending step at the lowest
/// unfinished ord.
pub fn next_release<S: Scheduled>(view: View<S>) -> Next<S> {
    if let Some(f) = view.failure {
        return Next::Stop(f);
    }
    match view.open_ord {
        None => Next::Done,
        Some(ord) => Next::Release(
            view.pending
                .into_iter()
                .filter(|s| s.ord() == ord && s.state() == StepState::Pending)
                .collect(),
        ),
    }
}

/// The order the steps would be released in if every one succeeded: indexes into
/// `steps`, wave by wave (what `berth apply --dry-run` prints).
pub fn release_order<S: Scheduled>(steps: &[S]) -> Vec<Vec<usize>> {
    #[derive(Clone)]
    struct At {
        idx: usize,
        ord: i64,
        state: StepState,
        best_effort: bool,
    }
    impl Scheduled for At {
        fn ord(&self) -> i64 {
            self.ord
        }
        fn state(&self) -> StepState {
            self.state
        }
        fn best_effort(&self) -> bool {
            self.best_effort
        }
    }
    let mut at: Vec<At> = steps
        .iter()
        .enumerate()
        .map(|(idx, s)| At {
            idx,
            ord: s.ord(),
            state: s.state(),
            best_effort: s.best_effort(),
        })
        .collect();
    let mut out = Vec::new();
    while let Next::Release(wave) = next_release(View::of(&at)) {
        if wave.is_empty() {
            break; // running elsewhere: not a plan of this apply's
        }
        let idx: Vec<usize> = wave.iter().map(|s| s.idx).collect();
        for i in &idx {
            at[*i].state = StepState::Succeeded;
        }
        out.push(idx);
    }
    out
}

/// The waves a host-by-host change (upgrade, rollback) runs in, from the cluster's hosts in
/// their order (master0 first): master0 alone, each other master alone, then the nodes in
/// batches of `max_unavailable`. Each wave finishes before the next starts.
pub fn waves<H: Copy>(hosts: &[(H, HostRole)], policy: Policy) -> Vec<Vec<H>> {
    let mut out: Vec<Vec<H>> = hosts
        .iter()
        .filter(|(_, r)| *r == HostRole::Master)
        .map(|(h, _)| vec![*h])
        .collect();
    let nodes: Vec<H> = hosts
        .iter()
        .filter(|(_, r)| *r == HostRole::Node)
        .map(|(h, _)| *h)
        .collect();
    out.extend(
        nodes
            .chunks(policy.max_unavailable.max(1) as usize)
            .map(<[H]>::to_vec),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use HostRole::{Master, Node};

    #[derive(Debug, Clone, PartialEq)]
    struct S(i64, StepState, bool);

    impl Scheduled for S {
        fn ord(&self) -> i64 {
            self.0
        }
        fn state(&self) -> StepState {
            self.1
        }
        fn best_effort(&self) -> bool {
            self.2
        }
    }

    use StepState::*;

    #[test]
    fn the_release_rule() {
        let cases: Vec<(&str, Vec<S>, Next<S>)> = vec![
            ("nothing", vec![], Next::Done),
            (
                "all finished",
                vec![S(1, Succeeded, false), S(2, Cancelled, false)],
                Next::Done,
            ),
            (
                "the lowest open ord's pending steps",
                vec![
                    S(1, Succeeded, false),
                    S(2, Pending, false),
                    S(2, Pending, false),
                    S(3, Pending, false),
                ],
                Next::Release(vec![S(2, Pending, false), S(2, Pending, false)]),
            ),
            (
                "a running step holds the next ord back",
                vec![S(2, Running, false), S(3, Pending, false)],
                Next::Release(vec![]),
            ),
            (
                "a released one too",
                vec![
                    S(2, Released, false),
                    S(2, Pending, false),
                    S(3, Pending, false),
                ],
                Next::Release(vec![S(2, Pending, false)]),
            ),
            (
                "a failure stops everything",
                vec![S(2, Failed, false), S(3, Pending, false)],
                Next::Stop(S(2, Failed, false)),
            ),
            (
                "an interrupted (lost) step too",
                vec![S(2, Succeeded, false), S(2, Interrupted, false)],
                Next::Stop(S(2, Interrupted, false)),
            ),
            (
                "a best-effort failure does not",
                vec![S(2, Failed, true), S(3, Pending, false)],
                Next::Release(vec![S(3, Pending, false)]),
            ),
        ];
        for (name, steps, want) in cases {
            assert_eq!(next_release(View::of(&steps)), want, "{name}");
        }
    }

    #[test]
    fn waves_follow_the_policy() {
        let hosts = [
            (0, Master),
            (1, Master),
            (2, Master),
            (3, Node),
            (4, Node),
            (5, Node),
        ];
        let w = |n| waves(&hosts, Policy { max_unavailable: n });
        assert_eq!(
            w(1),
            vec![vec![0], vec![1], vec![2], vec![3], vec![4], vec![5]]
        );
        assert_eq!(w(2), vec![vec![0], vec![1], vec![2], vec![3, 4], vec![5]]);
        assert_eq!(w(99), vec![vec![0], vec![1], vec![2], vec![3, 4, 5]]);
        // 0 is taken as 1, never as "everything at once".
        assert_eq!(w(0), w(1));
        assert_eq!(waves(&[(7, Master)], Policy::default()), vec![vec![7]]);
    }
}
