//! `--container`, `--pod`, `--namespace`: the filters `top`, `conns` and `leaks` share, and the
//! placement column of their text.
use clap::Args;
use tracer::containers::{
    Container,
    views::{PlacementFilter, cell, clip_middle},
};

#[derive(Clone, Debug, Default, Args)]
pub struct PlacementArgs {
    /// Only processes in this container: its name, or a prefix of its id (at least 4 hex
    /// digits); `host` for processes outside containers.
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,
    /// Only processes in this Kubernetes pod: its name, or a prefix of its UID.
    #[arg(long, value_name = "NAME|UID")]
    pub pod: Option<String>,
    /// Only processes in pods of this Kubernetes namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

impl PlacementArgs {
    /// The request's filter, checked here so a bad combination never needs a daemon.
    pub fn filter(self) -> anyhow::Result<PlacementFilter> {
        let filter =
            PlacementFilter { container: self.container, pod: self.pod, namespace: self.namespace };
        filter.validate().map_err(anyhow::Error::msg)?;
        Ok(filter)
    }
}

/// The header and cells of the placement column, present only when some row is in a
/// container (a host-only table keeps its old width).
pub struct Column {
    width: usize,
}

impl Column {
    pub fn new<'a>(
        mut rows: impl Iterator<Item = Option<&'a Container>>,
        width: usize,
    ) -> Option<Self> {
        rows.any(|c| c.is_some()).then_some(Self { width })
    }

    pub fn header(&self) -> String {
        const LONG: &str = "NAMESPACE/POD/CONTAINER";
        let title = if self.width >= LONG.len() { LONG } else { "NS/POD/CONTAINER" };
        format!(" {:<w$}", title, w = self.width)
    }

    pub fn cell(&self, c: Option<&Container>) -> String {
        format!(" {:<w$}", clip_middle(&cell(c), self.width), w = self.width)
    }
}

/// `header`/`cell` of an optional column: empty when absent.
pub fn header(column: &Option<Column>) -> String {
    column.as_ref().map(Column::header).unwrap_or_default()
}

pub fn cell_of(column: &Option<Column>, c: Option<&Container>) -> String {
    column.as_ref().map(|col| col.cell(c)).unwrap_or_default()
}
