//! The controller's own view of a run, from its `GET /metrics` (OpenMetrics text) before
//! and after: how long reports and plan deliveries took inside the controller, apart from
//! the time they spent in the simulator's queues.

use std::collections::BTreeMap;

/// One scrape: every sample by its full name with labels, e.g.
/// `berth_plan_delivery_seconds_bucket{le="0.1"}`.
#[derive(Debug, Default, Clone)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        Scrape(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// The samples of `after` minus those of `self` (counters and histograms over a span).
    pub fn delta(&self, after: &Scrape) -> Scrape {
        Scrape(
            after
                .0
                .iter()
                .map(|(k, v)| (k.clone(), v - self.get(k)))
                .collect(),
        )
    }

    /// The histogram `name`'s upper bucket bound (seconds) under which a share `q` of its
    /// observations fell, `None` without observations or when they are past the last
    /// bound.
    pub fn quantile_bound(&self, name: &str, q: f64) -> Option<f64> {
        let count = self.get(&format!("{name}_count"));
        if count <= 0.0 {
            return None;
        }
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                Some((le.parse().ok()?, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
            .into_iter()
            .find(|(le, n)| le.is_finite() && *n >= q * count)
            .map(|(le, _)| le)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE berth_x_seconds histogram
berth_x_seconds_sum 0.5
berth_x_seconds_count 10
berth_x_seconds_bucket{le=\"0.1\"} 10
berth_x_seconds_bucket{le=\"1.0\"} 10
berth_x_seconds_bucket{le=\"+Inf\"} 10
berth_open 3
# EOF
";
    const AFTER: &str = "berth_x_seconds_count 110
berth_x_seconds_bucket{le=\"0.1\"} 90
berth_x_seconds_bucket{le=\"1.0\"} 109
berth_x_seconds_bucket{le=\"+Inf\"} 110
berth_open 5
";

    #[test]
    fn quantiles_come_from_the_buckets_of_the_span() {
        let d = Scrape::parse(BEFORE).delta(&Scrape::parse(AFTER));
        assert_eq!(d.get("berth_open"), 2.0);
        assert_eq!(d.get("berth_x_seconds_count"), 100.0);
        assert_eq!(d.quantile_bound("berth_x_seconds", 0.5), Some(0.1));
        assert_eq!(d.quantile_bound("berth_x_seconds", 0.99), Some(1.0));
        // One observation past every finite bound.
        assert_eq!(d.quantile_bound("berth_x_seconds", 1.0), None);
        assert_eq!(d.quantile_bound("berth_missing", 0.5), None);
    }
}
