//! Outputs: what leaves the daemon besides API answers. [`metrics`] serves the Prometheus
//! endpoint (scraped), [`webhook`] pushes each leak alert's raise and resolve (sent).
pub mod metrics;
pub mod webhook;

pub use metrics::{
    AGE_BOUNDS_NS, BuildInfo, DEFAULT_METRICS_ADDR, DEFAULT_TOP_N, ExhaustionInput, Metrics,
    MetricsInput, RingFill, Scrape, StackMetrics, WebConfig, WebConfigError, bind, metrics_url,
    serve,
};
pub use webhook::{Webhook, WebhookUrl};
