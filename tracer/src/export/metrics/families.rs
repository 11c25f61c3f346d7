//! Builders over `prometheus::proto`: the crate's typed collectors (`IntCounterVec`,
//! `HistogramVec`, ...) keep their own locked state, while every value here is computed at
//! scrape time from the table, so families are assembled directly.
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// One metric family being filled at scrape time.
pub(super) struct FamilyBuilder {
    family: MetricFamily,
}

impl FamilyBuilder {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Self { family }
    }

    pub(super) fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    pub(super) fn counter(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::COUNTER)
    }

    pub(super) fn histogram(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::HISTOGRAM)
    }

    pub(super) fn add_gauge(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = Metric::from_label(label_pairs(labels));
        metric.set_gauge(gauge);
        self.family.mut_metric().push(metric);
    }

    pub(super) fn add_counter(&mut self, labels: &[(&str, &str)], value: u64) {
        let mut counter = Counter::default();
        // f64 is what the exposition carries; exact up to 2^53.
        counter.set_value(value as f64);
        let mut metric = Metric::from_label(label_pairs(labels));
        metric.set_counter(counter);
        self.family.mut_metric().push(metric);
    }

    /// `cumulative[i]` counts observations `<= upper_bounds[i]`; the encoder adds `+Inf` from
    /// `count`.
    pub(super) fn add_histogram(
        &mut self,
        labels: &[(&str, &str)],
        upper_bounds: &[f64],
        cumulative: &[u64],
        count: u64,
        sum: f64,
    ) {
        let buckets = upper_bounds
            .iter()
            .zip(cumulative)
            .map(|(&bound, &n)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(n);
                bucket
            })
            .collect();
        let mut histogram = Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(count);
        histogram.set_sample_sum(sum);
        let mut metric = Metric::from_label(label_pairs(labels));
        metric.set_histogram(histogram);
        self.family.mut_metric().push(metric);
    }

    pub(super) fn finish(self) -> MetricFamily {
        self.family
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

/// A bound in seconds as the `le`-style label value: `1`, `0.5`, `+Inf`. Same spelling as the
/// encoder's histogram buckets, so the age gauges and the lifetime histogram read alike.
pub(super) fn bound_label(seconds: f64) -> String {
    if seconds.is_infinite() { "+Inf".to_owned() } else { seconds.to_string() }
}
