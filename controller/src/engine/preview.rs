//! What an apply would do (`berth apply --dry-run`, `berth diff`), in the scheduler's order.

use super::*;

/// A step as a dry run orders it.
struct Planned {
    host: String,
    kind: StepKind,
    ord: i64,
    best_effort: bool,
}

impl crate::scheduler::Scheduled for Planned {
    fn ord(&self) -> i64 {
        self.ord
    }
    fn state(&self) -> StepState {
        StepState::Pending
    }
    fn best_effort(&self) -> bool {
        self.best_effort
    }
}

/// What an apply would do: the planned generation and the steps it resumes, in the order
/// the scheduler would release them.
#[allow(clippy::too_many_arguments)]
pub(super) fn preview(
    cluster: &str,
    stored_text: Option<&str>,
    text: &str,
    spec: &ResolvedSpec,
    recorded: &Recorded,
    hosts: &[DesiredHost],
    g: &planner::Generation,
    resumed: &[StepRow],
) -> berth_shared::api::PlanPreview {
    use berth_shared::api::{PlanPreview, PreviewStep, UpgradePreview};
    let planned: Vec<Planned> = resumed
        .iter()
        .map(|s| Planned {
            host: s.host_name.clone(),
            kind: s.kind,
            ord: s.ord,
            best_effort: s.best_effort,
        })
        .chain(g.steps.iter().map(|s| Planned {
            host: s.host_name.clone(),
            kind: s.kind,
            ord: s.ord,
            best_effort: s.best_effort,
        }))
        .collect();
    let step = |p: &Planned| PreviewStep {
        host: p.host.clone(),
        kind: p.kind,
    };
    let waves: Vec<Vec<PreviewStep>> = crate::scheduler::release_order(&planned)
        .into_iter()
        .map(|w| {
            let mut w: Vec<PreviewStep> = w.into_iter().map(|i| step(&planned[i])).collect();
            w.sort();
            w
        })
        .collect();
    let name_of = |id: i64| {
        hosts
            .iter()
            .map(|h| (h.host_id, &h.name))
            .chain(recorded.hosts.iter().map(|h| (h.host_id, &h.name)))
            .find(|(i, _)| *i == id)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    };
    let upgrade = g
        .steps
        .iter()
        .any(|s| s.kind == StepKind::Upgrade)
        .then(|| UpgradePreview {
            from: g.from.iter().map(|b| b.reference.clone()).collect(),
            to: spec.base().map(|b| b.reference.clone()).collect(),
            max_unavailable: spec.rollout.max_unavailable,
        });
    let spec_changed = stored_text != Some(text) || recorded.spec.as_ref() != Some(spec);
    let add_hosts: Vec<String> = g.add_hosts.iter().map(|h| name_of(h.host_id)).collect();
    let remove_hosts: Vec<String> = g.leaving.iter().map(|id| name_of(*id)).collect();
    PlanPreview {
        cluster: cluster.to_string(),
        create: recorded.spec.is_none() && recorded.hosts.is_empty(),
        changes: spec_changed
            || !waves.is_empty()
            || !add_hosts.is_empty()
            || !remove_hosts.is_empty(),
        spec_changed,
        add_hosts,
        remove_hosts,
        upgrade,
        resumed: resumed
            .iter()
            .map(|s| PreviewStep {
                host: s.host_name.clone(),
                kind: s.kind,
            })
            .collect(),
        waves,
    }
}
